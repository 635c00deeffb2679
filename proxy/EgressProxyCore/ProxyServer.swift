import Dispatch
import EgressLoop
import EgressPosix
import GatewayOps
import Logging
import Synchronization

/// The egress proxy process: N proxy loops (each with its own SO_REUSEPORT listener), one
/// admin loop (admin HTTP, signals, drain ticks, reloads) and a resolver pool.
///
/// Threading: `start` runs on the caller's thread before any loop thread exists; after that
/// the admin-side state (`draining`, `drainPlan`, `current`, reload counters) is touched
/// only on the admin loop, and proxy-loop state only on its own loop.
public final class ProxyServer: @unchecked Sendable {
    public static let version = "0.1.0"

    /// The addresses actually bound (port 0 resolved).
    public struct Endpoints: Sendable {
        public var proxy: SocketAddress
        public var admin: SocketAddress
    }

    private let logger: Logger
    private let clock: LoopClock
    private var current: PolicySnapshot
    private var proxyLoops: [ProxyLoop] = []
    private var adminLoop: EventLoop?
    private var admin: AdminServer?
    private var ready = false
    private var draining = false
    private var drainPlan: DrainPlan?
    private var reloadSuccesses: UInt64 = 0
    private var reloadFailures: UInt64 = 0
    private let exited = Mutex<Bool>(false)
    private let exitSignal = DispatchSemaphore(value: 0)
    /// Where reloads read from (nil: the embedded default, which cannot change).
    public let configPath: String?
    /// Overrides applied on top of every reloaded file (command-line flags win).
    public var overrides: (inout ProxyConfig) -> Void = { _ in }
    private var drainTicker: DrainTicker?
    /// The addresses actually bound (port 0 resolved), denied as destinations.
    private var boundEndpoints: [SocketAddress] = []

    private let registry = TenantRegistry()
    private let cgroup: CgroupLimits

    /// Fails when a tenant's `secretFile` cannot be read.
    /// - Parameter cgroup: the container's limits, which shape `loops: 0` and the memory
    ///   budget (read from the cgroup filesystem by default; a test passes its own).
    public init(config: ProxyConfig, logger: Logger, configPath: String? = nil, clock: LoopClock = MonotonicClock(),
                cgroup: CgroupLimits = CgroupLimits.read()) throws(ConfigError)
    {
        self.cgroup = cgroup
        self.configPath = configPath
        self.current = try PolicySnapshot.make(config: config, registry: registry)
        self.logger = logger
        self.clock = clock
    }

    public var config: ProxyConfig { current.config }

