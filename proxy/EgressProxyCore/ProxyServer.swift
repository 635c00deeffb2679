import Dispatch
import EgressLoop
import EgressPosix
import GatewayOps
import Logging
import Synchronization

/// The egress proxy process: N proxy loops (each with its own SO_REUSEPORT listener), one
/// admin loop (admin HTTP, signals, drain ticks, reloads) and a resolver pool. This type is
/// the bootstrap and the admin routes; reloads are `ConfigReloader`'s, the drain is
/// `DrainCoordinator`'s and the metrics page is `ProxyMetrics`'.
///
/// Threading: `start` runs on the caller's thread before any loop thread exists; after that
/// the admin-side state (`ready`, the reloader, the drain) is touched only on the admin
/// loop, and proxy-loop state only on its own loop.
public final class ProxyServer: @unchecked Sendable {
    public static let version = BuildInfo.version

    /// The addresses actually bound (port 0 resolved).
    public struct Endpoints: Sendable {
        public var proxy: SocketAddress
        public var admin: SocketAddress
    }

    private let logger: Logger
    private let clock: LoopClock
    private let reloader: ConfigReloader
    private var proxyLoops: [ProxyLoop] = []
    private var adminLoop: EventLoop?
    private var admin: AdminServer?
    private var drain: DrainCoordinator?
    private var signalWatcher: SignalWatcher?
    private var ready = false
    /// Set by `start`: what the metrics' limit gauges read.
    private var shared: ProxyShared?
    private let exited = Mutex<Bool>(false)
    private let exitSignal = DispatchSemaphore(value: 0)
    private let cgroup: CgroupLimits

    /// Where reloads read from (nil: the embedded default, which cannot change).
    public var configPath: String? { reloader.path }
    /// Overrides applied on top of every reloaded file (command-line flags win). Set before `start`.
    public var overrides: (inout ProxyConfig) -> Void {
        get { reloader.overrides }
        set { reloader.overrides = newValue }
    }

    /// Fails when a tenant's `secretFile` cannot be read.
    /// - Parameter cgroup: the container's limits, which shape `loops: 0` and the memory
    ///   budget (read from the cgroup filesystem by default; a test passes its own).
    public init(config: ProxyConfig, logger: Logger, configPath: String? = nil, clock: LoopClock = MonotonicClock(),
                cgroup: CgroupLimits = CgroupLimits.read()) throws(ConfigError)
    {
        self.cgroup = cgroup
        reloader = try ConfigReloader(config: config, path: configPath, logger: logger)
        self.logger = logger
        self.clock = clock
    }

    public var config: ProxyConfig { reloader.current.config }

    /// Binds every listener, starts the loops and the admin endpoint. Call once.
    public func start() throws -> Endpoints {
        let config = reloader.current.config
        Posix.raiseDescriptorLimit()
        let descriptorLimit = Posix.maxDescriptors() ?? 1024
        let loops = config.loops > 0 ? config.loops : cgroup.loops(affinityCPUs: Posix.availableCPUs())
        let descriptors = DescriptorBudget(descriptorLimit: descriptorLimit, loops: loops)
        let memory = MemoryBudget(memoryLimit: cgroup.memoryBytes, loops: loops, bufferSize: BufferPool().bufferSize,
                                  pipeCapacity: PipePool().capacity)
        let resolver = try FairWorkerPool(name: "egress-dns", limits: ProxyShared.resolverLimits)
        let shared = ProxyShared(resolver: resolver, logger: logger, descriptors: descriptors, memory: memory)
        self.shared = shared
        var port = config.listen.port
        var boundProxy = config.listen
        for index in 0..<loops {
            let loop = try EventLoop(name: "egress-loop-\(index)", clock: clock)
            loop.pipes.maxPipes = min(descriptors.pipesPerLoop, memory.pipesPerLoop)
            let proxyLoop = ProxyLoop(loop: loop, index: index, shared: shared, policy: reloader.current)
            let listener = try Socket.listening(on: config.listen.withPort(port), reusePort: true)
            boundProxy = try listener.localAddress()
            port = boundProxy.port
            // No loop thread exists yet, so registering from here cannot race the loop.
            try proxyLoop.adopt(listener: listener)
            proxyLoops.append(proxyLoop)
        }
        let adminLoop = try EventLoop(name: "egress-admin", clock: clock)
        self.adminLoop = adminLoop
        let admin = try AdminServer(loop: adminLoop, address: config.admin) { [unowned self] method, path, respond in
            self.route(method: method, path: path, respond: respond)
        }
        self.admin = admin
        try reloader.bound(to: [boundProxy, admin.boundAddress])
        for proxyLoop in proxyLoops { proxyLoop.apply(policy: reloader.current) }
        drain = DrainCoordinator(adminLoop: adminLoop, proxyLoops: proxyLoops, logger: logger) { [unowned self] in finishExit() }
        reloader.watch(on: adminLoop) { [unowned self] in reload(onlyIfChanged: true) }
        for proxyLoop in proxyLoops { try proxyLoop.loop.start() }
        try adminLoop.start()
        adminLoop.execute { [self] in ready = true }
        let maxTunnels = descriptors.maxTunnels(configured: config.limits.maxTunnels)
        if maxTunnels < config.limits.maxTunnels {
            logger.warning(
                "maxTunnels lowered to fit the descriptor limit",
                metadata: [
                    "configured": .stringConvertible(config.limits.maxTunnels), "maxTunnels": .stringConvertible(maxTunnels),
                    "descriptorLimit": .stringConvertible(descriptorLimit),
                ])
        }
        logger.info(
            "listening",
            metadata: [
                "listen": .string(boundProxy.description), "admin": .string(admin.boundAddress.description),
                "loops": .stringConvertible(proxyLoops.count), "tenants": .stringConvertible(config.tenants.count),
                "maxTunnels": .stringConvertible(maxTunnels), "descriptorLimit": .stringConvertible(descriptorLimit),
                "cgroupCPUs": .string(cgroup.cpus.map { "\($0)" } ?? "none"),
                "cgroupMemoryBytes": .string(cgroup.memoryBytes.map { "\($0)" } ?? "none"),
                "buffersPerLoop": .string(memory.buffersPerLoop == .max ? "unlimited" : "\(memory.buffersPerLoop)"),
            ])
        return Endpoints(proxy: boundProxy, admin: admin.boundAddress)
    }

