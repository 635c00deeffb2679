import EgressProxyCore
import Foundation
import KubeKit
import OutboundPool

/// What one reconcile of one gateway saw: the gateway and everything its plan depends on,
/// read from the informers' caches in the controller.
public struct GatewayObservation: Sendable {
    public var gateway: JSONObject
    /// The gateway's namespace (its labels pick the Pod Security profile); nil = missing.
    public var namespace: JSONObject?
    /// Each declared child (`DesiredState.children`) that exists, by resource and name.
    public var children: [ChildKey: JSONObject]
    /// Whether the Secret the spec names exists (the GMC never reads its data).
    public var secretExists: Bool

    /// One child object's identity within the gateway's namespace.
    public struct ChildKey: Hashable, Sendable {
        public var resource: KubeResource
        public var name: String

        public init(_ resource: KubeResource, _ name: String) {
            self.resource = resource
            self.name = name
        }
    }

    public init(gateway: JSONObject, namespace: JSONObject?, children: [ChildKey: JSONObject] = [:], secretExists: Bool = false) {
        self.gateway = gateway
        self.namespace = namespace
        self.children = children
        self.secretExists = secretExists
    }
}

/// One write a plan asks for, applied in order.
public enum GatewayWrite: Sendable {
    case addFinalizer(path: String, finalizers: [String])
    case removeFinalizer(path: String, finalizers: [String])
    case create(collection: String, object: JSONObject, what: String)
    case patch(path: String, patch: JSONObject, what: String)
    /// With the resourceVersion the plan read, so a concurrent status write (the AGC's) makes
    /// this one fail with 409 and the reconcile retry on fresh data, instead of erasing it.
    case patchStatus(path: String, status: JSONObject, resourceVersion: String?)
    case delete(path: String)
    /// List the gateway's worker pods (live: no informer watches pods) and delete each.
    case deleteWorkerPods(namespace: String, gateway: String)
    case event(collection: String, event: JSONObject)

    /// A short stable form for tests and logs: "create configmaps g-proxy", "status", ...
    public var summary: String {
        switch self {
        case .addFinalizer: return "add finalizer"
        case .removeFinalizer: return "remove finalizer"
        case .create(_, _, let what): return "create \(what)"
        case .patch(_, _, let what): return "patch \(what)"
        case .patchStatus: return "status"
        case .delete(let path): return "delete \(path)"
        case .deleteWorkerPods: return "delete worker pods"
        case .event: return "event"
        }
    }
}

/// What a reconcile will do: a pure function of the observation and the GMC's flags.
public struct GatewayPlan: Sendable {
    public var writes: [GatewayWrite] = []
    public var problems: [GatewayProblem] = []
    /// The gateway is being deleted (or is gone): nothing more to do once the writes are applied.
    public var gone = false
    /// Why nothing can be done yet (retried with backoff), e.g. the namespace is not in the cache.
    public var blocked: String?
    /// The status the plan wants (nil while blocked or deleting), for callers that show it.
    public var status: JSONObject?

    public var summaries: [String] { writes.map(\.summary) }
}

/// One level-triggered reconcile of one ActionsGateway, in three steps: observe (the caches:
/// the CR, its namespace, its declared children, its Secret's existence), plan (validation,
/// `DesiredState`, status: a pure function, `GatewayReconciler.plan`, tested without a
/// server), apply (the writes, in order). A reconcile of an unchanged gateway plans no write.
public final class GatewayReconciler: Sendable {
    public static let finalizer = "actions-gateway.github.com/cleanup"

    /// What one reconcile did; `writes` is what the zero-writes tests count.
    public struct Outcome: Sendable, Equatable {
        /// API writes this reconcile made (creates, patches, deletes).
        public var writes = 0
        public var problems: [GatewayProblem] = []
        public var gone = false
    }

    /// The GMC's flags a plan depends on.
    public struct Inputs: Sendable {
        public var allowedPriorityClasses: Set<String>
        public var allowedExtraHosts: [HostPattern]
        public var images: GatewayImages
        public var allowedAWSAccounts: Set<String>

        public init(allowedPriorityClasses: Set<String>, allowedExtraHosts: [HostPattern] = [], images: GatewayImages = GatewayImages(),
                    allowedAWSAccounts: Set<String> = []) {
            self.allowedPriorityClasses = allowedPriorityClasses
            self.allowedExtraHosts = allowedExtraHosts
            self.images = images
            self.allowedAWSAccounts = allowedAWSAccounts
        }
    }