    /// Binds every listener, starts the loops and the admin endpoint. Call once.
    public func start() throws -> Endpoints {
        let config = current.config
        Posix.raiseDescriptorLimit()
        let descriptorLimit = Posix.maxDescriptors() ?? 1024
        let loops = config.loops > 0 ? config.loops : cgroup.loops(affinityCPUs: Posix.availableCPUs())
        let descriptors = DescriptorBudget(descriptorLimit: descriptorLimit, loops: loops)
        let memory = MemoryBudget(memoryLimit: cgroup.memoryBytes, loops: loops, bufferSize: BufferPool().bufferSize,
                                  pipeCapacity: PipePool().capacity)
        let resolver = try FairWorkerPool(name: "egress-dns", limits: ProxyShared.resolverLimits)
        let shared = ProxyShared(resolver: resolver, logger: logger, descriptors: descriptors, memory: memory)
        var port = config.listen.port
        var boundProxy = config.listen
        for index in 0..<loops {
            let loop = try EventLoop(name: "egress-loop-\(index)", clock: clock)
            loop.pipes.maxPipes = min(descriptors.pipesPerLoop, memory.pipesPerLoop)
            let proxyLoop = ProxyLoop(loop: loop, index: index, shared: shared, policy: current)
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
        boundEndpoints = [boundProxy, admin.boundAddress]
        current = try PolicySnapshot.make(config: config, bound: boundEndpoints, registry: registry)
        for proxyLoop in proxyLoops { proxyLoop.apply(policy: current) }
        watchConfigFile(on: adminLoop)
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
                    if signal == Signals.hangup { self.reloadFromFile() } else { self.beginDrain() }
                }
                signalWatcher = watcher
            } catch {
                logger.error("cannot watch signals", metadata: ["error": .string("\(error)")])
            }
        }
    }

    private var signalWatcher: SignalWatcher?
    private var fileWatcher: FileWatcher?
    /// SHA-256 of the config file's bytes as last loaded, so a watch event that did not change
    /// the content (a touch, an unrelated file in the directory) does not count as a reload.
    private var loadedDigest: [UInt8]?

    /// Reloads when the config file's content changes (including a ConfigMap symlink swap).
    /// Called by `start` before the admin loop runs, so no change after `start` returns is missed.
    private func watchConfigFile(on adminLoop: EventLoop) {
        guard let configPath else { return }
        loadedDigest = Posix.readSmallFile(configPath, limit: 16 << 20).map { SHA256Digest.hash($0) }
        do {
            fileWatcher = try FileWatcher(path: configPath, loop: adminLoop) { [unowned self] in
                self.reloadFromFile(onlyIfChanged: true)
            }
        } catch {
            logger.error("cannot watch the config file; reload with SIGHUP", metadata: ["error": .string("\(error)")])
        }
    }

    /// Blocks the calling thread until the drain finished; returns the exit status.
    public func waitForExit() -> Int32 {
        exitSignal.wait()
        return 0
    }

    // MARK: drain (admin loop)

    private func beginDrain() {
        guard !draining, let adminLoop else { return }
        draining = true
        let timeouts = current.config.timeouts
        drainPlan = DrainPlan(start: adminLoop.now(), linger: timeouts.linger, quiescence: timeouts.quiescence, budget: timeouts.drain)
        logger.info("draining", metadata: ["budget_s": .stringConvertible(timeouts.drain.seconds)])
        let ticker = DrainTicker(server: self)
        drainTicker = ticker
        ticker.tick(on: adminLoop)
    }

    fileprivate func drainTick() {
        guard let adminLoop else { return }
        let loops = proxyLoops.map(\.loop)
        gather(from: loops, to: adminLoop, snapshot: { [proxyLoops] index in
            (proxyLoops[index].lastArrival, proxyLoops[index].tunnelCount)
        }) { [self] observations in
            guard var plan = drainPlan else { return }
            let lastArrival = observations.map(\.0).max() ?? plan.start
            let open = observations.map(\.1).reduce(0, +)
            let decision = plan.tick(now: adminLoop.now(), lastArrival: lastArrival, openTunnels: open)
            drainPlan = plan
            if decision.closeListeners {
                logger.info("listeners closed", metadata: ["open_tunnels": .stringConvertible(open)])
                for proxyLoop in proxyLoops { proxyLoop.loop.execute { proxyLoop.closeListener() } }
            }
            if decision.forceClose {
                logger.info("drain budget exhausted, closing tunnels", metadata: ["open_tunnels": .stringConvertible(open)])
                for proxyLoop in proxyLoops { proxyLoop.loop.execute { proxyLoop.closeAllTunnels() } }
            }
            if decision.exit {
                finishExit()
            } else {
                drainTicker?.tick(on: adminLoop)
            }
        }
    }

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

    // MARK: reload (admin loop)

    private func reloadFromFile(onlyIfChanged: Bool = false) {
        guard let configPath else {
            logger.info("reload requested, but running on the embedded default")
            return
        }
        guard let bytes = Posix.readSmallFile(configPath, limit: 16 << 20) else {
            // Mid-swap a watch event may see no file; the next event brings it back.
            if onlyIfChanged { return }
            reloadFailures += 1
            logger.error("reload failed", metadata: ["path": .string(configPath), "error": "cannot read file"])
            return
        }
        let digest = SHA256Digest.hash(bytes)
        if onlyIfChanged && digest == loadedDigest { return }
        loadedDigest = digest
        switch ProxyConfig.parse(yaml: String(decoding: bytes, as: UTF8.self)) {
        case .failure(let error):
            reloadFailures += 1
            logger.error("reload rejected, keeping the running config", metadata: ["error": .string(error.description)])
        case .success(var config):
            overrides(&config)
            let old = current.config
            if config.listen != old.listen || config.admin != old.admin || config.loops != old.loops {
                logger.warning("listen, admin and loops change only on restart; keeping the running values")
                config.listen = old.listen
                config.admin = old.admin
                config.loops = old.loops
            }
            let snapshot: PolicySnapshot
            do {
                snapshot = try PolicySnapshot.make(config: config, bound: boundEndpoints, registry: registry)
            } catch {
                reloadFailures += 1
                logger.error("reload rejected, keeping the running config", metadata: ["error": .string(error.description)])
                return
            }
            current = snapshot
            reloadSuccesses += 1
            for proxyLoop in proxyLoops { proxyLoop.loop.execute { proxyLoop.apply(policy: snapshot) } }
            logger.info("config reloaded", metadata: ["tenants": .stringConvertible(config.tenants.count)])
        }
    }

    // MARK: admin routes (admin loop)

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
                reply.value(AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: renderMetrics(stats)))
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

    /// Gathers every loop's counters (as copies made on each loop).
    public func collectStats(_ completion: @escaping @Sendable ([LoopStats]) -> Void) {
        guard let adminLoop else { return }
        gather(from: proxyLoops.map(\.loop), to: adminLoop, snapshot: { [proxyLoops] index in proxyLoops[index].stats },
               completion: completion)
    }

    func renderMetrics(_ loops: [LoopStats]) -> String {
        let tenants = LoopStats.merged(loops)
        var out = PrometheusWriter()
        func label(_ name: String) -> [(key: String, value: String)] { [("tenant", name)] }
        out.family("egress_proxy_tunnels_active", .gauge, help: "Tunnels open now.")
        for (name, stats) in tenants { out.sample("egress_proxy_tunnels_active", labels: label(name), Double(stats.active)) }
        out.family("egress_proxy_tunnels_total", .counter, help: "Requests by outcome.")
        for (name, stats) in tenants {
            for result in TunnelResult.allCases {
                out.sample("egress_proxy_tunnels_total", labels: label(name) + [("result", result.label)],
                           Double(stats.results[result.rawValue]))
            }
        }
        out.family("egress_proxy_bytes_total", .counter, help: "Bytes relayed; upstream is client to destination.")
        for (name, stats) in tenants {
            out.sample("egress_proxy_bytes_total", labels: label(name) + [("direction", "upstream")], Double(stats.bytesUp))
            out.sample("egress_proxy_bytes_total", labels: label(name) + [("direction", "downstream")], Double(stats.bytesDown))
        }
        out.family("egress_proxy_connect_seconds", .histogram, help: "Time from request to 200 reply.")
        for (name, stats) in tenants { out.histogram("egress_proxy_connect_seconds", labels: label(name), stats.connectSeconds) }
        out.family("egress_proxy_tunnel_seconds", .histogram, help: "Tunnel lifetime.")
        for (name, stats) in tenants { out.histogram("egress_proxy_tunnel_seconds", labels: label(name), stats.tunnelSeconds) }
        out.family("egress_proxy_denied_total", .counter, help: "Requests refused by policy, by reason.")
        for (name, stats) in tenants {
            for reason in DenyReason.allCases {
                out.sample("egress_proxy_denied_total", labels: label(name) + [("reason", reason.rawValue)],
                           Double(stats.denied[reason.ordinal]))
            }
        }
        out.family("egress_proxy_report_only_total", .counter,
                   help: "Tunnels a tenant in report mode was let through that enforce would have denied, by reason.")
        for (name, stats) in tenants {
            for reason in [DenyReason.notAllowed, .portNotAllowed] {
                out.sample("egress_proxy_report_only_total", labels: label(name) + [("reason", reason.rawValue)],
                           Double(stats.reported[reason.ordinal]))
            }
        }
        out.family("egress_proxy_draining", .gauge, help: "1 while draining after SIGTERM.")
        out.sample("egress_proxy_draining", draining ? 1 : 0)
        out.family("egress_proxy_config_reloads_total", .counter, help: "Config reloads by result.")
        out.sample("egress_proxy_config_reloads_total", labels: [("result", "success")], Double(reloadSuccesses))
        out.sample("egress_proxy_config_reloads_total", labels: [("result", "failure")], Double(reloadFailures))
        out.family("egress_proxy_build_info", .gauge, help: "Build information.")
        out.sample("egress_proxy_build_info", labels: [("version", Self.version)], 1)
        ProcessMetrics.write(into: &out)
        return out.text
    }
}

/// Re-arms a 100 ms tick on the admin loop while a drain runs.
private final class DrainTicker: TimerTarget {
    unowned let server: ProxyServer
    init(server: ProxyServer) { self.server = server }
    func tick(on loop: EventLoop) { loop.schedule(after: .milliseconds(100), target: self) }
    func timerFired(_ token: UInt64) { server.drainTick() }
}
