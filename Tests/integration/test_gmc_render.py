"""`gmc render` end to end: the example gateway renders to objects that pass
`kubernetes-validate --strict`; a rejected gateway prints its problems and exits 1."""
import os
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GMC = os.environ.get("GMC_BIN") or os.path.join(ROOT, ".build", "debug", "gmc")
EXAMPLE = os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml")


# The wakes' public key (any 32 bytes, base64) turns on the AGC's flag and the GMC's ingress rule.
@pytest.mark.parametrize("wake", [(), ("--wake-public-key", "+Sg8bxQ4TyBme+QaD/HXkKLIJg0PweyapIRUUBHuS5A=")])
def test_rendered_objects_pass_kubernetes_validate_strict(tmp_path, wake):
    rendered = subprocess.run([GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes", "runner-critical,runner-standard",
                               "--api-server-cidrs", "10.96.0.1/32", *wake], capture_output=True, text=True, check=True).stdout
    assert rendered.count("\n---\n") + 1 == 18
    assert ("--wake-public-key" in rendered) == bool(wake)
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered)
    result = subprocess.run(["kubernetes-validate", "--strict", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 18, result.stdout


def test_render_without_a_uid_emits_no_owner_references():
    # A made-up uid would have the garbage collector delete everything `kubectl apply` created.
    import yaml
    result = subprocess.run([GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes", "runner-critical,runner-standard"],
                            capture_output=True, text=True, check=True)
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert objects and all("ownerReferences" not in d["metadata"] for d in objects)
    assert "no ownerReferences" in result.stderr
    with_uid = open(EXAMPLE).read().replace("  name: team-a-gateway\n", "  name: team-a-gateway\n  uid: 1f0c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b\n", 1)
    result = subprocess.run([GMC, "render", "--file", "-", "--allowed-priority-classes", "runner-critical,runner-standard"],
                            input=with_uid, capture_output=True, text=True, check=True)
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    owned = [d for d in objects if d["kind"] != "Namespace"]
    assert owned and all(d["metadata"]["ownerReferences"][0]["uid"] == "1f0c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b" for d in owned)


def test_rendered_proxy_config_passes_the_proxys_own_check(tmp_path):
    import yaml
    rendered = subprocess.run([GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes", "runner-critical,runner-standard",
                               "--api-server-cidrs", "10.96.0.1/32"], capture_output=True, text=True, check=True).stdout
    maps = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    assert len(maps) == 1
    path = tmp_path / "config.yaml"
    path.write_text(maps[0]["data"]["config.yaml"])
    binary = os.environ.get("EGRESS_PROXY_BIN") or os.path.join(ROOT, ".build", "debug", "egress-proxy")
    result = subprocess.run([binary, "--check-config", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective.get("deny", "default") == "default", "the built-in deny list stays in force"
    assert [t["name"] for t in effective["tenants"]] == ["team-a-gateway"], "one tenant, named after the gateway"


def test_rejected_gateway_exits_1_with_problems():
    result = subprocess.run([GMC, "render", "--file", EXAMPLE], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == "", "nothing to apply"
    assert "priorityTiers[0].priorityClassName" in result.stderr
    assert "not on the platform's allowed list" in result.stderr


def gateway_text(**edits):
    with open(EXAMPLE) as f:
        text = f.read()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    return text


CLASSES = ["--allowed-priority-classes", "runner-critical,runner-standard"]


def test_render_reads_stdin():
    result = subprocess.run([GMC, "render", "--file", "-", *CLASSES], input=gateway_text(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "kind: ConfigMap" in result.stdout


def test_two_gateways_in_one_file_are_refused(tmp_path):
    text = gateway_text()
    gateway = text[text.index("apiVersion: actions-gateway.github.com"):]
    result = subprocess.run([GMC, "render", "--file", "-", *CLASSES], input=text + "\n---\n" + gateway.replace("team-a-gateway", "other"),
                            capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    assert "exactly one ActionsGateway (found 2)" in result.stderr


def test_duplicate_keys_are_refused():
    text = gateway_text(**{"  gitHubURL: https://github.com/team-a-org": "  gitHubURL: https://github.com/team-a-org\n  gitHubURL: https://evil.example/org"})
    result = subprocess.run([GMC, "render", "--file", "-", *CLASSES], input=text, capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    assert "duplicated key" in result.stderr


def test_config_injection_through_gitHubURL_is_refused():
    hostile = 'https://github.com\\"\\n  deny: []\\n/org'
    text = gateway_text(**{"gitHubURL: https://github.com/team-a-org": f'gitHubURL: "{hostile}"'})
    result = subprocess.run([GMC, "render", "--file", "-", *CLASSES], input=text, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert "spec.gitHubURL" in result.stderr


def test_extra_hosts_need_the_platform_allowlist(tmp_path):
    text = gateway_text(**{"extraAllowedHosts: []": "extraAllowedHosts: [registry.npmjs.org]"})
    refused = subprocess.run([GMC, "render", "--file", "-", *CLASSES], input=text, capture_output=True, text=True)
    assert refused.returncode == 1 and "not covered by the platform's allowed extra hosts" in refused.stderr
    allowed = subprocess.run([GMC, "render", "--file", "-", *CLASSES, "--allowed-extra-hosts", "*.npmjs.org"],
                             input=text, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert "registry.npmjs.org" in allowed.stdout
    bad_flag = subprocess.run([GMC, "render", "--file", "-", *CLASSES, "--allowed-extra-hosts", "10.0.0.1"],
                              input=text, capture_output=True, text=True)
    assert bad_flag.returncode != 0 and "--allowed-extra-hosts" in bad_flag.stderr


def test_the_agc_is_told_the_worker_image_that_carries_agc_worker():
    """The GMC and the AGC's pod builder agree on how the wrapper reaches a worker: the AGC gets
    the worker image (the runner image with `agc` in it) as --worker-image."""
    import yaml

    def agc_args(*extra):
        result = subprocess.run([GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes", "runner-critical,runner-standard", *extra],
                                capture_output=True, text=True, check=True)
        deployment = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-agc"))
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return args[args.index("--worker-image") + 1]
    assert agc_args() == "ghcr.io/actions-gateway/worker:0.1.0"
    assert agc_args("--worker-image", "registry.example/worker:2") == "registry.example/worker:2"


def test_the_monitoring_namespace_selector_is_a_flag_and_a_bad_one_is_refused():
    import yaml
    base = [GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes", "runner-critical,runner-standard"]
    rendered = subprocess.run(base + ["--monitoring-namespace-labels", "kubernetes.io/metadata.name=observability"],
                              capture_output=True, text=True, check=True).stdout
    selectors = [peer["namespaceSelector"] for d in yaml.safe_load_all(rendered) if d and d["kind"] == "NetworkPolicy"
                 for rule in d["spec"].get("ingress", []) for peer in rule.get("from", []) if "namespaceSelector" in peer]
    assert selectors == [{"matchLabels": {"kubernetes.io/metadata.name": "observability"}}] * 2, selectors
    for bad, message in (("a b=c", "'a b=c' is not a label key=value"), ("", "needs at least one label")):
        result = subprocess.run(base + ["--monitoring-namespace-labels", bad], capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert result.stdout == "", "nothing to apply"