    private let client: KubeClient
    /// Where observations come from (the controller passes its informers' caches); writes
    /// always go to `client`.
    private let reader: ClusterReader
    private let inputs: Inputs
    /// Wall time for condition and event timestamps.
    private let clock: any ControllerClock

    public init(
        client: KubeClient, reader: ClusterReader? = nil, allowedPriorityClasses: Set<String>,
        allowedExtraHosts: [HostPattern] = [], images: GatewayImages = GatewayImages(), allowedAWSAccounts: Set<String> = [],
        clock: any ControllerClock = SystemControllerClock()
    ) {
        self.client = client
        self.reader = reader ?? LiveReader(client: client)
        inputs = Inputs(allowedPriorityClasses: allowedPriorityClasses, allowedExtraHosts: allowedExtraHosts, images: images,
                        allowedAWSAccounts: allowedAWSAccounts)
        self.clock = clock
    }

    public func reconcile(namespace: String, name: String) async throws -> Outcome {
        guard let observation = try await observe(namespace: namespace, name: name) else { return Outcome(gone: true) }
        let plan = Self.plan(observation, inputs: inputs, now: clock.wallNow(), eventSuffix: UUID().uuidString.prefix(8).lowercased())
        if let blocked = plan.blocked { throw OutboundError(kind: .http(404), detail: blocked) }
        var outcome = Outcome(problems: plan.problems, gone: plan.gone)
        // Our own finalizer patch moves the gateway's resourceVersion past the one the plan
        // read; the status write that follows is conditional on the version we just made.
        var gatewayVersion: String?
        for var write in plan.writes {
            if case .patchStatus(let path, let status, let read) = write, let gatewayVersion {
                write = .patchStatus(path: path, status: status, resourceVersion: read == nil ? nil : gatewayVersion)
            }
            let (count, version) = try await apply(write)
            outcome.writes += count
            if let version { gatewayVersion = version }
        }
        return outcome
    }

    // MARK: observe

    /// Reads what the plan needs; nil when the gateway does not exist.
    func observe(namespace: String, name: String) async throws -> GatewayObservation? {
        guard let gateway = try await reader.object(.actionsGateways, namespace: namespace, name: name) else { return nil }
        var observation = GatewayObservation(gateway: gateway, namespace: try await reader.object(.namespaces, namespace: nil, name: namespace))
        for child in DesiredState.children {
            let key = GatewayObservation.ChildKey(child.resource, "\(name)-\(child.suffix)")
            observation.children[key] = try await reader.object(child.resource, namespace: namespace, name: key.name)
        }
        let spec = gateway["spec"] as? JSONObject
        if let secret = (spec?["gitHubAppRef"] as? JSONObject)?["name"] as? String, !secret.isEmpty {
            observation.secretExists = try await reader.object(.secrets, namespace: namespace, name: secret) != nil
        }
        return observation
    }

    // MARK: plan

