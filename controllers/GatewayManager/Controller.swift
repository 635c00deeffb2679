import Foundation
import GatewayOps
import KubeKit
import Logging
import OutboundPool
import Synchronization

/// The GMC's counters (`gmc_*`), shared between workers and the admin endpoint.
public final class ControllerMetrics: Sendable {
    /// Counters and the last Ready status per gateway, guarded by the mutex.
    private struct State {
        var results: [String: UInt64] = ["success": 0, "error": 0]
        var seconds = Histogram(bounds: Histogram.latencyBounds)
        var leader = false
        var gateways: [String: String] = [:]  // key -> Ready status
    }

    private let state = Mutex(State())
    /// Whether every informer has listed once (set by the controller; false until it runs).
    private let synced = Mutex<@Sendable () -> Bool>({ false })

    public init() {}

    func setSyncCheck(_ check: @escaping @Sendable () -> Bool) { synced.withLock { $0 = check } }

    func record(success: Bool, seconds: Double) {
        state.withLock {
            $0.results[success ? "success" : "error", default: 0] += 1
            $0.seconds.observe(seconds)
        }
    }

    public func setLeader(_ leading: Bool) { state.withLock { $0.leader = leading } }
    func setGateway(_ key: String, ready: String?) { state.withLock { $0.gateways[key] = ready } }

    public var isLeader: Bool { state.withLock { $0.leader } }

    public func render() -> String {
        let snapshot = state.withLock { $0 }
        var out = PrometheusWriter()
        out.family("gmc_reconcile_total", .counter, help: "Reconciles by result.")
        for result in snapshot.results.keys.sorted() {
            out.sample("gmc_reconcile_total", labels: [("result", result)], Double(snapshot.results[result] ?? 0))
        }
        out.family("gmc_reconcile_seconds", .histogram, help: "Reconcile duration.")
        out.histogram("gmc_reconcile_seconds", labels: [], snapshot.seconds)
        out.family("gmc_gateways", .gauge, help: "Gateways by Ready condition.")
        for condition in ["True", "False", "Unknown"] {
            out.sample("gmc_gateways", labels: [("condition", condition)],
                       Double(snapshot.gateways.values.filter { $0 == condition }.count))
        }
        out.family("gmc_leader", .gauge, help: "1 on the leader.")
        out.sample("gmc_leader", snapshot.leader ? 1 : 0)
        out.family("gmc_cache_synced", .gauge, help: "Whether every informer has listed (then reconciles read only caches).")
        out.sample("gmc_cache_synced", synced.withLock { $0 }() ? 1 : 0)
        ProcessMetrics.write(into: &out)
        return out.text
    }
}

/// Watches ActionsGateways in all namespaces and the children they own, and reconciles each
/// changed gateway on a de-duplicating work queue with per-key backoff.
public final class GatewayController: Sendable {
    private let client: KubeClient
    private let pool: OutboundPool
    private let reconciler: GatewayReconciler
    private let metrics: ControllerMetrics
    private let workers: Int
    private let queue: WorkQueue
    private let clock: any ControllerClock
    private let logger: Logger
    private let gateways: Informer
    private let children: [Informer]
    /// Namespaces (their labels pick the Pod Security profile) and Secrets (metadata only: the
    /// GMC reports whether the App's Secret exists, and never holds its data).
    private let context: [Informer]

    /// - Parameter reconciler: built from the reader over this controller's informer caches.
    public init(
        client: KubeClient, pool: OutboundPool, metrics: ControllerMetrics, workers: Int = 4,
        clock: any ControllerClock = SystemControllerClock(), logger: Logger = Logger(label: "gmc"),
        reconciler: (ClusterReader) -> GatewayReconciler
    ) {
        self.client = client
        self.clock = clock
        self.logger = logger
        queue = WorkQueue(clock: clock)
        self.pool = pool
        self.metrics = metrics
        self.workers = workers
        let queue = queue
        gateways = Informer(resource: .actionsGateways, client: client, clock: clock) { change in
            await queue.add(change.key)
            guard case .upserted(_, let object) = change else {
                metrics.setGateway(change.key, ready: nil)
                return
            }
            let ready = ((object["status"] as? JSONObject)?["conditions"] as? [any Sendable])?
                .compactMap { $0 as? JSONObject }.first { $0["type"] as? String == "Ready" }?["status"] as? String
            metrics.setGateway(change.key, ready: ready ?? "Unknown")
        }
        children = DesiredState.childResources.map { resource in
            Informer(resource: resource, client: client, labelSelector: DesiredState.gatewayLabel, indexLabel: DesiredState.gatewayLabel,
                     clock: clock) {
                change in
                // A child's change or deletion (DELETED events carry the last state, labels
                // included) reconciles the gateway named by its label.
                let namespace = change.key.split(separator: "/").first.map(String.init) ?? ""
                let labels = (change.object?["metadata"] as? JSONObject)?["labels"] as? JSONObject
                if let owner = labels?[DesiredState.gatewayLabel] as? String { await queue.add("\(namespace)/\(owner)") }
            }
        }
        context = [
            Informer(resource: .namespaces, client: client, clock: clock),
            Informer(resource: .secrets, client: client, metadataOnly: true, clock: clock),
        ]
        let listers = ([gateways] + children + context).map(\.lister)
        metrics.setSyncCheck { listers.allSatisfy(\.hasSynced) }
        self.reconciler = reconciler(CacheReader(listers: listers, client: client))
    }

    /// Runs until cancelled.
    public func run() async {
        let queue = queue
        let gateways = gateways
        let informers = children + context
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await gateways.run() }
            for informer in informers { group.addTask { await informer.run() } }
            for _ in 0..<workers {
                group.addTask {
                    while !Task.isCancelled {
                        let key = await queue.next()
                        await queue.done(key, result: await self.work(key))
                    }
                }
            }
        }
    }

    /// One reconcile of `key`, its outcome classified, logged (one line) and counted.
    private func work(_ key: String) async -> ReconcileResult {
        let parts = key.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return .terminal }
        let started = clock.now()
        var metadata: Logger.Metadata = ["gateway": .string(key)]
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
        let seconds = (clock.now() - started).seconds
        metadata["seconds"] = .stringConvertible((seconds * 1000).rounded() / 1000)
        metrics.record(success: result == .success, seconds: seconds)
        switch result {
        case .success:
            let refused = metadata["problems"] != nil
            if refused {
                logger.warning("gateway refused", metadata: metadata)
            } else if metadata["writes"] != "0" {
                logger.info("reconciled", metadata: metadata)
            } else {
                logger.debug("reconciled", metadata: metadata)
            }
        case .terminal:
            logger.error("reconcile failed", metadata: metadata)
        case .retryable, .requeue:
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

extension Duration {
    var seconds: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) / 1e18
    }
}
