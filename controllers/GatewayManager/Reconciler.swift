import EgressProxyCore
import Foundation
import KubeKit
import OutboundPool

/// One level-triggered reconcile of one ActionsGateway, in kubebuilder's order: observe (the CR,
/// its namespace, its children), compute (validation and `DesiredState`, a pure function),
/// apply (create what is missing, merge-patch what drifted, nothing else), then recompute the
/// status from what was observed and write it only if it changed. A second reconcile of an
/// unchanged gateway therefore makes zero writes.
public final class GatewayReconciler: Sendable {
    public static let finalizer = "actions-gateway.github.com/cleanup"

    /// What one reconcile did; `writes` is what the zero-writes tests count.
    public struct Outcome: Sendable, Equatable {
        /// API writes this reconcile made (creates, patches, deletes).
        public var writes = 0
        public var problems: [GatewayProblem] = []
        public var gone = false
    }

    private let client: KubeClient
    /// Where observations come from (the controller passes its informers' caches); writes
    /// always go to `client`.
    private let reader: ClusterReader
    private let allowedPriorityClasses: Set<String>
    private let allowedExtraHosts: [HostPattern]
    private let images: GatewayImages
    /// Wall time for condition and event timestamps.
    private let clock: any ControllerClock

    public init(
        client: KubeClient, reader: ClusterReader? = nil, allowedPriorityClasses: Set<String>,
        allowedExtraHosts: [HostPattern] = [], images: GatewayImages = GatewayImages(),
        clock: any ControllerClock = SystemControllerClock()
    ) {
        self.clock = clock
        self.client = client
        self.reader = reader ?? LiveReader(client: client)
        self.allowedPriorityClasses = allowedPriorityClasses
        self.allowedExtraHosts = allowedExtraHosts
        self.images = images
    }

    public func reconcile(namespace: String, name: String) async throws -> Outcome {
        var outcome = Outcome()
        let path = KubeResource.actionsGateways.path(namespace: namespace, name: name)
        guard let current = try await reader.object(.actionsGateways, namespace: namespace, name: name) else {
            outcome.gone = true
            return outcome
        }
        let metadata = current["metadata"] as? JSONObject ?? [:]
        var finalizers = (metadata["finalizers"] as? [any Sendable])?.compactMap { $0 as? String } ?? []
        if metadata["deletionTimestamp"] is String {
            outcome.writes += try await cleanUp(namespace: namespace, name: name)
            if finalizers.contains(Self.finalizer) {
                finalizers.removeAll { $0 == Self.finalizer }
                _ = try await client.mergePatch(path, ["metadata": ["finalizers": finalizers] as JSONObject])
                outcome.writes += 1
            }
            outcome.gone = true
            return outcome
        }
        if !finalizers.contains(Self.finalizer) {
            _ = try await client.mergePatch(path, ["metadata": ["finalizers": finalizers + [Self.finalizer]] as JSONObject])
            outcome.writes += 1
        }

        let decoded = ActionsGateway.decode(json: try KubeClient.encode(current))
        let namespaceObject = try await reader.object(.namespaces, namespace: nil, name: namespace)
        let labels = ((namespaceObject?["metadata"] as? JSONObject)?["labels"] as? JSONObject)?
            .compactMapValues { $0 as? String } ?? [:]
        let environment = GatewayEnvironment(
            allowedPriorityClasses: allowedPriorityClasses, allowedExtraHosts: allowedExtraHosts, namespaceLabels: labels)
        var conditions: [Condition]
        var proxyReady: Int64 = 0
        switch decoded.flatMap({ $0.validated(in: environment) }) {
        case .failure(let rejection):
            outcome.problems = rejection.problems
            let message = rejection.problems.map(\.description).joined(separator: "; ")
            conditions = [
                Condition(type: "Ready", status: "False", reason: "InvalidSpec", message: message),
                Condition(type: "Degraded", status: "True", reason: "InvalidSpec", message: message),
            ]
        case .success(let defaulted):
            let uid = metadata["uid"] as? String
            for object in DesiredState.objects(for: defaulted, uid: uid, images: images) {
                outcome.writes += try await ensure(object)
            }
            let secret = try await reader.object(.secrets, namespace: namespace, name: defaulted.gitHubAppSecret)
            let proxy = try await reader.object(.deployments, namespace: namespace, name: "\(name)-proxy")
            let agc = try await reader.object(.deployments, namespace: namespace, name: "\(name)-agc")
            proxyReady = (proxy?["status"] as? JSONObject)?["readyReplicas"] as? Int64 ?? 0
            let agcAvailable = ((agc?["status"] as? JSONObject)?["availableReplicas"] as? Int64 ?? 0) >= 1
            let proxyAvailable = proxyReady >= Int64(defaulted.minReplicas)
            conditions = [
                Condition(type: "Ready", status: proxyAvailable && agcAvailable ? "True" : "False",
                          reason: proxyAvailable && agcAvailable ? "Available" : "Progressing", message: ""),
                Condition(type: "ProxyAvailable", status: proxyAvailable ? "True" : "False",
                          reason: proxyAvailable ? "MinimumReplicasReady" : "WaitingForReplicas",
                          message: "\(proxyReady)/\(defaulted.minReplicas) proxy replicas ready"),
                Condition(type: "AGCAvailable", status: agcAvailable ? "True" : "False",
                          reason: agcAvailable ? "Available" : "WaitingForReplicas", message: ""),
                Condition(type: "CredentialsAvailable", status: secret == nil ? "False" : "True",
                          reason: secret == nil ? "SecretNotFound" : "Found",
                          message: secret == nil ? "Secret \(defaulted.gitHubAppSecret) not found" : ""),
                Condition(type: "Degraded", status: "False", reason: "AsExpected", message: ""),
            ]
        }
        let statusWrites = try await writeStatus(path: path, current: current, conditions: conditions, proxyReady: proxyReady,
                                                 generation: metadata["generation"] as? Int64 ?? 0)
        outcome.writes += statusWrites
        // An Event when a gateway is refused, once per change of the problem (not per reconcile).
        if !outcome.problems.isEmpty && statusWrites > 0 {
            try await recordEvent(namespace: namespace, gateway: name, uid: metadata["uid"] as? String ?? "", reason: "InvalidSpec",
                                  message: outcome.problems.map(\.description).joined(separator: "; "))
            outcome.writes += 1
        }
        return outcome
    }

