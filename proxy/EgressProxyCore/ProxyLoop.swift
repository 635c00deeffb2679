import EgressLoop
import EgressPosix
import GatewayOps
import Logging
import Synchronization
import Vocabulary

/// State shared by all loops of one proxy process. Sendable: immutable, or atomic.
public final class ProxyShared: Sendable {
    /// Tunnels open in the whole process (client connections past accept), for `maxTunnels`.
    let openConnections = Atomic<Int>(0)
    /// getaddrinfo off the loops, keyed by tenant name (see `FairWorkerPool` for why).
    let resolver: FairWorkerPool
    let logger: Logger
    /// What the descriptor limit allows (see `DescriptorBudget`), fixed at start.
    let descriptors: DescriptorBudget
    /// What the cgroup's memory limit allows (see `MemoryBudget`), fixed at start.
    let memory: MemoryBudget

    /// 16 threads, 4 lookups running and 128 waiting per tenant: a tenant whose names never
    /// resolve holds at most a quarter of the threads (4 such tenants at once to starve the
    /// rest), and its backlog past 128 is refused at once with 503 instead of queued.
    /// Threads cost a stack each and nothing while idle; lookups of one tenant were 4-wide before.
    static let resolverLimits = FairWorkerPool.Limits(threads: 16, perKeyInFlight: 4, perKeyQueued: 128)

    init(resolver: FairWorkerPool, logger: Logger, descriptors: DescriptorBudget, memory: MemoryBudget) {
        self.resolver = resolver
        self.descriptors = descriptors
        self.memory = memory
        self.logger = logger
    }
}

/// Everything one loop owns for the proxy: its listener, its tunnels, its counters and the
/// policy snapshot it applies. Confined to the loop's thread (other threads reach it only
/// through `loop.execute`), hence `@unchecked Sendable` for being captured in those tasks.
public final class ProxyLoop: LoopHandler, TimerTarget, @unchecked Sendable {
    public let loop: EventLoop
    public let index: Int
    let shared: ProxyShared
    private(set) var policy: PolicySnapshot
    var stats = LoopStats()
    /// Stats slot of each tenant of `policy` (by tenant index), the "unknown" slot last: the
    /// per-tunnel lookup is an array index, not a search by name.
    private var policySlots: [Int] = []
    private var listener: Socket = .closed
    private var listenerRegistration: Registration?
    /// Intrusive list of open tunnels (for /tunnels, drain and force-close).
    var firstTunnel: Tunnel?
    private(set) var tunnelCount = 0
    /// When the last client connection arrived (drain quiescence).
    private(set) var lastArrival: Instant
    private var acceptRetryPending = false
    private var spare = SpareDescriptor()
    static let acceptRetryToken: UInt64 = 1
    /// Connections still reading their request head, oldest first (an intrusive list through
    /// `Tunnel.pendingNext`), and how many of them each client address has.
    private var oldestPending: Tunnel?
    private weak var newestPending: Tunnel?
    private(set) var pendingCount = 0
    private var pendingBySource: [IPAddress: Int] = [:]

    init(loop: EventLoop, index: Int, shared: ProxyShared, policy: PolicySnapshot) {
        self.loop = loop
        self.index = index
        self.shared = shared
        self.policy = policy
        lastArrival = loop.now()
        policySlots = policy.tenantNames.map { stats.slot(for: $0) }
        deriveLimits()
    }

    /// The stats slot for a tenant (nil: "unknown") as `snapshot` numbers it. A tunnel admitted
    /// under an older snapshot than the loop's current one is looked up by name.
    func statsSlot(for tenant: PolicySnapshot.Tenant?, in snapshot: PolicySnapshot) -> Int {
        if snapshot === policy { return policySlots[tenant?.index ?? snapshot.unknownTenantIndex] }
        return stats.slot(for: tenant?.name ?? "unknown")
    }

    /// Adopts a listening socket (on the loop thread).
    func adopt(listener socket: consuming Socket) throws(IOError) {
        let fd = socket.descriptor
        listener = socket
        listenerRegistration = try loop.register(fd, events: [.readable], handler: self)
    }

    /// Stops accepting (drain); pending connections in this listener's backlog are refused
    /// by the kernel, which is why the drain waits for quiescence first.
    func closeListener() {
        if let listenerRegistration { loop.deregister(listenerRegistration) }
        listenerRegistration = nil
        listener.close()
    }

    var isListening: Bool { listener.isOpen }

