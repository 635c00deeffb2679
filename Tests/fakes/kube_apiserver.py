#!/usr/bin/env python3
"""A fake kube-apiserver for KubeKit's and the GMC's tests: the API subset they use, with real
semantics, on 127.0.0.1 (plain HTTP). Prints {"port": N}; serves until stdin closes.

GET /fake/stats counts writes and reads by verb (get, list, watch); FAKE_DEBUG=1 in the
environment logs every read to stderr.
With --tls CERT KEY it serves HTTPS; adding --client-ca CA requires a client certificate signed by CA.
With --token T (or POST /fake/token), every API call needs `Authorization: Bearer T` (401 else).

Semantics kept: a resourceVersion per write (one counter for the store, as etcd has); 404, 409
AlreadyExists on create, 409 Conflict on an update with a stale resourceVersion, 422 Invalid for
a missing or bad name and for an ActionsGateway that breaks the CRD's schema; equality-based label selectors (k=v, k!=v, k, !k); list-then-watch with
resume from a resourceVersion, BOOKMARK events, and 410 Gone for a resourceVersion older than the
compaction point (POST /fake/compact compacts everything so far); finalizers and
deletionTimestamp; POST /fake/drop-watches ends every open watch (an API server restart);
foreground and background cascade through ownerReferences (an owner held by a finalizer keeps
its dependents until it is really gone, as the garbage collector does); the status
subresource (a main-resource write keeps status, a /status write keeps everything else);
JSON merge patch (RFC 7386), strategic merge patch treated as merge patch, and apply patches
(create-or-merge). Errors are Status objects as the real server sends them.

ResourceQuota admission for pods, as the real quota admission plugin does it: every quota of
the namespace whose `scopes` and `scopeSelector` (PriorityClass, Terminating/NotTerminating,
BestEffort/NotBestEffort) match the new pod is checked against the non-terminal pods it already
counts; over any `hard` entry the create is 403 Forbidden with the real message
(`exceeded quota: NAME, requested: ..., used: ..., limited: ...`). Quota status (`hard`, `used`) is
kept current on every pod write, as the quota controller would; POST /fake/quota-controller
{"paused": true} stops that (a quota controller that lags: admission still counts every pod).

Pods as the real API server treats them: a pod bound to a node (`spec.nodeName`) is deleted
gracefully (deletionTimestamp and deletionGracePeriodSeconds set from the request's
`gracePeriodSeconds`, else the pod's `terminationGracePeriodSeconds`, else 30), and goes when
the kubelet is done: its phase turns terminal, a delete with grace 0 comes, or the grace runs
out; an unbound pod goes at once. The eviction subresource (POST pods/NAME/eviction) answers 429
when a PodDisruptionBudget selecting the pod would be violated, else marks the pod
DisruptionTarget=True (EvictionByEvictionAPI) and deletes it gracefully. Priority admission: a
pod naming a PriorityClass that does not exist is 403 Forbidden; one that exists sets
`spec.priority` (the two system classes exist from the start). Nodes and PriorityClasses are
cluster-scoped resources. GET /fake/requests is the request log: every API call as
{method, path, code, reason, name (of the object answered), agent (User-Agent), at (epoch seconds)},
oldest first (the last 20,000).
POST /fake/delay-patches {"pathContains": S, "delays": [seconds, ...]} holds each next PATCH whose
path contains S for the next of those delays before applying it (concurrent writes then land out
of order, as they can on a real server under load); GET /fake/delay-patches shows the delays left.
"""
import copy
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (group, version, plural) -> (kind, namespaced, has_status)
RESOURCES = {
    ("", "v1", "namespaces"): ("Namespace", False, True),
    ("", "v1", "pods"): ("Pod", True, True),
    ("", "v1", "services"): ("Service", True, True),
    ("", "v1", "configmaps"): ("ConfigMap", True, False),
    ("", "v1", "secrets"): ("Secret", True, False),
    ("", "v1", "serviceaccounts"): ("ServiceAccount", True, False),
    ("", "v1", "events"): ("Event", True, False),
    ("", "v1", "resourcequotas"): ("ResourceQuota", True, True),
    ("apps", "v1", "deployments"): ("Deployment", True, True),
    ("rbac.authorization.k8s.io", "v1", "roles"): ("Role", True, False),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"): ("RoleBinding", True, False),
    ("networking.k8s.io", "v1", "networkpolicies"): ("NetworkPolicy", True, False),
    ("policy", "v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True, True),
    ("autoscaling", "v2", "horizontalpodautoscalers"): ("HorizontalPodAutoscaler", True, True),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, False),
    ("", "v1", "nodes"): ("Node", False, True),
    ("scheduling.k8s.io", "v1", "priorityclasses"): ("PriorityClass", False, False),
    ("actions-gateway.github.com", "v1alpha1", "actionsgateways"): ("ActionsGateway", True, True),
}
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
CRD_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "crds",
                        "actions-gateway.github.com_actionsgateways.yaml")


