"""Node pools end to end (issue 18, item 4): the AGC places a group's workers on the pool the
GMC handed it (`--node-pools`, the file `gmc render` writes into `<gateway>-node-pools`): the
pool's node selector and tolerations and the pool label on the pod the API server got. A pool
the file lacks makes no pod, and says so. `gmc render --node-pools` refuses what a tenant may
not name."""
import json
import subprocess

import yaml

from conftest import wait_for
from test_agc import warning_events, workers, world  # noqa: F401  (world is the fixture)
from test_gmc_controller import GMC
from test_gmc_render import EXAMPLE

POOLS = [
    {"name": "gpu", "nodeSelector": {"karpenter.sh/nodepool": "gpu"},
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], "namespaces": ["team-a"]},
    {"name": "isolated", "nodeSelector": {"pool": "isolated"}, "tolerations": [{"key": "pool", "value": "isolated", "effect": "NoSchedule"}],
     "namespaces": ["team-b"]},
]


def test_a_groups_workers_land_on_its_pool_and_a_missing_pool_makes_no_pod(world, tmp_path):
    kube, github, start = world
    pools = tmp_path / "pools.json"
    pools.write_text(json.dumps(POOLS[:1]))
    start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s", "nodePool": "gpu",
            "podTemplate": {"spec": {"containers": [{"name": "runner"}], "tolerations": [{"key": "spot", "operator": "Exists"}]}}},
           {"name": "other", "runnerLabels": ["other"], "completedPodTTL": "0s", "nodePool": "isolated"}],
          agc_args=("--node-pools", str(pools)))
    wait_for(lambda: len(github.control("state")["scaleSets"]) == 2, timeout=20, what="both scale sets")
    github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 81})
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="the pool's worker")
    pod = workers(kube)[0]
    assert pod["metadata"]["labels"]["actions-gateway.github.com/pool"] == "gpu"
    assert pod["spec"]["nodeSelector"] == {"karpenter.sh/nodepool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    # The pool "isolated" is not in the file this AGC was handed: its job gets no pod.
    github.control("enqueue", {"scaleSet": "other", "repository": "acme/widgets", "runId": 82})
    wait_for(lambda: [e for e in warning_events(kube, "WorkerPodCreateFailed") if "node pool isolated" in e["message"]], timeout=20,
             what="the missing pool reported")
    assert len(workers(kube)) == 1


def test_gmc_render_hands_the_agc_its_pools_and_refuses_what_a_tenant_may_not_name(tmp_path):
    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump(POOLS))
    example = open(EXAMPLE).read()
    named = example.replace("      maxWorkers: 30\n", "      maxWorkers: 30\n      nodePool: gpu\n", 1)
    assert named != example
    (tmp_path / "gw.yaml").write_text(named)
    result = subprocess.run([GMC, "render", "--file", str(tmp_path / "gw.yaml"), "--allowed-priority-classes",
                             "runner-critical,runner-standard", "--node-pools", str(pools)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    handed = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "team-a-gateway-node-pools")
    assert [p["name"] for p in json.loads(handed["data"]["pools.json"])] == ["gpu"], "only the pools its groups name"
    agc = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "team-a-gateway-agc")
    container = agc["spec"]["template"]["spec"]["containers"][0]
    assert "--node-pools" in container["args"]
    assert {"name": "node-pools", "mountPath": "/etc/agc/node-pools", "readOnly": True} in container["volumeMounts"]

    # team-b's pool, and a template that places itself, are refused with the field named.
    (tmp_path / "b.yaml").write_text(named.replace("nodePool: gpu", "nodePool: isolated"))
    result = subprocess.run([GMC, "render", "--file", str(tmp_path / "b.yaml"), "--allowed-priority-classes",
                             "runner-critical,runner-standard", "--node-pools", str(pools)], capture_output=True, text=True)
    assert result.returncode == 1 and "nodePool: no node pool isolated for this namespace" in result.stderr and not result.stdout
    placing = example.replace("{spec: {containers: [{name: runner}]}}", "{spec: {nodeSelector: {gpu: a100}, containers: [{name: runner}]}}", 1)
    assert placing != example
    (tmp_path / "c.yaml").write_text(placing)
    result = subprocess.run([GMC, "render", "--file", str(tmp_path / "c.yaml"), "--allowed-priority-classes",
                             "runner-critical,runner-standard", "--node-pools", str(pools)], capture_output=True, text=True)
    assert result.returncode == 1 and "podTemplate.spec.nodeSelector: is the platform's: name a nodePool" in result.stderr
    (tmp_path / "bad.yaml").write_text("- {name: x, nodeSelector: {}}")
    result = subprocess.run([GMC, "render", "--file", EXAMPLE, "--node-pools", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert result.returncode != 0 and "--node-pools[0].nodeSelector" in result.stderr
