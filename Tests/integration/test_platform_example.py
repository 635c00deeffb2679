"""deploy/examples/platform (issue 18, item 6): the EKS platform example builds, and its parts
agree with one another and with what the GMC and AGC render: the GMC's node pools select the
Karpenter NodePools' nodes and tolerate their taints, the GMC mounts the files its flags name,
and the Cilium policy selects the labels worker and proxy pods really carry."""
import os
import subprocess

import yaml

from test_deploy import ROOT, build
from test_gmc_controller import GMC
from test_gmc_render import EXAMPLE

AGC = os.environ.get("AGC_BIN") or os.path.join(ROOT, ".build", "debug", "agc")


def documents():
    return [d for d in yaml.safe_load_all(build("examples/platform")) if d]


def gmc_container(docs):
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "gmc")
    return deployment, next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gmc")


def flag(container, name):
    return next(a.split("=", 1)[1] for a in container["args"] if a.startswith(name + "="))


def test_the_gmcs_pools_select_the_karpenter_nodes_and_tolerate_their_taints(tmp_path):
    docs = documents()
    pools = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "gmc-node-pools")["data"]["pools.yaml"])
    nodepools = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NodePool"}
    assert set(nodepools) == {"runners-warm", "runners-isolated", "runners-gpu"}
    for nodepool in nodepools.values():
        spec = nodepool["spec"]
        assert set(spec["template"]["spec"]["nodeClassRef"]) == {"group", "kind", "name"}
        assert spec["disruption"]["consolidationPolicy"] in ("WhenEmpty", "WhenEmptyOrUnderutilized")
        assert spec["disruption"]["consolidateAfter"][-1] in "smh"
    for pool in pools:
        target = nodepools[pool["nodeSelector"]["karpenter.sh/nodepool"]]
        labels = {**target["spec"]["template"]["metadata"]["labels"], "karpenter.sh/nodepool": target["metadata"]["name"]}
        assert all(labels.get(k) == v for k, v in pool["nodeSelector"].items()), pool
        for taint in target["spec"]["template"]["spec"].get("taints", []):
            tolerated = any(t.get("key") == taint["key"] and t.get("effect") == taint["effect"]
                            and (t.get("operator") == "Exists" or t.get("value") == taint.get("value")) for t in pool.get("tolerations", []))
            assert tolerated, f"pool {pool['name']} does not tolerate {taint}: its workers would never schedule"

    # The GMC takes the file as it is, and a tenant naming a pool renders.
    (tmp_path / "pools.yaml").write_text(yaml.safe_dump(pools))
    text = open(EXAMPLE).read().replace("      maxWorkers: 30\n", "      maxWorkers: 30\n      nodePool: warm\n", 1)
    (tmp_path / "gw.yaml").write_text(text)
    result = subprocess.run([GMC, "render", "--file", str(tmp_path / "gw.yaml"), "--allowed-priority-classes", "runner-critical,runner-standard",
                             "--node-pools", str(tmp_path / "pools.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_gmc_mounts_what_its_flags_name():
    docs = documents()
    deployment, container = gmc_container(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    pools = flag(container, "--node-pools")
    assert volumes[mounts[os.path.dirname(pools)]]["configMap"]["name"] == "gmc-node-pools"
    assert os.path.basename(pools) in next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "gmc-node-pools")["data"]
    assert volumes[mounts[flag(container, "--webhook-secrets")]]["secret"]["secretName"] == "gmc-webhook"
    assert volumes[mounts[os.path.dirname(flag(container, "--wake-key"))]]["secret"]["secretName"] == "gmc-wake-key"
    port = int(flag(container, "--webhook-addr").rsplit(":", 1)[1])
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "gmc-webhook")
    assert service["spec"]["ports"][0]["targetPort"] == port
    assert service["spec"]["selector"]["actions-gateway.github.com/webhook-leader"] == "true"
    assert "--leader-elect" in container["args"], "the base's flags are kept"


def test_the_cilium_policy_selects_the_labels_workers_and_proxies_carry(tmp_path):
    policy = next(d for d in documents() if d["kind"] == "CiliumClusterwideNetworkPolicy")
    job = tmp_path / "job.json"
    job.write_text('{"jobId": "j1", "runId": 1, "repository": "team-a-org/app"}')
    rendered = subprocess.run([AGC, "render-pod", "--file", EXAMPLE, "--group", "cpu-runners", "--job", str(job)],
                              capture_output=True, text=True, check=True).stdout
    pod = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Pod")
    selector = policy["spec"]["endpointSelector"]["matchLabels"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items()), (selector, pod["metadata"]["labels"])
    objects = [d for d in yaml.safe_load_all(subprocess.run([GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes",
                                                             "runner-critical,runner-standard"], capture_output=True, text=True,
                                                            check=True).stdout) if d]
    proxy = next(d for d in objects if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-proxy"))
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"]
    proxy_rule = policy["spec"]["egress"][0]
    assert all(proxy_labels.get(k) == v for k, v in proxy_rule["toEndpoints"][0]["matchLabels"].items())
    port = next(p for p in proxy["spec"]["template"]["spec"]["containers"][0]["ports"] if p["name"] == "proxy")["containerPort"]
    assert proxy_rule["toPorts"][0]["ports"][0]["port"] == str(port)