    /// Switches to a new policy for new requests, and closes the tunnels of tenants the new
    /// policy removed or disabled (everyone else's tunnels are untouched).
    func apply(policy: PolicySnapshot) {
        self.policy = policy
        policySlots = policy.tenantNames.map { stats.slot(for: $0) }
        deriveLimits()
        let enabled = Set(policy.tenants.filter(\.config.enabled).map(\.name))
        var cursor = firstTunnel
        while let tunnel = cursor {
            cursor = tunnel.next
            if let name = tunnel.tenantName, !enabled.contains(name) {
                tunnel.forceClose(why: policy.tenants.contains { $0.name == name } ? "tenant_disabled" : "tenant_removed")
            }
        }
    }

    // MARK: accept

    /// The process-wide tunnel cap (the config's, or less when descriptors do not allow it) and
    /// the caps on connections still sending their head: derived once per policy, not per accept.
    private var maxTunnels = 0
    private var pendingLimits = PendingLimits(maxTunnels: 0, loops: 1)

    private func deriveLimits() {
        maxTunnels = shared.descriptors.maxTunnels(configured: policy.config.limits.maxTunnels)
        pendingLimits = PendingLimits(maxTunnels: maxTunnels, loops: shared.descriptors.loops)
    }

    public func handle(events: EpollEvents, tag: UInt32) { acceptAll() }

