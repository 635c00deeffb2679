import Foundation
import GatewayOps
import KubeKit
import Logging
import OutboundPool
import Synchronization
import Vocabulary

/// The GMC's metrics: the runtime's (`gmc_reconcile_*`, `gmc_cache_synced`) and its own
/// (`gmc_gateways`, `gmc_gateways_degraded`, `gmc_leader`), shared between workers and the admin endpoint.
public final class ControllerMetrics: Sendable {
    /// The leader flag and each gateway's last Ready status and Degraded flag, guarded by the mutex.
    private struct State {
        var leader = false
        var gateways: [String: (ready: String, degraded: Bool)] = [:]
        var webhooks: [String: Double] = [:]  // outcome -> deliveries
        var wakes: [String: Double] = [:]  // outcome -> wakes
    }

    private let state = Mutex(State())
    public let runner = RunnerMetrics(prefix: "gmc_")

    public init() {}

    public func setLeader(_ leading: Bool) { state.withLock { $0.leader = leading } }
    /// A gateway's conditions as last seen (nil: the gateway is gone).
    func setGateway(_ key: String, ready: String?, degraded: Bool = false) {
        state.withLock { $0.gateways[key] = ready.map { ($0, degraded) } }
    }

    public var isLeader: Bool { state.withLock { $0.leader } }

    /// One webhook delivery, by `Webhook.Outcome.label`.
    public func countWebhook(_ outcome: String) { state.withLock { $0.webhooks[outcome, default: 0] += 1 } }
    /// Jobs an AGC was (or was not) woken for, by `AGCWaker.outcomes`.
    public func countWake(_ outcome: String, jobs: Int = 1) { state.withLock { $0.wakes[outcome, default: 0] += Double(jobs) } }

    public func render() -> String {
        let snapshot = state.withLock { $0 }
        var out = PrometheusWriter()
        runner.write(into: &out)
        out.family("gmc_gateways", .gauge, help: "Gateways by Ready condition.")
        for condition in ["True", "False", "Unknown"] {
            out.sample("gmc_gateways", labels: [("condition", condition)],
                       Double(snapshot.gateways.values.filter { $0.ready == condition }.count))
        }
        out.family("gmc_gateways_degraded", .gauge, help: "Gateways whose Degraded condition is True (a field is wrong; the condition names it).")
        out.sample("gmc_gateways_degraded", Double(snapshot.gateways.values.filter(\.degraded).count))
        out.family("gmc_webhook_deliveries_total", .counter, help: "Webhook deliveries by outcome (routed, ignored, bad_signature, replayed, ...).")
        for outcome in ["routed", "unrouted", "ignored", "ping", "bad_signature", "unknown_host", "malformed", "replayed", "too_large"] {
            out.sample("gmc_webhook_deliveries_total", labels: [("outcome", outcome)], snapshot.webhooks[outcome] ?? 0)
        }
        out.family("gmc_agc_wakes_total", .counter,
                   help: "Routed jobs by their wake of the AGC: sent (it took the wake), refused (it answered 4xx/5xx), failed (no answer), dropped (too many waiting).")
        for outcome in AGCWaker.outcomes {
            out.sample("gmc_agc_wakes_total", labels: [("outcome", outcome)], snapshot.wakes[outcome] ?? 0)
        }
        out.family("gmc_leader", .gauge, help: "1 on the leader.")
        out.sample("gmc_leader", snapshot.leader ? 1 : 0)
        BuildInfo.write(prefix: "gmc", into: &out)
        ProcessMetrics.write(into: &out)
        return out.text
    }
}

/// The GMC on the shared controller runtime: ActionsGateways are the primary kind; the
/// declared children map to their gateway through its label; namespaces and Secrets (metadata
/// only) are watched so a reconcile reads nothing but caches.
public final class GatewayController: Sendable {
    private let runner: ControllerRunner
    /// The ActionsGateway cache (the webhook router reads it; filled while this replica leads).
    public let gatewayLister: Lister<UntypedObject>
    private let reconciler: GatewayReconciler
    private let logger: Logger
    private let clock: any ControllerClock