    /// The writes that bring the cluster to what the gateway asks for, and the status. Pure:
    /// the same observation, inputs and time give the same plan.
    public static func plan(_ observed: GatewayObservation, inputs: Inputs, now: Date, eventSuffix: some StringProtocol) -> GatewayPlan {
        var plan = GatewayPlan()
        let current = observed.gateway
        let metadata = current["metadata"] as? JSONObject ?? [:]
        let name = metadata["name"] as? String ?? ""
        let namespace = metadata["namespace"] as? String ?? ""
        let path = KubeResource.actionsGateways.path(namespace: namespace, name: name)
        let finalizers = (metadata["finalizers"] as? [any Sendable])?.compactMap { $0 as? String } ?? []

        if metadata["deletionTimestamp"] is String {
            // Worker pods first, then every declared child that exists (ownerReferences would
            // cascade too, but the GMC does not leave that to chance), then the finalizer.
            plan.gone = true
            guard finalizers.contains(finalizer) else { return plan }
            plan.writes.append(.deleteWorkerPods(namespace: namespace, gateway: name))
            for child in DesiredState.children {
                let key = GatewayObservation.ChildKey(child.resource, "\(name)-\(child.suffix)")
                if observed.children[key] != nil {
                    plan.writes.append(.delete(path: child.resource.path(namespace: namespace, name: key.name)))
                }
            }
            plan.writes.append(.removeFinalizer(path: path, finalizers: finalizers.filter { $0 != finalizer }))
            return plan
        }
        guard let namespaceObject = observed.namespace else {
            plan.blocked = "namespace \(namespace) not found"
            return plan
        }
        if !finalizers.contains(finalizer) { plan.writes.append(.addFinalizer(path: path, finalizers: finalizers + [finalizer])) }

        let labels = ((namespaceObject["metadata"] as? JSONObject)?["labels"] as? JSONObject)?.compactMapValues { $0 as? String } ?? [:]
        var environment = GatewayEnvironment(
            allowedPriorityClasses: inputs.allowedPriorityClasses, allowedExtraHosts: inputs.allowedExtraHosts, namespaceLabels: labels,
            nodePools: inputs.images.nodePools)
        environment.allowedAWSAccounts = inputs.allowedAWSAccounts
        let decoded: Result<ActionsGateway, GatewayRejection>
        do {
            decoded = ActionsGateway.decode(json: try KubeClient.encode(current))
        } catch {
            decoded = .failure(GatewayRejection(problems: [GatewayProblem(field: "(object)", message: "cannot be encoded: \(error)")]))
        }
        var conditions: [Condition]
        var proxyReady: Int64 = 0
        switch decoded.flatMap({ $0.validated(in: environment) }) {
        case .failure(let rejection):
            plan.problems = rejection.problems
            let message = rejection.problems.map(\.description).joined(separator: "; ")
            conditions = [
                Condition(type: "Ready", status: "False", reason: "InvalidSpec", message: message),
                Condition(type: "Degraded", status: "True", reason: "InvalidSpec", message: message),
            ]
        case .success(let defaulted):
            for object in DesiredState.objects(for: defaulted, uid: metadata["uid"] as? String, images: inputs.images) {
                if let write = ensure(object, observed: observed, namespaceObject: namespaceObject) { plan.writes.append(write) }
            }
            let proxy = observed.children[.init(.deployments, "\(name)-proxy")]
            let agc = observed.children[.init(.deployments, "\(name)-agc")]
            proxyReady = (proxy?["status"] as? JSONObject)?["readyReplicas"] as? Int64 ?? 0
            let agcAvailable = ((agc?["status"] as? JSONObject)?["availableReplicas"] as? Int64 ?? 0) >= 1
            let proxyAvailable = proxyReady >= Int64(defaulted.minReplicas)
            let secret = observed.secretExists
            conditions = [
                Condition(type: "Ready", status: proxyAvailable && agcAvailable ? "True" : "False",
                          reason: proxyAvailable && agcAvailable ? "Available" : "Progressing", message: ""),
                Condition(type: "ProxyAvailable", status: proxyAvailable ? "True" : "False",
                          reason: proxyAvailable ? "MinimumReplicasReady" : "WaitingForReplicas",
                          message: "\(proxyReady)/\(defaulted.minReplicas) proxy replicas ready"),
                Condition(type: "AGCAvailable", status: agcAvailable ? "True" : "False",
                          reason: agcAvailable ? "Available" : "WaitingForReplicas", message: ""),
                Condition(type: "CredentialsAvailable", status: secret ? "True" : "False",
                          reason: secret ? "Found" : "SecretNotFound",
                          message: secret ? "" : "Secret \(defaulted.gitHubAppSecret) not found"),
                Condition(type: "Degraded", status: "False", reason: "AsExpected", message: ""),
            ]
        }
        let status = Self.status(current: current, conditions: conditions, proxyReady: proxyReady,
                                 generation: metadata["generation"] as? Int64 ?? 0, now: now)
        plan.status = status
        if !jsonContains(current["status"], status) {
            plan.writes.append(.patchStatus(path: path + "/status", status: status,
                                            resourceVersion: metadata["resourceVersion"] as? String))
            // An Event when a gateway is refused, once per change of the problem (not per reconcile).
            if !plan.problems.isEmpty {
                plan.writes.append(.event(
                    collection: Event.resource.path(namespace: namespace),
                    event: Self.event(namespace: namespace, gateway: name, uid: metadata["uid"] as? String ?? "", reason: "InvalidSpec",
                                      message: plan.problems.map(\.description).joined(separator: "; "), now: now, suffix: eventSuffix)))
            }
        }
        return plan
    }

