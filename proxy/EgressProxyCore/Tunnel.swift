import EgressLoop
import EgressPosix

/// One client connection, from accept to close, as a sequence of phases (`TunnelLifecycle`):
/// the way to the 200 (`TunnelOpening`: head, decision, lookup off the loop, dial, a parent
/// proxy's reply), then relay (`TunnelRelay`); every count and audit line goes through
/// `TunnelRecorder`. This class only sequences them and owns what must be released.
///
/// Confined to its loop's thread. Owns two sockets and their registrations (`sockets`), the
/// tenant slot and any lookup (in `opening`), its timer and, only while bytes are in flight, pooled buffers
/// and pipes (in `relay`); `finish` returns all of them, exactly once, and is the only way
/// to `.closed`.
final class Tunnel: LoopHandler, TimerTarget {
    typealias Phase = TunnelLifecycle.Phase

    private static let lingerTimeout: Duration = .seconds(2)

    unowned let context: ProxyLoop
    var next: Tunnel?
    weak var previous: Tunnel?
    /// Links in the loop's list of connections still sending their head (`ProxyLoop.addPending`).
    var pendingNext: Tunnel?
    weak var pendingPrevious: Tunnel?
    private var isPending = false

    private var sockets: TunnelSockets
    /// The client: the accepted connection's peer, or the source a trusted balancer's PROXY
    /// protocol header names (set once, before the request head is read).
    /// An address and a port rather than a `SocketAddress` (a whole sockaddr_storage, 133
    /// bytes), because every tunnel keeps it for its whole life.
    private(set) var peerIP: IPAddress
    private var peerPort: UInt16
    private var peer: SocketAddress {
        get { SocketAddress(ip: peerIP, port: peerPort) }
        set { (peerIP, peerPort) = (newValue.ip, newValue.port) }
    }
    private var lifecycle = TunnelLifecycle()
    /// Everything only the way to the 200 needs (head, decision, lookup, dial, tenant slot).
    private var opening: TunnelOpening
    /// Also the head buffer (`up`) while reading, and the error reply (`down`) while lingering.
    private var relay: TunnelRelay
    private var recorder: TunnelRecorder
    /// The tunnel keeps the snapshot it was accepted under: one policy from head to dial.
    private let policy: PolicySnapshot
    private var tenant: PolicySnapshot.Tenant? { opening.tenant(in: policy) }
    private var timer: TimerHandle?
    private let acceptedAt: Instant
    /// The audit line's and /tunnels' `tunnel_id`.
    private let id: UInt64

    /// When the connection was accepted (it waits for its head from then).
    var waitingSince: Instant { acceptedAt }
    /// The tenant this tunnel was admitted for, nil before authentication.
    var tenantName: String? { tenant?.name }

    /// Takes over an accepted client. With a `refusal` reason (a process-wide limit), the client
    /// only gets a 503 (through the same lingering close as every refusal, so the reply is not
    /// lost to a reset).
    static func start(socket: consuming Socket, peer: SocketAddress, context: ProxyLoop, refusal: String? = nil) {
        let tunnel = Tunnel(socket: socket, peer: peer, context: context)
        context.link(tunnel)
        do {
            try tunnel.sockets.registerClient(on: context.loop, handler: tunnel)
        } catch {
            tunnel.finish(result: nil)
            return
        }
        if let refusal {
            tunnel.reject(.init(status: 503, result: .overLimit, why: refusal))
            return
        }
        context.addPending(tunnel)
        tunnel.isPending = true
        tunnel.arm(at: tunnel.acceptedAt + context.policy.config.timeouts.header)
    }

    private init(socket: consuming Socket, peer: SocketAddress, context: ProxyLoop) {
        sockets = TunnelSockets(client: socket)
        peerIP = peer.ip
        peerPort = peer.port
        self.context = context
        policy = context.policy
        let trusted = policy.config.proxyProtocolSources
        opening = TunnelOpening(headerLimit: min(policy.config.limits.headerBytes, context.loop.buffers.bufferSize),
                                  trustsProxyHeader: !trusted.isEmpty && trusted.contains { $0.contains(peer.ip) })
        acceptedAt = context.loop.iterationTime
        id = context.newTunnelID()
        relay = TunnelRelay(now: acceptedAt)
        recorder = TunnelRecorder(slot: context.statsSlot(for: policy.tenant(forClient: peer.ip), in: policy))
    }

    // MARK: events

    func handle(events: EpollEvents, tag: UInt32) {
        perform(lifecycle.handle(.ready(
            client: tag == TunnelSockets.clientTag, readable: !events.isDisjoint(with: [.readable, .readHangup]),
            writable: events.contains(.writable), gone: !events.isDisjoint(with: [.hangup, .error]))))
    }