    /// - Parameter reconciler: built from the reader over this controller's informer caches.
    public init(
        client: KubeClient, metrics: ControllerMetrics, workers: Int = 4, resync: Duration? = .seconds(600),
        clock: any ControllerClock = SystemControllerClock(), logger: Logger = Logger(label: "gmc"),
        reconciler: (ClusterReader) -> GatewayReconciler
    ) {
        self.logger = logger
        self.clock = clock
        let runner = ControllerRunner(metrics: metrics.runner, workers: workers, resync: resync, clock: clock)
        self.runner = runner
        var listers: [Lister<UntypedObject>] = []
        let gateways = runner.watch(UntypedObject.self, resource: .actionsGateways, client: client, primary: true) { change in
            if case .upserted(_, let object) = change {
                let conditions = ((object.json["status"] as? JSONObject)?["conditions"] as? [any Sendable])?
                    .compactMap { $0 as? JSONObject } ?? []
                func status(_ type: String) -> String? { conditions.first { $0["type"] as? String == type }?["status"] as? String }
                metrics.setGateway(change.key, ready: status("Ready") ?? "Unknown", degraded: status("Degraded") == "True")
            } else {
                metrics.setGateway(change.key, ready: nil)
            }
            return [change.key]
        }
        listers.append(gateways)
        gatewayLister = gateways
        for resource in DesiredState.childResources {
            listers.append(runner.watch(UntypedObject.self, resource: resource, client: client, labelSelector: DesiredState.gatewayLabel, indexLabel: DesiredState.gatewayLabel) {
                change in
                // A child's change or deletion (DELETED events carry the last state, labels
                // included) reconciles the gateway named by its label.
                let namespace = change.key.split(separator: "/").first.map(String.init) ?? ""
                return change.object?.cacheLabel(DesiredState.gatewayLabel).map { ["\(namespace)/\($0)"] } ?? []
            })
        }
        // A namespace's labels pick the Pod Security profile: its gateways reconcile again.
        listers.append(runner.watch(UntypedObject.self, resource: .namespaces, client: client) { change in
            let name = change.key.split(separator: "/").last.map(String.init) ?? ""
            return gateways.keys.filter { $0.hasPrefix(name + "/") }
        })
        // A Secret appearing or going changes CredentialsAvailable of the gateways naming it.
        listers.append(runner.watch(UntypedObject.self, resource: .secrets, client: client, metadataOnly: true) { change in
            let parts = change.key.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { return [] }
            return gateways.keys.filter { key in
                guard key.hasPrefix(parts[0] + "/"), let gateway = gateways.get(namespace: parts[0], name: String(key.dropFirst(parts[0].count + 1)))
                else { return false }
                return ((gateway.json["spec"] as? JSONObject)?["gitHubAppRef"] as? JSONObject)?["name"] as? String == parts[1]
            }
        })
        self.reconciler = reconciler(CacheReader(listers: listers, client: client))
    }

    /// Runs until cancelled.
    public func run() async {
        await runner.run { [self] key in await work(key) }
    }

    /// One reconcile of `key`, its outcome classified and logged (one line).
    private func work(_ key: String) async -> ReconcileResult {
        let parts = key.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return .terminal }
        var metadata: Logger.Metadata = ["namespace": .string(parts[0]), "gateway": .string(parts[1])]
        let started = clock.now()
        let result: ReconcileResult
        do {
            let outcome = try await reconciler.reconcile(namespace: parts[0], name: parts[1])
            metadata["writes"] = .stringConvertible(outcome.writes)
            if !outcome.problems.isEmpty {
                metadata["problems"] = .string(outcome.problems.map(\.description).joined(separator: "; "))
            }
            result = .success
        } catch {
            result = Self.classify(error)
            metadata["error"] = .string("\(error)")
            metadata["retry"] = .string(result == .terminal ? "on the next change" : "after backoff")
        }
        metadata["seconds"] = .stringConvertible(((clock.now() - started).seconds * 1000).rounded() / 1000)
        switch result {
        case .success, .requeue:
            if metadata["problems"] != nil {
                logger.warning("gateway refused", metadata: metadata)
            } else {
                // Every outcome is a line, an unchanged gateway too (writes 0): "nothing to do"
                // is what an operator asks about most.
                logger.info("reconciled", metadata: metadata)
            }
        case .terminal:
            logger.error("reconcile failed", metadata: metadata)
        case .retryable:
            logger.warning("reconcile failed", metadata: metadata)
        }
        return result
    }

    /// Terminal: the API server refused what we sent as invalid (400, 422), which no retry
    /// changes. Everything else (network, 409 conflict from a stale cache, 429, 5xx, 403 while
    /// RBAC is being fixed) is retried with backoff.
    static func classify(_ error: any Error) -> ReconcileResult {
        if let error = error as? OutboundError, case .http(let code) = error.kind, code == 400 || code == 422 { return .terminal }
        return .retryable
    }
}