    private func recordEvent(namespace: String, gateway: String, uid: String, reason: String, message: String) async throws {
        let stamp = ISO8601DateFormatter().string(from: clock.wallNow())
        _ = try await client.create("/api/v1/namespaces/\(namespace)/events", [
            "metadata": ["name": "\(gateway).\(UUID().uuidString.prefix(8).lowercased())", "namespace": namespace] as JSONObject,
            "involvedObject": ["apiVersion": "\(DesiredState.group)/v1alpha1", "kind": "ActionsGateway", "name": gateway,
                               "namespace": namespace, "uid": uid] as JSONObject,
            "reason": reason, "message": message, "type": "Warning",
            "source": ["component": "gmc"] as JSONObject, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": Int64(1),
        ])
    }

    /// Creates the object if missing, merge-patches it if any field we own drifted; 0 or 1 write.
    private func ensure(_ object: KubeObject) async throws -> Int {
        let desired = try KubeClient.json(object)
        let meta = object.metadata
        let path = object.resource.path(namespace: meta.namespace, name: meta.name)
        guard let current = try await reader.object(object.resource, namespace: meta.namespace, name: meta.name ?? "") else {
            if case .namespace = object { throw OutboundError(kind: .http(404), detail: "namespace \(meta.name ?? "") not found") }
            _ = try await client.create(object.resource.path(namespace: meta.namespace), desired)
            return 1
        }
        if jsonContains(current, desired) { return 0 }
        _ = try await client.mergePatch(path, desired)
        return 1
    }

    /// Deletion: worker pods first, then every child (ownerReferences would cascade too, but
    /// the GMC does not leave that to chance), then the caller drops the finalizer.
    private func cleanUp(namespace: String, name: String) async throws -> Int {
        var writes = 0
        let pods = try await client.list(KubeResource.pods.path(namespace: namespace),
                                         labelSelector: "\(DesiredState.gatewayLabel)=\(name)")
        for pod in pods {
            guard let podName = (pod["metadata"] as? JSONObject)?["name"] as? String else { continue }
            try await client.delete(KubeResource.pods.path(namespace: namespace, name: podName))
            writes += 1
        }
        let children: [(KubeResource, String)] = [
            (.deployments, "agc"), (.horizontalPodAutoscalers, "proxy"), (.podDisruptionBudgets, "proxy"), (.services, "proxy"),
            (.deployments, "proxy"), (.configMaps, "proxy"), (.networkPolicies, "proxy"), (.networkPolicies, "worker-egress"),
            (.networkPolicies, "agc-egress"), (.roleBindings, "agc"), (.roles, "agc"), (.serviceAccounts, "worker"),
            (.serviceAccounts, "agc"),
        ]
        for (resource, suffix) in children {
            let path = resource.path(namespace: namespace, name: "\(name)-\(suffix)")
            if try await client.get(path) != nil {
                try await client.delete(path)
                writes += 1
            }
        }
        return writes
    }

    /// A status condition before timestamps (lastTransitionTime is kept while the status holds).
    struct Condition: Equatable {
        var type: String
        var status: String
        var reason: String
        var message: String
    }

    /// Writes status through the status subresource only when it differs; a condition keeps its
    /// lastTransitionTime while its status stays the same.
    private func writeStatus(path: String, current: JSONObject, conditions: [Condition], proxyReady: Int64, generation: Int64)
        async throws -> Int
    {
        let existing = ((current["status"] as? JSONObject)?["conditions"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        let now = ISO8601DateFormatter().string(from: clock.wallNow())
        let rendered: [any Sendable] = conditions.map { condition -> JSONObject in
            let previous = existing.first { $0["type"] as? String == condition.type }
            let since = previous?["status"] as? String == condition.status ? (previous?["lastTransitionTime"] as? String ?? now) : now
            return ["type": condition.type, "status": condition.status, "reason": condition.reason, "message": condition.message,
                    "observedGeneration": generation, "lastTransitionTime": since]
        }
        let status: JSONObject = ["observedGeneration": generation, "proxyReadyReplicas": proxyReady, "conditions": rendered]
        if jsonContains(current["status"], status) { return 0 }
        _ = try await client.mergePatch(path + "/status", ["status": status])
        return 1
    }
}
