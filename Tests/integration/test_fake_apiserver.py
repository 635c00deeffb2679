"""The fake kube-apiserver (Tests/fakes/kube_apiserver.py) driven by the official `kubernetes`
Python client, to show it speaks the real wire protocol and keeps the semantics KubeKit and the
GMC rely on."""
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from conftest import wait_for

FAKE = os.path.join(os.path.dirname(__file__), "..", "fakes", "kube_apiserver.py")


@pytest.fixture
def api():
    process = subprocess.Popen([sys.executable, FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = json.loads(process.stdout.readline())["port"]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api_client = client.ApiClient(configuration)
    yield api_client, port
    api_client.close()
    process.stdin.close()
    process.kill()
    process.wait()


def test_crud_conflicts_and_label_selectors(api):
    api_client, _ = api
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    made = core.create_namespaced_config_map("team-a", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="one", labels={"app": "x", "tier": "a"}), data={"k": "v"}))
    assert made.metadata.uid and made.metadata.resource_version
    core.create_namespaced_config_map("team-a", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="two", labels={"app": "y"})))
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map("team-a", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="one")))
    assert exists.value.status == 409
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_config_map("team-a", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")))
    assert invalid.value.status == 422
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", "team-a")
    assert missing.value.status == 404

    assert [c.metadata.name for c in core.list_namespaced_config_map("team-a", label_selector="app=x").items] == ["one"]
    assert [c.metadata.name for c in core.list_namespaced_config_map("team-a", label_selector="app!=x").items] == ["two"]
    assert [c.metadata.name for c in core.list_namespaced_config_map("team-a", label_selector="tier").items] == ["one"]
    assert [c.metadata.name for c in core.list_namespaced_config_map("team-a", label_selector="!tier").items] == ["two"]

    stale = core.read_namespaced_config_map("one", "team-a")
    fresh = core.read_namespaced_config_map("one", "team-a")
    fresh.data = {"k": "v2"}
    updated = core.replace_namespaced_config_map("one", "team-a", fresh)
    assert int(updated.metadata.resource_version) > int(stale.metadata.resource_version)
    stale.data = {"k": "lost update"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("one", "team-a", stale)
    assert conflict.value.status == 409
    patched = core.patch_namespaced_config_map("one", "team-a", {"data": {"extra": "1", "k": None}})
    assert patched.data == {"extra": "1"}, "JSON merge patch: null removes a key"


def test_watch_resumes_bookmarks_and_410_after_compaction(api):
    api_client, port = api
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="w")))
    listed = core.list_namespaced_config_map("w")
    since = listed.metadata.resource_version
    for index in range(3):
        core.create_namespaced_config_map("w", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{index}")))
    seen = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, "w", resource_version=since, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 3:
            stream.stop()
    assert seen == [("ADDED", "c0"), ("ADDED", "c1"), ("ADDED", "c2")], "resumed from the list's resourceVersion"

    raw = core.list_namespaced_config_map("w", watch=True, allow_watch_bookmarks=True, timeout_seconds=2,
                                          _preload_content=False)
    lines = [json.loads(line) for line in raw.data.decode().splitlines() if line]
    assert any(line["type"] == "BOOKMARK" for line in lines)

    import urllib.request
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/fake/compact", method="POST")).read()
    with pytest.raises(ApiException) as gone:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, "w", resource_version=since, timeout_seconds=2):
            pass
    assert gone.value.status == 410


