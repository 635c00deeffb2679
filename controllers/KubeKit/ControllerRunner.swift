import GatewayOps
import Logging
import Synchronization
import Vocabulary

/// The counters every controller has, named with its own prefix (`gmc_`, `agc_`).
public final class RunnerMetrics: Sendable {
    /// Reconciles by result and their durations, under the mutex.
    private struct State {
        var results: [String: UInt64] = ["success": 0, "error": 0]
        var seconds = Histogram(bounds: Histogram.latencyBounds)
    }

    public let prefix: String
    private let state = Mutex(State())
    /// Whether every informer has listed once (false until the runner has informers).
    private let synced = Mutex<@Sendable () -> Bool>({ false })

    public init(prefix: String) { self.prefix = prefix }

    func setSyncCheck(_ check: @escaping @Sendable () -> Bool) { synced.withLock { $0 = check } }

    public var cacheSynced: Bool { synced.withLock { $0 }() }

    func record(_ result: ReconcileResult, seconds: Double) {
        let label: String
        switch result {
        case .success, .requeue: label = "success"
        case .retryable, .terminal: label = "error"
        }
        state.withLock {
            $0.results[label, default: 0] += 1
            $0.seconds.observe(seconds)
        }
    }

    /// `PREFIXreconcile_total{result}`, `PREFIXreconcile_seconds`, `PREFIXcache_synced`.
    public func write(into out: inout PrometheusWriter) {
        let snapshot = state.withLock { $0 }
        out.family("\(prefix)reconcile_total", .counter, help: "Reconciles by result.")
        for result in snapshot.results.keys.sorted() {
            out.sample("\(prefix)reconcile_total", labels: [("result", result)], Double(snapshot.results[result] ?? 0))
        }
        out.family("\(prefix)reconcile_seconds", .histogram, help: "Reconcile duration.")
        out.histogram("\(prefix)reconcile_seconds", labels: [], snapshot.seconds)
        out.family("\(prefix)cache_synced", .gauge, help: "Whether every informer has listed (then reconciles read only caches).")
        out.sample("\(prefix)cache_synced", cacheSynced ? 1 : 0)
    }
}

/// The one runtime every controller runs on: informers (list, watch, cache) whose changes map
/// to keys, a de-duplicating queue with per-key backoff, N workers calling the controller's
/// reconcile, a periodic resync of every primary key, all on an injected clock.
///
///     informers --changes--> keys --> WorkQueue --> workers --> reconcile(key) -> ReconcileResult
///         |                                                          |
///         +--> Lister (cache) <------------ reads ------------------+
///
/// A controller registers its watches with `watch`, builds its reconciler over `listers`, then
/// calls `run`. Leader election stays outside (`LeaderElector.run { await runner.run(...) }`).
public final class ControllerRunner: Sendable {
    public let queue: WorkQueue
    public let metrics: RunnerMetrics
    private let workers: Int
    private let clock: any ControllerClock
    private let resync: Duration?
    /// One registered informer, type-erased: the runner only starts it and asks its cache
    /// whether it has synced and which keys it holds.
    private struct Registered: Sendable {
        var run: @Sendable () async -> Void
        var hasSynced: @Sendable () -> Bool
        var keys: @Sendable () -> [String]
        var primary: Bool
    }

    /// Registered before `run` (from the controller's init), read by `run`.
    private let informers = Mutex<[Registered]>([])

    /// - Parameters:
    ///   - resync: every this long, every key of the primary informers is queued again (what a
    ///     watch cannot report, such as time passing, still gets reconciled); nil = never.
    public init(metrics: RunnerMetrics, workers: Int = 4, resync: Duration? = .seconds(600),
                clock: any ControllerClock = SystemControllerClock()) {
        self.metrics = metrics
        self.workers = max(1, workers)
        self.clock = clock
        self.resync = resync
        queue = WorkQueue(clock: clock)
    }

    /// Watches a kind, cached as `Object`; each change queues the keys `keys` maps it to (the
    /// object's own key for a primary kind, its owner's for a child). Returns the cache.
    @discardableResult
    public func watch<Object: Cacheable>(
        _ type: Object.Type, resource: KubeResource, client: KubeClient, namespace: String? = nil, labelSelector: String? = nil,
        indexLabel: String? = nil, metadataOnly: Bool = false, primary: Bool = false,
        keys: @escaping @Sendable (Informer<Object>.Change) -> [String]
    ) -> Lister<Object> {
        let queue = queue
        let informer = Informer<Object>(resource: resource, client: client, namespace: namespace, labelSelector: labelSelector, indexLabel: indexLabel,
                                        metadataOnly: metadataOnly, clock: clock) { change in
            for key in keys(change) { await queue.add(key) }
        }
        let lister = informer.lister
        let entry = Registered(run: { await informer.run() }, hasSynced: { lister.hasSynced }, keys: { lister.keys }, primary: primary)
        let all = informers.withLock { list -> [Registered] in
            list.append(entry)
            return list
        }
        metrics.setSyncCheck { all.allSatisfy { $0.hasSynced() } }
        return lister
    }

    /// `watch` for a typed kind, at the resource it declares.
    @discardableResult
    public func watch<Object: KubeKind>(
        _ type: Object.Type, client: KubeClient, namespace: String? = nil, labelSelector: String? = nil, indexLabel: String? = nil,
        primary: Bool = false, keys: @escaping @Sendable (Informer<Object>.Change) -> [String]
    ) -> Lister<Object> {
        watch(type, resource: Object.resource, client: client, namespace: namespace, labelSelector: labelSelector, indexLabel: indexLabel,
              primary: primary, keys: keys)
    }

    /// Runs informers, workers and the resync until cancelled.
    public func run(_ reconcile: @escaping @Sendable (String) async -> ReconcileResult) async {
        let registered = informers.withLock { $0 }
        let queue = queue
        let clock = clock
        let metrics = metrics
        await withTaskGroup(of: Void.self) { group in
            for informer in registered { group.addTask { await informer.run() } }
            if let resync {
                let primaries = registered.filter(\.primary)
                group.addTask {
                    while (try? await clock.sleep(for: resync)) != nil {
                        for informer in primaries { for key in informer.keys() { await queue.add(key) } }
                    }
                }
            }
            for _ in 0..<workers {
                group.addTask {
                    while let key = await queue.next() {
                        let started = clock.now()
                        let result = await reconcile(key)
                        metrics.record(result, seconds: (clock.now() - started).seconds)
                        await queue.done(key, result: result)
                    }
                }
            }
        }
    }
}

extension Duration {
    /// As a Double of seconds (for histograms and logs).
    public var seconds: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) / 1e18
    }
}