def load_schemas():
    """The ActionsGateway openAPIV3Schema from deploy/crds, checked on every write (422 when a
    write breaks it), as the API server does for custom resources (CEL rules excepted)."""
    try:
        import yaml
        with open(CRD_FILE) as f:
            crd = yaml.safe_load(f)
        return {("actions-gateway.github.com", "v1alpha1", "actionsgateways"): crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]}
    except (OSError, ImportError):
        return {}


SCHEMAS = load_schemas()


def schema_error(gvr, obj):
    schema = SCHEMAS.get(gvr)
    if not schema:
        return None
    import jsonschema
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as error:
        path = ".".join(str(p) for p in error.absolute_path)
        return status_error(422, "Invalid", f'{RESOURCES[gvr][0]} "{obj["metadata"].get("name")}" is invalid: {path}: {error.message}')
    return None


class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.objects = {}          # (gvr, namespace, name) -> object
        self.events = []           # (rv, gvr, type, object)
        self.rv = 0
        self.compacted = 0
        self.writes = 0            # every successful write, for "zero writes" checks
        self.reads = {"get": 0, "list": 0, "watch": 0}   # every API read by verb (not /fake/ calls)
        self.watch_epoch = 0       # bumped by /fake/drop-watches: open watches end, as on a restart
        self.requests = []         # the request log: {method, path, code, reason}
        self.patch_delays = ("", [])  # POST /fake/delay-patches
        self.quota_paused = False  # POST /fake/quota-controller: status.used stops following pods
        self.grace_deadlines = {}  # pod uid -> when its grace period ends (epoch seconds)

    def next_rv(self):
        self.rv += 1
        return str(self.rv)

    def record(self, gvr, kind, obj):
        self.writes += 1
        self.events.append((int(obj["metadata"]["resourceVersion"]), gvr, kind, copy.deepcopy(obj)))
        self.lock.notify_all()


STORE = Store()


