"""deploy/: every kustomize base builds with `kubectl kustomize`, and every object in it passes
`kubernetes-validate --strict`; the GMC's ClusterRole has no wildcards and holds every
permission the per-tenant AGC Role it creates grants (RBAC forbids granting more)."""
import os
import subprocess

import pytest
import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BASES = ["crds", "gmc", "proxy", "examples", "examples/platform"]
# Kinds no schema here knows (the CRDs of the gateway, Karpenter and Cilium): checked structurally
# where they are used (test_platform_example.py), counted out of the strict validation.
CUSTOM_GROUPS = ("actions-gateway.github.com/", "karpenter.sh/", "cilium.io/")


def build(base):
    result = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy", base)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("base", BASES)
def test_base_builds_and_validates_strictly(base, tmp_path):
    rendered = build(base)
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    assert documents, base
    out = tmp_path / f"{base.replace('/', '-')}.yaml"
    out.write_text(rendered)
    result = subprocess.run(["kubernetes-validate", "--strict", str(out)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    custom = [d for d in documents if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert output.count("passed") == len(documents) - len(custom), output
    assert "ERROR" not in output, output


def test_gmc_cluster_role_has_no_wildcards_and_covers_the_agc_role():
    documents = [d for d in yaml.safe_load_all(build("gmc")) if d]
    role = next(d for d in documents if d["kind"] == "ClusterRole")
    granted = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    gmc = os.environ.get("GMC_BIN") or os.path.join(ROOT, ".build", "debug", "gmc")
    rendered = subprocess.run([gmc, "render", "--file", os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml"),
                               "--allowed-priority-classes", "runner-critical,runner-standard"],
                              capture_output=True, text=True, check=True).stdout
    agc_role = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Role")
    for rule in agc_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (group, resource, verb) in granted, (group, resource, verb)


def test_priority_classes_below_the_top_never_preempt():
    classes = [d for d in yaml.safe_load_all(build("gmc")) if d and d["kind"] == "PriorityClass"]
    top = max(classes, key=lambda c: c["value"])
    for priority_class in classes:
        if priority_class is not top:
            assert priority_class["preemptionPolicy"] == "Never", priority_class["metadata"]["name"]


def test_standalone_proxy_config_is_the_embedded_default_and_valid(tmp_path):
    documents = [d for d in yaml.safe_load_all(build("proxy")) if d]
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["config.yaml"]
    binary = os.environ.get("EGRESS_PROXY_BIN") or os.path.join(ROOT, ".build", "debug", "egress-proxy")
    path = tmp_path / "config.yaml"
    path.write_text(config)
    assert subprocess.run([binary, "--check-config", "--config", str(path)], capture_output=True).returncode == 0
    default = yaml.safe_load(subprocess.run([binary, "--print-default-config"], capture_output=True, text=True,
                                            check=True).stdout)
    assert yaml.safe_load(config)["tenants"][0]["allow"] == default["tenants"][0]["allow"]