    func timerFired(_ token: UInt64) {
        timer = nil
        perform(lifecycle.handle(.timer(now: context.loop.now(), lastActivity: relay.lastActivity, limits: limits)))
    }

    private var phase: Phase { lifecycle.phase }
    private var pools: RelayPools { RelayPools(context.loop) }
    private var limits: TunnelLifecycle.Limits { TunnelLifecycle.Limits(policy.config.timeouts) }

    /// Moves the lifecycle on after a step this tunnel completed.
    private func enter(_ next: Phase, at now: Instant? = nil) {
        perform(lifecycle.handle(.entered(next, at: now ?? context.loop.iterationTime, limits: limits)))
    }

    private func perform(_ action: TunnelLifecycle.Action) {
        switch action {
        case .none: break
        case .readHead: readHead()
        case .finishConnect: finishConnect()
        case .handshake: handshake()
        case .relay(let side, let readable, let writable):
            relay.ready(side, readable: readable, writable: writable)
            drive()
        case .linger: linger()
        case .refuse(let refusal): reject(refusal)
        case .finish(let established, let why): finish(result: established ? .established : nil, why: why)
        case .arm(let deadline): arm(at: deadline)
        }
    }

    private func arm(at deadline: Instant) {
        if let timer { context.loop.cancel(timer) }
        timer = context.loop.schedule(at: deadline, target: self)
    }

    // MARK: the way to the 200

    private func readHead() {
        guard phase == .readingHead else { return }
        let next = opening.readHead(from: sockets.client, into: &relay.up, pools: pools, peer: &peer, recorder: &recorder,
                                    policy: policy, context: context)
        if case .wait = next { return }
        leavePending()
        follow(next)
    }

    /// Performs what a step of the opening answered. Phases are entered before the step that
    /// works in them, because a dial or a parent's reply can complete within the call.
    private func follow(_ next: TunnelOpening.Next) {
        switch next {
        case .wait:
            return
        case .end(let why):
            finish(result: nil, why: why)
        case .refuse(let refusal, let detail):
            reject(refusal, detail: detail)
        case .lookUp(let targets):
            startLookup(targets)
        case .dial:
            // A dial after a lookup keeps the deadline armed when the lookup began.
            if phase != .resolving { arm(at: context.loop.now() + policy.config.timeouts.dial) }
            enter(.connecting)
            follow(opening.dial(&sockets, loop: context.loop, handler: self, policy: policy))
        case .chain:
            enter(.chaining)
            handshake()
        case .established:
            established()
        }
    }

    /// Both legs' names in one resolver job; the answer comes back on this loop.
    private func startLookup(_ targets: DialTargets) {
        enter(.resolving)
        arm(at: context.loop.now() + policy.config.timeouts.dial)
        let tunnel = LoopBound(self, on: context.loop)
        let ticket = WorkTicket()
        opening.looking(ticket)
        let queued = targets.lookUp(on: context.shared.resolver, key: tenant?.name ?? "", ticket: ticket, answerOn: context.loop) {
            tunnel.value.resolved($0)
        }
        if !queued { reject(.init(status: 503, result: .overLimit, why: "dns_queue_full")) }
    }

    private func resolved(_ answers: DialTargets.Answers) {
        guard phase == .resolving,  // else the client left or the dial timed out
            let next = opening.resolved(answers, recorder: &recorder, policy: policy, stats: &context.stats)
        else { return }
        follow(next)
    }

    private func finishConnect() {
        follow(opening.finishConnect(&sockets, loop: context.loop, handler: self, policy: policy))
    }

    private func handshake() {
        follow(opening.handshake(sockets.upstream, reply: &relay.down, buffers: context.loop.buffers))
    }

    private func established() {
        guard let head = opening.head else { return }
        let now = context.loop.now()
        switch relay.begin(for: head, now: now, splice: policy.config.splice, pools: pools) {
        case .failure(let refusal):
            reject(refusal)
        case .success(let replyBytes):
            opening.settle()
            enter(.relaying, at: now)  // arms the idle and lifetime timer
            recorder.replyBytesUncounted = replyBytes
            recorder.established(connectSeconds: now.since(acceptedAt).seconds, stats: &context.stats)
            drive()
        }
    }

    /// Relays until the machine waits; a completed forward lingers for the client's FIN.
    private func drive() {
        guard phase == .relaying else { return }
        let environment = TunnelRelay.Environment(pools: pools, now: context.loop.iterationTime)
        switch relay.drive(client: sockets.client, upstream: sockets.upstream, in: environment, recorder: &recorder, stats: &context.stats) {
        case nil: return
        case .completed?:
            guard case .forward? = opening.head?.kind else { return finish(result: .established, why: "completed") }
            recordEnd(why: "completed")
            beginLinger()
        case .failed?: finish(result: .established, why: "io_error")
        }
    }
}