def test_status_subresource_finalizers_and_cascade(api):
    api_client, _ = api
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    apps = client.AppsV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="t")))
    group, version, plural = "actions-gateway.github.com", "v1alpha1", "actionsgateways"
    gateway = custom.create_namespaced_custom_object(group, version, "t", plural, {
        "apiVersion": f"{group}/{version}", "kind": "ActionsGateway",
        "metadata": {"name": "gw", "finalizers": ["actions-gateway.github.com/cleanup"]},
        "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": "https://github.com/org",
                 "runnerGroups": [{"name": "cpu", "runnerLabels": ["x"], "maxWorkers": 1}]},
        "status": {"ignored": True}})
    assert "status" not in gateway, "create ignores status when the status subresource exists"
    custom.patch_namespaced_custom_object_status(group, version, "t", plural, "gw", {"status": {"observedGeneration": 1}})
    custom.patch_namespaced_custom_object(group, version, "t", plural, "gw", {"spec": {"gitHubURL": "https://github.com/other"},
                                                                               "status": {"observedGeneration": 99}})
    current = custom.get_namespaced_custom_object(group, version, "t", plural, "gw")
    assert current["status"] == {"observedGeneration": 1}, "main-resource writes keep status"
    assert current["metadata"]["generation"] == 2, "a spec change bumps generation"

    with pytest.raises(ApiException) as invalid:
        custom.patch_namespaced_custom_object(group, version, "t", plural, "gw", {"spec": {"gitHubURL": "ftp://x"}})
    assert invalid.value.status == 422 and "gitHubURL" in invalid.value.body, "the CRD schema is enforced"

    owner = {"apiVersion": f"{group}/{version}", "kind": "ActionsGateway", "name": "gw",
             "uid": current["metadata"]["uid"], "controller": True}
    apps.create_namespaced_deployment("t", {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "metadata": {"name": "gw-proxy", "ownerReferences": [owner]},
                                            "spec": {"selector": {"matchLabels": {"a": "b"}},
                                                     "template": {"metadata": {"labels": {"a": "b"}},
                                                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    custom.delete_namespaced_custom_object(group, version, "t", plural, "gw", propagation_policy="Background")
    pending = custom.get_namespaced_custom_object(group, version, "t", plural, "gw")
    assert pending["metadata"]["deletionTimestamp"], "a finalizer keeps the object, marked for deletion"
    assert len(apps.list_namespaced_deployment("t").items) == 1, "background: dependents wait for the owner"
    custom.patch_namespaced_custom_object(group, version, "t", plural, "gw", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(group, version, "t", plural, "gw")
    assert gone.value.status == 404, "removing the last finalizer completes the deletion"
    assert apps.list_namespaced_deployment("t").items == [], "then the garbage collector takes the dependents"

    # Foreground: dependents first, the owner waits for them.
    owner_map = core.create_namespaced_config_map("t", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner_map.metadata.uid)
    core.create_namespaced_config_map("t", client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="held", owner_references=[ref], finalizers=["example.com/hold"])))
    core.delete_namespaced_config_map("owner", "t", propagation_policy="Foreground")
    owner_now = core.read_namespaced_config_map("owner", "t")
    assert "foregroundDeletion" in owner_now.metadata.finalizers
    core.patch_namespaced_config_map("held", "t", {"metadata": {"finalizers": None}})
    for name in ("held", "owner"):
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_config_map(name, "t")
        assert gone.value.status == 404, name


def test_stats_count_reads_by_verb_and_writes(api):
    import urllib.request
    api_client, port = api

    def stats():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/fake/stats", timeout=5) as response:
            return json.loads(response.read())

    core = client.CoreV1Api(api_client)
    before = stats()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="counted")))
    core.read_namespace("counted")
    with pytest.raises(ApiException):
        core.read_namespace("absent")
    core.list_namespace()
    for _ in watch.Watch().stream(core.list_namespace, timeout_seconds=1, resource_version="0"):
        break
    after = stats()
    assert after["writes"] - before["writes"] == 1
    assert after["get"] - before["get"] == 2, "a 404 is a read too"
    assert after["list"] - before["list"] == 1
    assert after["watch"] - before["watch"] == 1