def status_error(code, reason, message):
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": message, "reason": reason, "code": code}


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches(obj, selector):
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        term = term.strip()
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "==" in term or "=" in term:
            key, value = re.split("==|=", term, maxsplit=1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def parse_path(path):
    """-> (gvr, namespace, name, subresource) or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) > 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    gvr = (group, version, rest[0])
    if gvr not in RESOURCES:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return gvr, namespace, name, sub


TOKEN = {"value": None}  # when set (--token, POST /fake/token), every API call needs it as a bearer token


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def authorized(self):
        if self.path.startswith("/fake/") or TOKEN["value"] is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {TOKEN['value']}":
            return True
        self.send_json(*status_error(401, "Unauthorized", "Unauthorized"))
        return False


    def setup(self):
        super().setup()
        # Headers and body go out as separate writes; without this, Nagle plus delayed ACKs
        # add 40 ms to every request on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def record_request(self, code, body=None):
        if not self.path.startswith("/fake/"):
            with STORE.lock:
                status = isinstance(body, dict) and body.get("kind") == "Status"
                name = ((body.get("metadata") or {}).get("name") if isinstance(body, dict) and not status else None)
                STORE.requests.append({"method": self.command, "path": self.path, "code": code,
                                       "reason": body.get("reason") if status else None, "name": name,
                                       "agent": self.headers.get("User-Agent", ""), "at": time.time()})
                del STORE.requests[:-20000]

    def send_json(self, code, body):
        self.record_request(code, body)
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        content_type = self.headers.get("Content-Type", "")
        if "yaml" in content_type:
            import yaml
            return yaml.safe_load(raw)
        return json.loads(raw)

    def route(self):
        url = urllib.parse.urlparse(self.path)
        return parse_path(url.path), dict(urllib.parse.parse_qsl(url.query))

    # --- verbs ---

    def do_GET(self):
        if not self.authorized():
            return
        if self.path.startswith("/fake/delay-patches"):  # the delays not yet taken by a PATCH
            with STORE.lock:
                return self.send_json(200, {"delays": list(STORE.patch_delays[1])})
        if self.path.startswith("/fake/requests"):
            with STORE.lock:
                return self.send_json(200, {"requests": list(STORE.requests)})
        if self.path.startswith("/fake/stats"):
            with STORE.lock:
                return self.send_json(200, {"writes": STORE.writes, "resourceVersion": STORE.rv, **STORE.reads})
        parsed, query = self.route()
        if not parsed:
            return self.send_json(*status_error(404, "NotFound", "the server could not find the requested resource"))
        gvr, namespace, name, sub = parsed
        kind, namespaced, _ = RESOURCES[gvr]
        verb = "get" if name else "watch" if query.get("watch") in ("true", "1") else "list"
        with STORE.lock:
            STORE.reads[verb] += 1
        if os.environ.get("FAKE_DEBUG"): sys.stderr.write(f"{verb} {self.path}\n")
        if name:
            with STORE.lock:
                obj = STORE.objects.get((gvr, namespace if namespaced else None, name))
            if obj is None:
                return self.send_json(*status_error(404, "NotFound", f'{gvr[2]} "{name}" not found'))
            return self.send_json(200, obj)
        if query.get("watch") in ("true", "1"):
            return self.watch(gvr, namespace, query)
        with STORE.lock:
            items = [copy.deepcopy(o) for (g, ns, _), o in sorted(STORE.objects.items(), key=lambda i: str(i[0]))
                     if g == gvr and (namespace is None or ns == namespace) and matches(o, query.get("labelSelector"))]
            rv = str(STORE.rv)
        api = "/".join(filter(None, gvr[:2]))
        self.send_json(200, {"kind": kind + "List", "apiVersion": api, "metadata": {"resourceVersion": rv}, "items": items})

    def watch(self, gvr, namespace, query):
        since = int(query.get("resourceVersion") or 0)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.time() + float(query.get("timeoutSeconds") or 30)
        with STORE.lock:
            if since and since < STORE.compacted:
                return self.send_json(*status_error(410, "Expired", f"too old resource version: {since} ({STORE.compacted})"))
            if not since:
                since = STORE.rv
        self.record_request(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kind = RESOURCES[gvr][0]
        api = "/".join(filter(None, gvr[:2]))
        last_bookmark = 0
        epoch = STORE.watch_epoch

        def send(event):
            data = (json.dumps(event) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            while time.time() < deadline and epoch == STORE.watch_epoch:
                with STORE.lock:
                    def undelivered():
                        return [e for e in STORE.events if e[0] > since and e[1] == gvr and
                                (namespace is None or e[3]["metadata"].get("namespace") == namespace) and
                                matches(e[3], query.get("labelSelector"))]
                    pending = undelivered()
                    if not pending:
                        STORE.lock.wait(timeout=0.2)
                        pending = undelivered()
                    # Only with nothing undelivered, checked under the same lock, may a bookmark
                    # claim the current resourceVersion (else an event could be skipped).
                    current = STORE.rv if not pending else None
                for rv, _, event_type, obj in pending:
                    send({"type": event_type, "object": obj})
                    since = rv
                if pending:
                    continue
                if bookmarks and time.time() - last_bookmark > 1:
                    last_bookmark = time.time()
                    since = max(since, current)
                    send({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api,
                                                          "metadata": {"resourceVersion": str(since)}}})
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def do_POST(self):
        if self.path.startswith("/fake/token"):
            TOKEN["value"] = self.body().get("token")
            return self.send_json(200, {"token": TOKEN["value"]})
        if not self.authorized():
            return
        if self.path.startswith("/fake/drop-watches"):
            with STORE.lock:
                STORE.watch_epoch += 1
                STORE.lock.notify_all()
            return self.send_json(200, {"epoch": STORE.watch_epoch})
        if self.path.startswith("/fake/quota-controller"):
            paused = bool(self.body().get("paused"))
            with STORE.lock:
                STORE.quota_paused = paused
                if not paused:
                    for (gvr, ns, _) in list(STORE.objects):
                        if gvr == QUOTA_GVR:
                            refresh_quota_status(ns)
            return self.send_json(200, {"paused": paused})
        if self.path.startswith("/fake/delay-patches"):
            rule = self.body() or {}
            with STORE.lock:
                STORE.patch_delays = (rule.get("pathContains", ""), list(rule.get("delays", [])))
            return self.send_json(200, {"delays": STORE.patch_delays[1]})
        if self.path.startswith("/fake/compact"):
            with STORE.lock:
                STORE.compacted = STORE.rv + 1
                STORE.events.clear()
            return self.send_json(200, {"compacted": STORE.compacted})
        parsed, _ = self.route()
        if parsed and parsed[0] == POD_GVR and parsed[2] and parsed[3] == "eviction":
            return self.send_json(*evict(parsed[1], parsed[2], self.body() or {}))
        if not parsed or parsed[2]:
            return self.send_json(*status_error(405, "MethodNotAllowed", "method not allowed"))
        gvr, namespace, _, _ = parsed
        obj = self.body()
        return self.send_json(*create(gvr, namespace, obj))

    def item(self):
        """(gvr, namespace, name, subresource, query) of an authorized request for one object,
        or None after answering 401 or 405."""
        if not self.authorized():
            return None
        parsed, query = self.route()
        if not parsed or not parsed[2]:
            self.send_json(*status_error(405, "MethodNotAllowed", "method not allowed"))
            return None
        return parsed + (query,)

    def do_PUT(self):
        target = self.item()
        if not target:
            return
        gvr, namespace, name, sub, _ = target
        return self.send_json(*update(gvr, namespace, name, self.body(), sub == "status"))

    def do_PATCH(self):
        if os.environ.get("FAKE_DEBUG"): sys.stderr.write(f"patch {self.path}\n")
        with STORE.lock:
            pattern, delays = STORE.patch_delays
            delay = delays.pop(0) if pattern and pattern in self.path and delays else 0
        if delay:
            time.sleep(delay)  # this thread only: other requests go on
        target = self.item()
        if not target:
            return
        gvr, namespace, name, sub, _ = target
        patch = self.body()
        apply = "apply-patch" in self.headers.get("Content-Type", "")
        kind, namespaced, _ = RESOURCES[gvr]
        with STORE.lock:
            current = STORE.objects.get((gvr, namespace if namespaced else None, name))
            if current is None:
                if apply:
                    patch.setdefault("metadata", {})["name"] = name
                    return self.send_json(*create(gvr, namespace, patch))
                return self.send_json(*status_error(404, "NotFound", f'{gvr[2]} "{name}" not found'))
            merged = merge_patch(current, patch)
            # A patch that names a resourceVersion is checked against it (optimistic concurrency).
            if not (patch.get("metadata") or {}).get("resourceVersion"):
                merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.send_json(*update(gvr, namespace, name, merged, sub == "status"))

    def do_DELETE(self):
        target = self.item()
        if not target:
            return
        gvr, namespace, name, _, query = target
        options = self.body() or {}
        policy = options.get("propagationPolicy") or query.get("propagationPolicy") or "Background"
        grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        return self.send_json(*delete(gvr, namespace, name, policy, None if grace is None else int(grace)))


POD_GVR = ("", "v1", "pods")
QUOTA_GVR = ("", "v1", "resourcequotas")
UNITS = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12, "m": 1e-3}


def quantity(text):
    """A resource quantity as a float of base units ("500m" -> 0.5, "1Gi" -> 1073741824)."""
    text = str(text).strip()
    for suffix in sorted(UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * UNITS[suffix]
    return float(text)


def pod_usage(pod):
    """What a pod counts against a quota, by resource name (requests.cpu is also plain cpu)."""
    usage = {"pods": 1.0, "count/pods": 1.0}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        requests = dict(resources.get("requests") or {})
        for name, value in (resources.get("limits") or {}).items():
            requests.setdefault(name, value)  # a limit alone is also the request, as the API server defaults it
            usage["limits." + name] = usage.get("limits." + name, 0.0) + quantity(value)
        for name, value in requests.items():
            usage["requests." + name] = usage.get("requests." + name, 0.0) + quantity(value)
            if name in ("cpu", "memory", "ephemeral-storage"):
                usage[name] = usage.get(name, 0.0) + quantity(value)
    return usage


def quota_counts(quota, pod):
    spec = quota.get("spec") or {}
    pod_spec = pod.get("spec") or {}
    resources = [c.get("resources") or {} for c in pod_spec.get("containers") or []]
    best_effort = not any(r.get("requests") or r.get("limits") for r in resources)
    terminating = pod_spec.get("activeDeadlineSeconds") is not None
    facts = {"Terminating": terminating, "NotTerminating": not terminating, "BestEffort": best_effort, "NotBestEffort": not best_effort}
    for scope in spec.get("scopes") or []:
        if not facts.get(scope, False):
            return False
    for expression in (spec.get("scopeSelector") or {}).get("matchExpressions") or []:
        name, operator, values = expression.get("scopeName"), expression.get("operator"), expression.get("values") or []
        if name == "PriorityClass":
            value = pod_spec.get("priorityClassName")
            holds = {"In": value in values, "NotIn": value not in values, "Exists": value is not None,
                     "DoesNotExist": value is None}.get(operator, False)
        else:
            holds = facts.get(name, False) if operator == "Exists" else not facts.get(name, False)
        if not holds:
            return False
    return True


def counted_pods(namespace, quota, exclude=None):
    for (gvr, ns, name), obj in STORE.objects.items():
        if gvr == POD_GVR and ns == namespace and name != exclude \
                and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and quota_counts(quota, obj):
            yield obj


def quota_refusal(namespace, pod):
    """The 403 the quota admission plugin answers for `pod`, or None when every quota admits it."""
    need = pod_usage(pod)
    for (gvr, ns, name), quota in sorted(STORE.objects.items()):
        if gvr != QUOTA_GVR or ns != namespace or not quota_counts(quota, pod):
            continue
        hard = {k: quantity(v) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items()}
        used = {}
        for other in counted_pods(namespace, quota, exclude=pod["metadata"]["name"]):
            for resource, amount in pod_usage(other).items():
                used[resource] = used.get(resource, 0.0) + amount
        over = sorted(r for r in hard if need.get(r, 0) > 0 and used.get(r, 0.0) + need[r] > hard[r] + 1e-9)
        if over:
            text = lambda values: ",".join(f"{r}={fmt(values.get(r, 0))}" for r in over)
            limited = ",".join(f"{r}={quota['spec']['hard'][r]}" for r in over)
            return status_error(403, "Forbidden", f'pods "{pod["metadata"]["name"]}" is forbidden: exceeded quota: {name}, '
                                f"requested: {text(need)}, used: {text(used)}, limited: {limited}")
    return None


def fmt(value):
    return str(int(value)) if float(value).is_integer() else f"{int(round(value * 1000))}m"


def refresh_quota_status(namespace):
    """The quota controller's job: status.hard mirrors spec.hard, status.used what counts now."""
    if STORE.quota_paused:
        return
    for key, quota in list(STORE.objects.items()):
        if key[0] != QUOTA_GVR or key[1] != namespace:
            continue
        hard = (quota.get("spec") or {}).get("hard") or {}
        used = {}
        for other in counted_pods(namespace, quota):
            for resource, amount in pod_usage(other).items():
                if resource in hard:
                    used[resource] = used.get(resource, 0.0) + amount
        status = {"hard": dict(hard), "used": {r: fmt(used.get(r, 0.0)) for r in hard}}
        if quota.get("status") != status:
            quota = copy.deepcopy(quota)
            quota["status"] = status
            quota["metadata"]["resourceVersion"] = STORE.next_rv()
            STORE.objects[key] = quota
            STORE.record(QUOTA_GVR, "MODIFIED", quota)


def create(gvr, namespace, obj):
    kind, namespaced, has_status = RESOURCES[gvr]
    meta = obj.setdefault("metadata", {})
    name = meta.get("name")
    if not name or not NAME.match(name) or len(name) > 253:
        return status_error(422, "Invalid", f'{kind} "{name}" is invalid: metadata.name: Invalid value')
    if namespaced:
        namespace = namespace or meta.get("namespace")
        if not namespace:
            return status_error(422, "Invalid", "metadata.namespace: Required value")
        meta["namespace"] = namespace
    key = (gvr, namespace if namespaced else None, name)
    invalid = schema_error(gvr, obj)
    if invalid:
        return invalid
    with STORE.lock:
        if key in STORE.objects:
            return status_error(409, "AlreadyExists", f'{gvr[2]} "{name}" already exists')
        if gvr == POD_GVR:
            refusal = priority_refusal(obj) or quota_refusal(namespace, obj)
            if refusal:
                return refusal
        obj["kind"] = kind
        obj["apiVersion"] = "/".join(filter(None, gvr[:2]))
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        meta["resourceVersion"] = STORE.next_rv()
        meta.pop("deletionTimestamp", None)
        if has_status and gvr[2] != "namespaces":
            obj.pop("status", None)
        STORE.objects[key] = obj
        STORE.record(gvr, "ADDED", obj)
        if gvr in (POD_GVR, QUOTA_GVR):
            refresh_quota_status(namespace)
        return 201, copy.deepcopy(obj)


def update(gvr, namespace, name, obj, status_only):
    kind, namespaced, has_status = RESOURCES[gvr]
    key = (gvr, namespace if namespaced else None, name)
    with STORE.lock:
        current = STORE.objects.get(key)
        if current is None:
            return status_error(404, "NotFound", f'{gvr[2]} "{name}" not found')
        sent_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            return status_error(409, "Conflict", f'Operation cannot be fulfilled on {gvr[2]} "{name}": '
                                "the object has been modified; please apply your changes to the latest version and try again")
        if status_only:
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(obj.get("status"))
        else:
            new = copy.deepcopy(obj)
            new["kind"], new["apiVersion"] = current["kind"], current["apiVersion"]
            for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "deletionGracePeriodSeconds",
                          "generation"):
                if field in current["metadata"]:
                    new["metadata"][field] = current["metadata"][field]
                else:
                    new["metadata"].pop(field, None)
            if has_status:
                new["status"] = copy.deepcopy(current.get("status"))
                if new.get("status") is None:
                    new.pop("status", None)
            if new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        if new == current:
            return 200, copy.deepcopy(current)  # no-op writes do not bump resourceVersion
        invalid = None if status_only else schema_error(gvr, new)
        if invalid:
            return invalid
        new["metadata"]["resourceVersion"] = STORE.next_rv()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers") and kubelet_done(gvr, new):
            return 200, remove(key, new)
        STORE.objects[key] = new
        STORE.record(gvr, "MODIFIED", new)
        if gvr == POD_GVR or (gvr == QUOTA_GVR and not status_only):
            refresh_quota_status(namespace)
        return 200, copy.deepcopy(STORE.objects.get(key, new))


