"""The ActionsGateway CRD's openAPIV3Schema against the examples (structural checks with an
independent JSON-schema validator; the CEL rules are mirrored by the GMC's own validation,
tested in Tests/GatewayManagerTests)."""
import copy
import os

import jsonschema
import pytest
import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CRD = os.path.join(ROOT, "deploy", "crds", "actions-gateway.github.com_actionsgateways.yaml")
EXAMPLE = os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml")


def schema():
    with open(CRD) as f:
        crd = yaml.safe_load(f)
    assert crd["spec"]["names"]["shortNames"] == ["ag"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Ready", "Reason", "ProxyReady", "Age"]
    return version["schema"]["openAPIV3Schema"]


def test_every_field_is_described_for_kubectl_explain():
    def undescribed(node, path):
        missing = []
        for key, child in (node.get("properties") or {}).items():
            if key in ("apiVersion", "kind", "metadata"):
                continue  # Kubernetes describes these itself
            if not child.get("description"):
                missing.append(path + key)
            missing += undescribed(child, path + key + ".")
            if "items" in child:
                missing += undescribed(child["items"], path + key + "[].")
        return missing
    root = schema()
    assert root.get("description")
    assert undescribed(root, "") == []


def example_gateway():
    with open(EXAMPLE) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    return next(d for d in documents if d["kind"] == "ActionsGateway")


def test_example_validates_against_the_crd_schema():
    jsonschema.validate(example_gateway(), schema())


@pytest.mark.parametrize("edit", [
    lambda g: g["spec"].pop("gitHubURL"),
    lambda g: g["spec"].__setitem__("gitHubURL", "http://github.com/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://github.com"),
    lambda g: g["spec"].__setitem__("securityProfile", "root"),
    lambda g: g["spec"]["proxy"].__setitem__("maxReplicas", 101),
    lambda g: g["spec"]["proxy"].__setitem__("minReplicas", 0),
    lambda g: g["spec"]["runnerGroups"][0].__setitem__("name", "GPU_runners"),
    lambda g: g["spec"]["runnerGroups"][0].__setitem__("maxEvictionRetries", 11),
    lambda g: g["spec"]["runnerGroups"][0].__setitem__("completedPodTTL", "5 minutes"),
    lambda g: g["spec"]["runnerGroups"][0]["priorityTiers"][0].__setitem__("threshold", 0),
    lambda g: g["spec"].__setitem__("runnerGroups", []),
    # Issue 9: nothing a rendered config could be rewritten with, and every number bounded.
    lambda g: g["spec"].__setitem__("gitHubURL", 'https://github.com"\n  deny: []\n/org'),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://github.com\\/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://git hub.com/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://gïthub.com/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://169.254.169.254/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://[::1]/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://github.com//org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://github.com:0/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://u@github.com/org"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://github.com/org?x=1"),
    lambda g: g["spec"].__setitem__("gitHubURL", "https://github.com/" + "o" * 2100),
    lambda g: g["spec"]["runnerGroups"][0].__setitem__("completedPodTTL", "9223372036854775807h"),
    lambda g: g["spec"]["runnerGroups"][0].__setitem__("maxWorkers", 10**6),
    lambda g: g["spec"]["runnerGroups"][0]["priorityTiers"][0].__setitem__("threshold", 10**6),
    lambda g: g["spec"]["proxy"].__setitem__("extraAllowedHosts", ["*.com"]),
    lambda g: g["spec"]["proxy"].__setitem__("extraAllowedHosts", ["localhost"]),
    lambda g: g["spec"]["proxy"].__setitem__("extraAllowedHosts", ["a" * 64 + ".example.org"]),
    lambda g: g["spec"]["proxy"].__setitem__("extraAllowedHosts", ['x.org"\n']),
])
def test_schema_rejects_bad_gateways(edit):
    gateway = copy.deepcopy(example_gateway())
    edit(gateway)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(gateway, schema())


@pytest.mark.parametrize("url", [
    "https://github.com/team-a-org", "https://github.com/enterprises/acme", "https://ghes.example.com:8443/org",
    "https://GitHub.com/Org_1/", "https://ghe.corp.example.com/a.b-c",
])
def test_schema_accepts_real_github_urls(url):
    gateway = copy.deepcopy(example_gateway())
    gateway["spec"]["gitHubURL"] = url
    jsonschema.validate(gateway, schema())
