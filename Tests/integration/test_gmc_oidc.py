"""OIDC trust through the GMC (issue 18, item 3): `gmc render` shows the IAM role trust policy
and the Vault JWT role it renders into `<gateway>-oidc`, scoped to the gateway's own
organisation, and the proxy config gains the STS and Vault hosts; `gmc run` gives a gateway that
names another organisation's repositories a Degraded condition naming the field, and creates
nothing for it. Assertions read what `gmc render` printed and what the fake API server holds."""
import json
import subprocess

import yaml

from conftest import wait_for
from test_gmc_controller import GMC, fake, gateway  # noqa: F401  (fake is the fixture)
from test_gmc_render import EXAMPLE

OIDC = ("  oidc:\n"
        "    aws: {accountId: \"123456789012\", roleName: team-a-deploy, region: eu-west-1, repositories: [widgets]}\n"
        "    vault: {address: \"https://vault.example.net\", role: team-a-ci, policies: [ci], repositories: [\"*\"]}\n")


def test_render_shows_the_trust_documents_and_the_proxy_reaches_sts_and_vault(tmp_path):
    text = open(EXAMPLE).read()
    with_oidc = text.replace("  runnerGroups:\n", OIDC + "  runnerGroups:\n", 1)
    assert with_oidc != text
    (tmp_path / "gw.yaml").write_text(with_oidc)
    result = subprocess.run([GMC, "render", "--file", str(tmp_path / "gw.yaml"), "--allowed-priority-classes", "runner-critical,runner-standard",
                             "--allowed-aws-accounts", "123456789012", "--allowed-extra-hosts", "*.example.net"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    trust = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "team-a-gateway-oidc")["data"]
    aws = json.loads(trust["aws.json"])
    statement = aws["trustPolicy"]["Statement"][0]
    assert statement["Condition"]["StringLike"] == {"token.actions.githubusercontent.com:sub": ["repo:team-a-org/widgets:*"]}
    vault = json.loads(trust["vault.json"])
    assert vault["roleConfig"]["bound_claims"] == {"repository_owner": "team-a-org", "repository": ["team-a-org/*"]}
    proxy = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "team-a-gateway-proxy")
                           ["data"]["config.yaml"])
    allowed = json.dumps(proxy["tenants"][0]["allow"])
    for host in ("sts.amazonaws.com", "sts.eu-west-1.amazonaws.com", "vault.example.net"):
        assert host in allowed, host
    out = tmp_path / "rendered.yaml"
    out.write_text(result.stdout)
    checked = subprocess.run(["kubernetes-validate", "--strict", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # An account the platform did not allow is refused (nothing printed to apply).
    result = subprocess.run([GMC, "render", "--file", str(tmp_path / "gw.yaml"), "--allowed-priority-classes", "runner-critical,runner-standard",
                             "--allowed-extra-hosts", "*.example.net"], capture_output=True, text=True)
    assert result.returncode == 1 and not result.stdout and "spec.oidc.aws.accountId" in result.stderr


def test_a_gateway_naming_another_organisations_repositories_is_degraded_with_the_field(fake):
    body = gateway("trusty")
    body["spec"]["oidc"] = {"aws": {"accountId": "123456789012", "roleName": "team-a-x", "repositories": ["org/app", "evil-org/app"]}}
    path = "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/trusty"
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0", "--allowed-aws-accounts", "123456789012"],
                           stderr=subprocess.PIPE, text=True)
    try:
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", body)

        def degraded():
            conditions = (fake.call("GET", path)[1].get("status") or {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), None)
        condition = wait_for(degraded, timeout=20, what="the Degraded condition")
        assert condition["reason"] == "InvalidSpec"
        assert "spec.oidc.aws.repositories[1]" in condition["message"] and "evil-org" in condition["message"], condition
        assert not fake.exists("/api/v1/namespaces/team-a/configmaps/trusty-oidc"), "nothing created for a refused gateway"
    finally:
        gmc.kill()
        gmc.wait()