    /// Create when missing, merge-patch when a field we own drifted, nothing otherwise. The
    /// namespace is never created (a gateway lives in it), only labelled.
    static func ensure(_ object: KubeObject, observed: GatewayObservation, namespaceObject: JSONObject) -> GatewayWrite? {
        guard let desired = try? KubeClient.json(object) else { return nil }
        let meta = object.metadata
        let objectName = meta.name ?? ""
        let what = "\(object.resource.plural) \(objectName)"
        let current: JSONObject?
        if case .namespace = object {
            current = namespaceObject
        } else {
            current = observed.children[.init(object.resource, objectName)]
        }
        guard let current else { return .create(collection: object.resource.path(namespace: meta.namespace), object: desired, what: what) }
        if jsonContains(current, desired) { return nil }
        return .patch(path: object.resource.path(namespace: meta.namespace, name: objectName), patch: desired, what: what)
    }

    static func event(namespace: String, gateway: String, uid: String, reason: String, message: String, now: Date,
                      suffix: some StringProtocol) -> JSONObject {
        let event = Event.about(.init(apiVersion: "\(DesiredState.group)/v1alpha1", kind: "ActionsGateway", name: gateway,
                                      namespace: namespace, uid: uid),
                                name: "\(gateway).\(suffix)", reason: reason, message: message, component: "gmc", now: now)
        return (try? KubeClient.json(event)) ?? [:]
    }

    /// A status condition before timestamps (lastTransitionTime is kept while the status holds).
    struct Condition: Equatable {
        var type: String
        var status: String
        var reason: String
        var message: String
    }

    /// The condition types the GMC writes. The AGC writes others (RateLimited, WorkerQuotaExceeded,
    /// ...) into the same list; each writer replaces only its own and keeps the other's.
    public static let ownedConditions: Set<String> = ["Ready", "ProxyAvailable", "AGCAvailable", "CredentialsAvailable", "Degraded"]

    /// The status to hold: our conditions (each keeps its lastTransitionTime while its status
    /// stays the same), then every condition another writer owns, untouched and in its order.
    /// A merge patch replaces the list whole, so it always carries both.
    static func status(current: JSONObject, conditions: [Condition], proxyReady: Int64, generation: Int64, now: Date) -> JSONObject {
        let existing = ((current["status"] as? JSONObject)?["conditions"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        let stamp = ISO8601DateFormatter().string(from: now)
        var rendered: [any Sendable] = conditions.map { condition -> JSONObject in
            let previous = existing.first { $0["type"] as? String == condition.type }
            let since = previous?["status"] as? String == condition.status ? (previous?["lastTransitionTime"] as? String ?? stamp) : stamp
            return ["type": condition.type, "status": condition.status, "reason": condition.reason, "message": condition.message,
                    "observedGeneration": generation, "lastTransitionTime": since]
        }
        rendered += existing.filter { !ownedConditions.contains($0["type"] as? String ?? "") } as [any Sendable]
        return ["observedGeneration": generation, "proxyReadyReplicas": proxyReady, "conditions": rendered]
    }

    // MARK: apply

    /// Performs one write; returns how many API writes it made, and the gateway's new
    /// resourceVersion when the write was to the gateway's metadata.
    func apply(_ write: GatewayWrite) async throws -> (writes: Int, gatewayVersion: String?) {
        switch write {
        case .addFinalizer(let path, let finalizers), .removeFinalizer(let path, let finalizers):
            let written = try await client.mergePatch(path, ["metadata": ["finalizers": finalizers] as JSONObject])
            return (1, (written["metadata"] as? JSONObject)?["resourceVersion"] as? String)
        case .create(let collection, let object, _):
            _ = try await client.create(collection, object)
            return (1, nil)
        case .patch(let path, let patch, _):
            _ = try await client.mergePatch(path, patch)
            return (1, nil)
        case .patchStatus(let path, let status, let resourceVersion):
            var patch: JSONObject = ["status": status]
            if let resourceVersion { patch["metadata"] = ["resourceVersion": resourceVersion] as JSONObject }
            _ = try await client.mergePatch(path, patch)
            return (1, nil)
        case .delete(let path):
            try await client.delete(path)
            return (1, nil)
        case .deleteWorkerPods(let namespace, let gateway):
            var writes = 0
            let pods = try await client.list(KubeResource.pods.path(namespace: namespace), labelSelector: "\(DesiredState.gatewayLabel)=\(gateway)")
            for pod in pods {
                guard let podName = (pod["metadata"] as? JSONObject)?["name"] as? String else { continue }
                try await client.delete(KubeResource.pods.path(namespace: namespace, name: podName))
                writes += 1
            }
            return (writes, nil)
        case .event(let collection, let event):
            _ = try await client.create(collection, event)
            return (1, nil)
        }
    }
}