def collect_foreground_owners():
    """An owner deleted in the foreground goes once its last dependent has gone."""
    for key, owner in list(STORE.objects.items()):
        finalizers = owner["metadata"].get("finalizers") or []
        if "foregroundDeletion" not in finalizers:
            continue
        uid = owner["metadata"]["uid"]
        if any(any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences") or []) for o in STORE.objects.values()):
            continue
        remaining = [f for f in finalizers if f != "foregroundDeletion"]
        updated = copy.deepcopy(owner)
        updated["metadata"]["finalizers"] = remaining
        if remaining:
            updated["metadata"]["resourceVersion"] = STORE.next_rv()
            STORE.objects[key] = updated
            STORE.record(key[0], "MODIFIED", updated)
        else:
            remove(key, updated)


def dependents_of(uid):
    return [k for k, o in STORE.objects.items()
            if any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences") or [])]


def remove(key, obj):
    """Removes an object for good, then lets the garbage collector take its dependents
    (background cascade) and finish owners waiting in the foreground."""
    del STORE.objects[key]
    STORE.grace_deadlines.pop(obj["metadata"].get("uid"), None)
    gone = copy.deepcopy(obj)
    gone["metadata"]["resourceVersion"] = STORE.next_rv()
    STORE.record(key[0], "DELETED", gone)
    if key[0] == POD_GVR:
        refresh_quota_status(key[1])
    for dependent in dependents_of(obj["metadata"]["uid"]):
        if dependent in STORE.objects:
            dgvr, dns, dname = dependent
            delete(dgvr, dns, dname, "Background")
    collect_foreground_owners()
    return gone


PRIORITY_GVR = ("scheduling.k8s.io", "v1", "priorityclasses")


def priority_refusal(pod):
    """Priority admission: the class must exist; its value becomes spec.priority."""
    spec = pod.setdefault("spec", {})
    name = spec.get("priorityClassName")
    if not name:
        defaults = [o for (g, _, _), o in STORE.objects.items() if g == PRIORITY_GVR and o.get("globalDefault")]
        spec["priority"] = defaults[0].get("value", 0) if defaults else 0
        return None
    found = STORE.objects.get((PRIORITY_GVR, None, name))
    if found is None:
        return status_error(403, "Forbidden", f'pods "{pod["metadata"]["name"]}" is forbidden: no PriorityClass with name {name} was found')
    if spec.get("priority") not in (None, found.get("value", 0)):
        return status_error(403, "Forbidden", f'pods "{pod["metadata"]["name"]}" is forbidden: the integer value of priority '
                            f'({spec["priority"]}) must not be provided in pod spec; priority admission controller computed '
                            f'{found.get("value", 0)} from the given PriorityClass name')
    spec["priority"] = found.get("value", 0)
    return None


def kubelet_done(gvr, obj):
    """Whether a deleting object may go: a pod in graceful deletion only once its kubelet is
    done (terminal phase, grace 0, or the grace run out); anything else at once."""
    meta = obj["metadata"]
    if gvr != POD_GVR or not meta.get("deletionGracePeriodSeconds"):
        return True
    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return time.time() >= STORE.grace_deadlines.get(meta["uid"], 0)


def end_grace(key, uid):
    """The kubelet, at the end of a pod's grace period: it goes."""
    with STORE.lock:
        current = STORE.objects.get(key)
        if current is not None and current["metadata"]["uid"] == uid and not current["metadata"].get("finalizers"):
            remove(key, current)


def evict(namespace, name, eviction):
    """The eviction subresource: 429 when a PodDisruptionBudget would be violated, else the
    DisruptionTarget condition and a graceful delete, as the real API server does."""
    key = (POD_GVR, namespace, name)
    with STORE.lock:
        pod = STORE.objects.get(key)
        if pod is None:
            return status_error(404, "NotFound", f'pods "{name}" not found')
        labels = pod["metadata"].get("labels") or {}
        for (gvr, ns, pdb_name), pdb in STORE.objects.items():
            if gvr != ("policy", "v1", "poddisruptionbudgets") or ns != namespace:
                continue
            wanted = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
                continue
            matching = [o for (g, n, _), o in STORE.objects.items() if g == POD_GVR and n == namespace
                        and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
                        and not o["metadata"].get("deletionTimestamp")]
            healthy = [o for o in matching if (o.get("status") or {}).get("phase") == "Running"]
            spec = pdb.get("spec") or {}
            allowed = len(healthy) - int(spec["minAvailable"]) if "minAvailable" in spec \
                else int(spec.get("maxUnavailable", 0)) - (len(matching) - len(healthy))
            if allowed < 1:
                return status_error(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.")
        status = copy.deepcopy(pod.get("status") or {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "DisruptionTarget"]
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                           "message": "Eviction API: evicting", "lastTransitionTime": now()})
        status["conditions"] = conditions
        updated = copy.deepcopy(pod)
        updated["status"] = status
        updated["metadata"]["resourceVersion"] = STORE.next_rv()
        STORE.objects[key] = updated
        STORE.record(POD_GVR, "MODIFIED", updated)
        grace = (eviction.get("deleteOptions") or {}).get("gracePeriodSeconds")
        code, body = delete(POD_GVR, namespace, name, "Background", grace)
        if code != 200:
            return code, body
    return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


def delete(gvr, namespace, name, policy, grace=None):
    """Foreground: dependents go first, the owner waits with the foregroundDeletion finalizer.
    Background: the owner goes (once its own finalizers are gone), then its dependents.
    A pod bound to a node is deleted gracefully (see the module's docstring)."""
    kind, namespaced, _ = RESOURCES[gvr]
    key = (gvr, namespace if namespaced else None, name)
    with STORE.lock:
        current = STORE.objects.get(key)
        if current is None:
            return status_error(404, "NotFound", f'{gvr[2]} "{name}" not found')
        if gvr == POD_GVR and (current.get("spec") or {}).get("nodeName") \
                and (current.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            if grace is None:
                grace = (current.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            meta = current["metadata"]
            if grace > 0 and (not meta.get("deletionTimestamp") or grace < meta.get("deletionGracePeriodSeconds", 0)):
                current = copy.deepcopy(current)
                current["metadata"]["deletionTimestamp"] = current["metadata"].get("deletionTimestamp") or now()
                current["metadata"]["deletionGracePeriodSeconds"] = grace
                STORE.grace_deadlines[current["metadata"]["uid"]] = time.time() + grace
                current["metadata"]["resourceVersion"] = STORE.next_rv()
                STORE.objects[key] = current
                STORE.record(gvr, "MODIFIED", current)
                timer = threading.Timer(grace, end_grace, (key, current["metadata"]["uid"]))
                timer.daemon = True
                timer.start()
                return 200, copy.deepcopy(current)
            if grace > 0:
                return 200, copy.deepcopy(current)  # already deleting, within a shorter grace
        finalizers = list(current["metadata"].get("finalizers") or [])
        if policy == "Foreground":
            for dependent in dependents_of(current["metadata"]["uid"]):
                if dependent in STORE.objects:
                    dgvr, dns, dname = dependent
                    delete(dgvr, dns, dname, "Foreground")
            current = STORE.objects.get(key)
            if current is None:
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
            if dependents_of(current["metadata"]["uid"]) and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
        if finalizers:
            if not current["metadata"].get("deletionTimestamp") or finalizers != current["metadata"].get("finalizers"):
                current = copy.deepcopy(current)
                current["metadata"].setdefault("deletionTimestamp", now())
                current["metadata"]["finalizers"] = finalizers
                current["metadata"]["resourceVersion"] = STORE.next_rv()
                STORE.objects[key] = current
                STORE.record(gvr, "MODIFIED", current)
            return 200, copy.deepcopy(current)
        return 200, remove(key, current)


class Server(ThreadingHTTPServer):
    # listen()'s backlog, fixed when the server is made: at the default 5, a burst of new
    # connections overflows it and each dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 256
    daemon_threads = True


def main():
    if "--token" in sys.argv:
        TOKEN["value"] = sys.argv[sys.argv.index("--token") + 1]
    server = Server(("127.0.0.1", 0), Handler)
    if "--tls" in sys.argv:
        # --tls CERT KEY [--client-ca CA]: HTTPS, and with a client CA every connection must
        # present a certificate it signed (kubeconfig client-certificate users).
        import ssl
        at = sys.argv.index("--tls")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[at + 1], sys.argv[at + 2])
        if "--client-ca" in sys.argv:
            context.load_verify_locations(sys.argv[sys.argv.index("--client-ca") + 1])
            context.verify_mode = ssl.CERT_REQUIRED
        server.socket = context.wrap_socket(server.socket, server_side=True)
    for name, value in (("system-cluster-critical", 2000000000), ("system-node-critical", 2000001000)):
        create(PRIORITY_GVR, None, {"metadata": {"name": name}, "value": value, "description": "built in"})
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