    /// Drains the backlog (edge-triggered: stop only at EAGAIN). On descriptor exhaustion the
    /// loop retries shortly instead of spinning, and open tunnels are unaffected.
    private func acceptAll() {
        while listener.isOpen {
            var peer: SocketAddress?
            let accepted: Socket?
            do {
                accepted = try listener.accept(peer: &peer)
            } catch {
                if error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
                    refuseWhileOutOfDescriptors()
                    scheduleAcceptRetry()
                    return
                }
                if error.errno == .noBufferSpace || error.errno == .noMemory {
                    scheduleAcceptRetry()
                    return
                }
                continue  // ECONNABORTED and friends concern one connection only
            }
            guard let socket = accepted, let peer else { return }
            lastArrival = loop.iterationTime
            // A refused client still counts until its lingering close ends (at most 2 s), which
            // keeps a flood of refusals itself bounded.
            let open = shared.openConnections.wrappingAdd(1, ordering: .relaxed).newValue
            let full = open > maxTunnels
            let madeRoom = makeRoomForPending(from: peer.ip, full: full)
            // Buffers in use are the loop's memory in flight: at the cap a newcomer gets a 503
            // (whose reply takes one more) rather than the process an OOM kill.
            let refusal = full && !madeRoom ? "process_max_tunnels" : loop.buffers.inUse >= shared.memory.buffersPerLoop ? "memory_limit" : nil
            Tunnel.start(socket: socket, peer: peer, context: self, refusal: refusal)
        }
    }

    /// Out of descriptors, so no lingering close is possible: answer, send FIN, and discard
    /// what the client already sent (closing with unread bytes would reset the connection
    /// and destroy the reply).
    private func refuseOverLimit(_ socket: inout Socket, peer: SocketAddress) {
        let slot = statsSlot(for: policy.tenant(forClient: peer.ip), in: policy)
        stats.tenants[slot].results[TunnelResult.overLimit.rawValue] += 1
        let response = ProxyResponse.error(503, why: "out_of_descriptors")
        _ = try? response.withUnsafeBytes { raw throws(IOError) in try socket.write(from: raw) }
        try? socket.shutdownWrite()
        _ = socket.discardInput()
        socket.close()
    }

    /// Out of descriptors: answer the waiting clients 503 through the spare descriptor
    /// rather than leaving them in the backlog until they time out. Open tunnels are untouched.
    private func refuseWhileOutOfDescriptors() {
        while spare.isHeld {
            spare.release()
            var peer: SocketAddress?
            let accepted: Socket?
            do {
                accepted = try listener.accept(peer: &peer)
            } catch {
                accepted = nil
            }
            guard var socket = accepted, let peer else {
                spare.restore()
                return
            }
            refuseOverLimit(&socket, peer: peer)
            spare.restore()
        }
    }

    private func scheduleAcceptRetry() {
        guard !acceptRetryPending else { return }
        acceptRetryPending = true
        loop.schedule(after: .milliseconds(100), target: self, token: Self.acceptRetryToken)
    }

    public func timerFired(_ token: UInt64) {
        acceptRetryPending = false
        acceptAll()
    }

    // MARK: connections still sending their request head

    /// Drops the oldest waiting connection of `source` when it is at its cap, else the oldest
    /// of all when the loop is at its cap or every tunnel slot is taken (`full`); only ones
    /// waiting longer than `PendingLimits.grace`. True when one was dropped.
    private func makeRoomForPending(from source: IPAddress, full: Bool) -> Bool {
        guard let oldest = oldestPending else { return false }
        let limits = pendingLimits
        let now = loop.iterationTime
        func waitedTooLong(_ tunnel: Tunnel) -> Bool { now.since(tunnel.waitingSince) > PendingLimits.grace }
        if pendingBySource[source, default: 0] >= limits.perSourcePerLoop {
            var cursor: Tunnel? = oldest
            while let tunnel = cursor, tunnel.peerIP != source { cursor = tunnel.pendingNext }
            if let tunnel = cursor, waitedTooLong(tunnel) {
                tunnel.evictWhilePending()
                return true
            }
        }
        if (full || pendingCount >= limits.perLoop) && waitedTooLong(oldest) {
            oldest.evictWhilePending()
            return true
        }
        return false
    }

    /// A new connection starts waiting for its head (newest last).
    func addPending(_ tunnel: Tunnel) {
        tunnel.pendingNext = nil
        tunnel.pendingPrevious = newestPending
        if let newestPending { newestPending.pendingNext = tunnel } else { oldestPending = tunnel }
        newestPending = tunnel
        pendingCount += 1
        pendingBySource[tunnel.peerIP, default: 0] += 1
    }

    /// The connection's head is complete, or it closed. Call once per `addPending`.
    func removePending(_ tunnel: Tunnel) {
        if let previous = tunnel.pendingPrevious { previous.pendingNext = tunnel.pendingNext } else { oldestPending = tunnel.pendingNext }
        if let next = tunnel.pendingNext { next.pendingPrevious = tunnel.pendingPrevious } else { newestPending = tunnel.pendingPrevious }
        tunnel.pendingNext = nil
        tunnel.pendingPrevious = nil
        pendingCount -= 1
        let left = pendingBySource[tunnel.peerIP, default: 1] - 1
        pendingBySource[tunnel.peerIP] = left > 0 ? left : nil
    }

    // MARK: tunnel registry

    /// Unique in the process: this loop's index in the top 16 bits, a serial below (2^48
    /// tunnels per loop before it wraps: 9,000 years at a million a second).
    func newTunnelID() -> UInt64 {
        tunnelSerial &+= 1
        return UInt64(index) << 48 | (tunnelSerial & 0xffff_ffff_ffff)
    }

    private var tunnelSerial: UInt64 = 0

    func link(_ tunnel: Tunnel) {
        tunnel.next = firstTunnel
        firstTunnel?.previous = tunnel
        firstTunnel = tunnel
        tunnelCount += 1
    }

    func unlink(_ tunnel: Tunnel) {
        if let previous = tunnel.previous { previous.next = tunnel.next } else { firstTunnel = tunnel.next }
        tunnel.next?.previous = tunnel.previous
        tunnel.next = nil
        tunnel.previous = nil
        tunnelCount -= 1
        shared.openConnections.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Closes every open tunnel (drain budget exhausted).
    func closeAllTunnels() {
        while let tunnel = firstTunnel { tunnel.forceClose() }
    }

    /// A copy of the open tunnels for /tunnels.
    func tunnelSnapshots() -> [TunnelSnapshot] {
        var list: [TunnelSnapshot] = []
        var cursor = firstTunnel
        let now = loop.now()
        while let tunnel = cursor {
            list.append(tunnel.snapshot(now: now))
            cursor = tunnel.next
        }
        return list
    }
}

/// One row of /tunnels.
public struct TunnelSnapshot: Sendable {
    /// The audit line's `tunnel_id`, so a row here and the line at its end can be matched.
    public var id: String
    public var tenant: String
    public var client: String
    public var destination: String
    public var state: String
    public var bytesUp: UInt64
    public var bytesDown: UInt64
    public var ageSeconds: Double

    var json: String {
        "{\"id\":\(JSON.quote(id)),\"tenant\":\(JSON.quote(tenant)),\"client\":\(JSON.quote(client)),\"destination\":\(JSON.quote(destination)),"
            + "\"state\":\(JSON.quote(state)),\"bytesUp\":\(bytesUp),\"bytesDown\":\(bytesDown),"
            + "\"ageSeconds\":\((ageSeconds * 1000).rounded() / 1000)}"
    }
}