def test_resource_quota_admission_with_scopes_and_status(api):
    api_client, _ = api
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    client.SchedulingV1Api(api_client).create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name="gold"), value=1000))
    core.create_namespaced_resource_quota("team-a", client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="compute"), spec=client.V1ResourceQuotaSpec(hard={"pods": "3", "requests.cpu": "2"})))
    core.create_namespaced_resource_quota("team-a", client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gold"), spec=client.V1ResourceQuotaSpec(
            hard={"pods": "1"}, scope_selector=client.V1ScopeSelector(match_expressions=[
                client.V1ScopedResourceSelectorRequirement(scope_name="PriorityClass", operator="In", values=["gold"])]))))

    def pod(name, cpu, priority=None):
        return client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=client.V1PodSpec(
            priority_class_name=priority, containers=[client.V1Container(
                name="c", image="i", resources=client.V1ResourceRequirements(requests={"cpu": cpu}))]))

    core.create_namespaced_pod("team-a", pod("a", "500m", "gold"))
    with pytest.raises(ApiException) as scoped:
        core.create_namespaced_pod("team-a", pod("b", "500m", "gold"))
    assert scoped.value.status == 403
    message = json.loads(scoped.value.body)["message"]
    assert message == 'pods "b" is forbidden: exceeded quota: gold, requested: pods=1, used: pods=1, limited: pods=1', message
    core.create_namespaced_pod("team-a", pod("b", "1"))  # outside the gold scope
    with pytest.raises(ApiException) as cpu:
        core.create_namespaced_pod("team-a", pod("c", "600m"))
    assert cpu.value.status == 403 and "exceeded quota: compute" in json.loads(cpu.value.body)["message"]
    assert "requests.cpu=600m" in json.loads(cpu.value.body)["message"]
    status = core.read_namespaced_resource_quota("compute", "team-a").status
    assert status.hard == {"pods": "3", "requests.cpu": "2"} and status.used == {"pods": "2", "requests.cpu": "1500m"}

    # A pod that finished no longer counts; one deleted frees its share.
    core.patch_namespaced_pod_status("b", "team-a", {"status": {"phase": "Succeeded"}})
    core.create_namespaced_pod("team-a", pod("c", "600m"))
    core.delete_namespaced_pod("a", "team-a")
    core.create_namespaced_pod("team-a", pod("d", "100m", "gold"))
    assert core.read_namespaced_resource_quota("gold", "team-a").status.used == {"pods": "1"}


def _pod(name, node=None, labels=None, grace=None, priority=None):
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name, labels=labels), spec=client.V1PodSpec(
        node_name=node, termination_grace_period_seconds=grace, priority_class_name=priority,
        containers=[client.V1Container(name="c", image="i")]))


def _log(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/fake/requests") as response:
        return json.loads(response.read())["requests"]


def test_a_bound_pod_is_deleted_gracefully_and_goes_when_its_kubelet_is_done(api):
    api_client, port = api
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ns")))
    core.create_namespaced_pod("ns", _pod("unbound"))
    core.delete_namespaced_pod("unbound", "ns")
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod("unbound", "ns")
    assert gone.value.status == 404, "a pod on no node goes at once"

    core.create_namespaced_pod("ns", _pod("bound", node="node-1", grace=300))
    core.delete_namespaced_pod("bound", "ns")
    pod = core.read_namespaced_pod("bound", "ns")
    assert pod.metadata.deletion_timestamp is not None and pod.metadata.deletion_grace_period_seconds == 300
    # A write while it terminates keeps it; the kubelet reporting a terminal phase lets it go.
    core.patch_namespaced_pod("bound", "ns", {"metadata": {"annotations": {"a": "b"}}})
    assert core.read_namespaced_pod("bound", "ns").metadata.deletion_timestamp is not None
    core.patch_namespaced_pod_status("bound", "ns", {"status": {"phase": "Failed"}})
    with pytest.raises(ApiException) as done:
        core.read_namespaced_pod("bound", "ns")
    assert done.value.status == 404

    # Grace 0 on a second delete ends it at once; a short grace runs out by itself.
    core.create_namespaced_pod("ns", _pod("forced", node="node-1"))
    core.delete_namespaced_pod("forced", "ns")
    core.delete_namespaced_pod("forced", "ns", grace_period_seconds=0)
    with pytest.raises(ApiException):
        core.read_namespaced_pod("forced", "ns")
    core.create_namespaced_pod("ns", _pod("short", node="node-1"))
    core.delete_namespaced_pod("short", "ns", grace_period_seconds=1)
    wait_for(lambda: not [p for p in core.list_namespaced_pod("ns").items if p.metadata.name == "short"], timeout=10,
             what="the grace period ends")
    log = _log(port)
    assert [r["code"] for r in log if r["method"] == "DELETE" and r["path"].startswith("/api/v1/namespaces/ns/pods/short")] == [200], log
    assert any(r["code"] == 404 and r["reason"] == "NotFound" for r in log), "the request log keeps refusals too"
    assert all(r["agent"].startswith("OpenAPI-Generator") for r in log), "the caller's User-Agent, to tell callers apart"


def test_eviction_respects_disruption_budgets_and_marks_the_pod(api):
    api_client, _ = api
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ns")))
    for name in ("a", "b"):
        core.create_namespaced_pod("ns", _pod(name, node="node-1", labels={"app": "web"}))
        core.patch_namespaced_pod_status(name, "ns", {"status": {"phase": "Running"}})
    client.PolicyV1Api(api_client).create_namespaced_pod_disruption_budget("ns", client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1PodDisruptionBudgetSpec(min_available=1, selector=client.V1LabelSelector(match_labels={"app": "web"}))))
    core.create_namespaced_pod_eviction("a", "ns", client.V1Eviction(metadata=client.V1ObjectMeta(name="a", namespace="ns")))
    evicted = core.read_namespaced_pod("a", "ns")
    assert evicted.metadata.deletion_timestamp is not None
    target = [c for c in evicted.status.conditions if c.type == "DisruptionTarget"]
    assert target and target[0].status == "True" and target[0].reason == "EvictionByEvictionAPI"
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod_eviction("b", "ns", client.V1Eviction(metadata=client.V1ObjectMeta(name="b", namespace="ns")))
    assert refused.value.status == 429 and "disruption budget" in json.loads(refused.value.body)["message"]
    assert core.read_namespaced_pod("b", "ns").metadata.deletion_timestamp is None