// MARK: refusals and closing

extension Tunnel {
    /// Sends an error reply, then lingers (see `Phase.lingering`).
    /// - Parameter detail: resolver, kernel or parent text behind the failure: in the audit
    ///   line only, never in the reply (a parameter, not a stored field: idle tunnels stay small).
    private func reject(_ refusal: TunnelAdmission.Refusal, detail: String? = nil) {
        opening.abandonLookup()
        leavePending()
        recorder.refused(refusal, stats: &context.stats)
        audit(result: refusal.result.label, status: refusal.status, error: detail)
        beginLinger(reply: ProxyResponse.error(refusal.status, why: refusal.why, extraHeaders: refusal.extraHeaders))
    }

    /// The upstream side is done (refused, or a forwarded response complete and the client
    /// given its FIN): everything but the client goes back now, on a clean slate (nothing of
    /// the request or the upstream is kept); only `reply`, if any, is still to be sent.
    private func beginLinger(reply: [UInt8]? = nil) {
        opening.releaseTenantSlot(policy: policy)
        sockets.closeUpstream(loop: context.loop)
        relay.releaseAll(pools: pools)
        if let reply {
            let buffer = context.loop.buffers.acquire()
            reply.withUnsafeBytes { _ = buffer.append($0) }
            relay.down.buffer = buffer
        }
        enter(.lingering)
        arm(at: context.loop.now() + Self.lingerTimeout)
        linger()
    }

    /// Sends what is left of our reply and our FIN, then discards whatever the client still
    /// sends until its FIN (closing with unread bytes would reset the connection and could
    /// destroy the reply before the client read it).
    private func linger() {
        switch relay.flushReply(to: sockets.client, pools: pools) {
        case .pending: return
        case .failed: return finish(result: nil)
        case .done: if sockets.client.discardInput() == .closed { finish(result: nil) }
        }
    }

    /// Dropped to make room for a newer connection (see `PendingLimits`): counted and logged
    /// like a header timeout, closed at once so the slot and descriptor are free now.
    func evictWhilePending() {
        guard phase == .readingHead else { return }
        recorder.timedOut(why: "pending_evicted", stats: &context.stats)
        audit(result: TunnelResult.timeout.label, status: 408)
        finish(result: nil)
    }

    /// Closes now: drain budget exhausted, or the tenant was removed or disabled by a reload.
    func forceClose(why: String = "drain_timeout") {
        finish(result: phase == .relaying ? .established : nil, why: why)
    }

    private func leavePending() {
        guard isPending else { return }
        isPending = false
        context.removePending(self)
    }


    private func recordEnd(why: String) {
        let lifetime = context.loop.now().since(lifecycle.establishedAt ?? acceptedAt).seconds
        if recorder.ended(why: why, lifetimeSeconds: lifetime, stats: &context.stats) {
            audit(result: TunnelResult.established.label, status: 200)
        }
    }

    /// Releases everything, exactly once. `result` is `.established` for tunnels that were
    /// established (their end is recorded here) and nil otherwise. `TunnelSockets` deregisters
    /// before it closes each descriptor, so the loop never sees an event for a number the
    /// kernel may reuse.
    private func finish(result: TunnelResult?, why: String = "") {
        guard phase != .closed else { return }
        opening.abandonLookup()
        leavePending()
        if result == .established { recordEnd(why: why) }
        enter(.closed)
        if let timer { context.loop.cancel(timer) }
        timer = nil
        opening.releaseTenantSlot(policy: policy)
        sockets.closeAll(loop: context.loop)
        relay.releaseAll(pools: pools)
        context.unlink(self)
    }

    // MARK: observability

    /// What the audit line and `/tunnels` say about this tunnel beyond the recorder's counts.
    private func facts(now: Instant) -> TunnelRecorder.Facts {
        TunnelRecorder.Facts(
            id: id, client: peer, tenant: tenant?.name ?? context.stats.names[recorder.slot], destination: opening.head?.authority,
            dialed: opening.dialer.dialed, parent: opening.dialer.isChained ? tenant?.config.parentProxy?.authority : nil,
            closedFirst: relay.machine.firstEOF, ageSeconds: now.since(acceptedAt).seconds,
            resolveMilliseconds: lifecycle.resolveMilliseconds, connectMilliseconds: lifecycle.connectMilliseconds)
    }

    private func audit(result: String, status: Int, error: String? = nil) {
        let logger = context.shared.logger
        guard logger.logLevel <= .info else { return }
        recorder.audit(result: result, status: status, error: error, facts: facts(now: context.loop.now()), logger: logger)
    }

    func snapshot(now: Instant) -> TunnelSnapshot { recorder.snapshot(facts(now: now), state: phase.rawValue) }
}