    /// Watches SIGTERM/SIGINT (drain) and SIGHUP (reload) on the admin loop. The signals
    /// must have been blocked before any thread started (`Signals.block`).
    public func watchSignals() {
        guard let adminLoop else { return }
        adminLoop.execute { [self] in
            do {
                let watcher = try SignalWatcher(loop: adminLoop, signals: Signals.lifecycle) {
                    [unowned self] signal in
                    if signal == Signals.hangup {
                        self.reload(onlyIfChanged: false)
                    } else {
                        self.drain?.begin(timeouts: self.reloader.current.config.timeouts)
                    }
                }
                signalWatcher = watcher
            } catch {
                logger.error("cannot watch signals", metadata: ["error": .string("\(error)")])
            }
        }
    }

    /// Blocks the calling thread until the drain finished; returns the exit status.
    public func waitForExit() -> Int32 {
        exitSignal.wait()
        return 0
    }

    // MARK: exit and reload (admin loop)

    private func finishExit() {
        logger.info("drained, exiting")
        admin?.close()
        for proxyLoop in proxyLoops { proxyLoop.loop.stop() }
        adminLoop?.stop()
        let first = exited.withLock { done in
            defer { done = true }
            return !done
        }
        if first { exitSignal.signal() }
    }

    /// A reloaded snapshot goes to every loop; each takes it between events, so a tunnel
    /// never sees half of one policy and half of another.
    private func reload(onlyIfChanged: Bool) {
        guard let snapshot = reloader.reload(onlyIfChanged: onlyIfChanged) else { return }
        for proxyLoop in proxyLoops { proxyLoop.loop.execute { proxyLoop.apply(policy: snapshot) } }
    }

    // MARK: admin routes (admin loop)

    private var draining: Bool { drain?.draining ?? false }

    private func route(method: String, path: String, respond: @escaping (AdminResponse) -> Void) {
        switch path {
        case "/healthz":
            respond(AdminResponse(status: 200, body: "ok\n"))
        case "/readyz":
            respond(ready && !draining ? AdminResponse(status: 200, body: "ready\n") : AdminResponse(status: 503, body: "not ready\n"))
        case "/metrics":
            guard let adminLoop else { return }
            let reply = LoopBound(respond, on: adminLoop)
            collectStats { [self] stats in
                let process = processMetrics()
                reply.value(AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                          body: ProxyMetrics.render(stats, process: process)))
            }
        case "/tunnels":
            guard let adminLoop else { return }
            let reply = LoopBound(respond, on: adminLoop)
            gather(from: proxyLoops.map(\.loop), to: adminLoop, snapshot: { [proxyLoops] index in
                proxyLoops[index].tunnelSnapshots()
            }) { lists in
                let rows = lists.flatMap { $0 }.map(\.json)
                reply.value(AdminResponse(status: 200, contentType: "application/json", body: "[" + rows.joined(separator: ",") + "]\n"))
            }
        default:
            respond(AdminResponse(status: 404, body: "not found\n"))
        }
    }

    /// The admin loop's own series and the limits, read now.
    private func processMetrics() -> ProxyMetrics.Process {
        let policy = reloader.current
        let limits = policy.tenants.compactMap { tenant in
            tenant.config.maxTunnels.map { (tenant: tenant.name, limit: $0, held: tenant.runtime.activeTunnels) }
        }
        return ProxyMetrics.Process(
            draining: draining, reloadSuccesses: reloader.successes, reloadFailures: reloader.failures,
            lastReloadSuccessUnixSeconds: reloader.lastSuccessUnixSeconds,
            connectionsOpen: shared?.openConnections.load(ordering: .relaxed) ?? 0,
            connectionsLimit: shared?.descriptors.maxTunnels(configured: policy.config.limits.maxTunnels) ?? 0,
            tenantLimits: limits)
    }

    /// Gathers every loop's counters (as copies made on each loop).
    public func collectStats(_ completion: @escaping @Sendable ([LoopStats]) -> Void) {
        guard let adminLoop else { return }
        gather(from: proxyLoops.map(\.loop), to: adminLoop, snapshot: { [proxyLoops] index in proxyLoops[index].stats },
               completion: completion)
    }
}