def test_priority_admission_nodes_and_a_lagging_quota_controller(api):
    api_client, port = api
    core = client.CoreV1Api(api_client)
    scheduling = client.SchedulingV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ns")))
    assert {c.metadata.name for c in scheduling.list_priority_class().items} >= {"system-cluster-critical", "system-node-critical"}
    with pytest.raises(ApiException) as missing:
        core.create_namespaced_pod("ns", _pod("p", priority="tier-a"))
    assert missing.value.status == 403
    assert json.loads(missing.value.body)["message"] == 'pods "p" is forbidden: no PriorityClass with name tier-a was found'
    scheduling.create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name="tier-a"), value=500))
    assert core.create_namespaced_pod("ns", _pod("p", priority="tier-a")).spec.priority == 500
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-1", labels={"kubernetes.io/hostname": "node-1"})))
    assert [n.metadata.name for n in core.list_node().items] == ["node-1"]

    core.create_namespaced_resource_quota("ns", client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="q"), spec=client.V1ResourceQuotaSpec(hard={"pods": "2"})))
    assert core.read_namespaced_resource_quota("q", "ns").status.used == {"pods": "1"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/fake/quota-controller", data=b'{"paused": true}', method="POST")
    urllib.request.urlopen(request).read()
    core.create_namespaced_pod("ns", _pod("second"))
    assert core.read_namespaced_resource_quota("q", "ns").status.used == {"pods": "1"}, "status lags while paused"
    with pytest.raises(ApiException) as over:
        core.create_namespaced_pod("ns", _pod("third"))
    assert over.value.status == 403 and "exceeded quota: q" in json.loads(over.value.body)["message"], "admission does not lag"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/fake/quota-controller", data=b'{"paused": false}', method="POST")
    urllib.request.urlopen(request).read()
    assert core.read_namespaced_resource_quota("q", "ns").status.used == {"pods": "2"}


def test_delayed_patches_land_after_later_ones(api):
    """POST /fake/delay-patches: a held PATCH is applied after one sent later, as concurrent
    writes can land out of order on a real server; other paths are not held."""
    import threading
    api_client, port = api
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": "ns"}})
    core.create_namespaced_config_map("ns", {"metadata": {"name": "x-guards"}, "data": {"v": "0"}})
    core.create_namespaced_config_map("ns", {"metadata": {"name": "other"}, "data": {"v": "0"}})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/fake/delay-patches", method="POST",
                                     data=json.dumps({"pathContains": "-guards", "delays": [0.5]}).encode(),
                                     headers={"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(request).read())["delays"] == [0.5]
    first = threading.Thread(target=lambda: core.patch_namespaced_config_map("x-guards", "ns", {"data": {"v": "first"}}))
    first.start()
    delays = f"http://127.0.0.1:{port}/fake/delay-patches"
    wait_for(lambda: json.loads(urllib.request.urlopen(delays).read())["delays"] == [], what="the first patch held")
    core.patch_namespaced_config_map("other", "ns", {"data": {"v": "unheld"}})
    assert core.read_namespaced_config_map("other", "ns").data["v"] == "unheld", "another path is not held"
    core.patch_namespaced_config_map("x-guards", "ns", {"data": {"v": "second"}})
    assert core.read_namespaced_config_map("x-guards", "ns").data["v"] == "second", "the later patch applied at once"
    first.join(timeout=5)
    assert core.read_namespaced_config_map("x-guards", "ns").data["v"] == "first", "the held one landed last"
