import EgressLoop
import EgressPosix
import GatewayOps
import SystemPackage

/// One client connection, from accept to close, as a sequence of phases: read the head
/// (`TunnelHeadReader`), decide (`TunnelAdmission`), resolve off the loop, dial
/// (`TunnelDialer`, through a parent proxy when the tenant has one), then relay
/// (`TunnelRelay`); every count and audit line goes through `TunnelRecorder`. This class only
/// sequences them and owns what must be released.
///
/// Confined to its loop's thread. Owns two sockets (client, upstream), their registrations,
/// the tenant slot, any timer and lookup, and, only while bytes are in flight, pooled buffers
/// and pipes (in `relay`); `finish` returns all of them, exactly once, and is the only way
/// to `.closed`.
final class Tunnel: LoopHandler, TimerTarget {
    /// Where the connection is in its lifecycle (the raw value shows in /tunnels).
    enum Phase: String {
        case readingHead = "reading_head"
        case resolving
        case connecting
        /// Connected to the tenant's parent proxy; our CONNECT to it is out, its reply awaited.
        case chaining = "parent_connect"
        case relaying
        /// Our error reply (or a forwarded response) is out; discarding client bytes until its
        /// FIN or a short timeout, so closing does not reset a client that is still sending.
        case lingering
        case closed
    }

    private static let clientTag: UInt32 = 0
    private static let upstreamTag: UInt32 = 1
    private static let lingerTimeout: Duration = .seconds(2)

    unowned let context: ProxyLoop
    var next: Tunnel?
    weak var previous: Tunnel?
    /// Links in the loop's list of connections still sending their head (`ProxyLoop.addPending`).
    var pendingNext: Tunnel?
    weak var pendingPrevious: Tunnel?
    private var isPending = false

    private var client: Socket
    private var upstream: Socket = .closed
    private var clientRegistration: Registration?
    private var upstreamRegistration: Registration?
    /// The client: the accepted connection's peer, or the source a trusted balancer's PROXY
    /// protocol header names (set once, before the request head is read).
    private var peer: SocketAddress
    private(set) var phase = Phase.readingHead
    private var reader: TunnelHeadReader
    /// Also the head buffer (`up`) while reading, and the error reply (`down`) while lingering.
    private var relay: TunnelRelay
    private var recorder: TunnelRecorder
    private var dialer = TunnelDialer()
    /// The tunnel keeps the snapshot it was accepted under: one policy from head to dial.
    private let policy: PolicySnapshot
    private var head: RequestHead?
    private var tenant: PolicySnapshot.Tenant?
    private var timer: TimerHandle?
    private let acceptedAt: Instant
    private var establishedAt: Instant?
    /// Holds one of the tenant's `maxTunnels` slots (released in `finish` or on refusal).
    private var holdsTenantSlot = false
    /// The queued or running lookup, cancelled when the tunnel ends before it answers (so a
    /// lookup nobody waits for never takes a resolver thread).
    private var lookup: WorkTicket?

    var peerIP: IPAddress { peer.ip }
    /// When the connection was accepted (it waits for its head from then).
    var waitingSince: Instant { acceptedAt }
    /// The tenant this tunnel was admitted for, nil before authentication.
    var tenantName: String? { tenant?.name }

    /// Takes over an accepted client. With `overLimit`, the client only gets a 503 (through the
    /// same lingering close as every refusal, so the reply is not lost to a reset).
    static func start(socket: consuming Socket, peer: SocketAddress, context: ProxyLoop, overLimit: Bool = false) {
        let tunnel = Tunnel(socket: socket, peer: peer, context: context)
        context.link(tunnel)
        do {
            tunnel.clientRegistration = try context.loop.register(
                tunnel.client.descriptor, events: [.readable, .writable, .readHangup], handler: tunnel, tag: clientTag)
        } catch {
            tunnel.finish(result: nil)
            return
        }
        if overLimit {
            tunnel.reject(.init(status: 503, result: .overLimit, why: "process_max_tunnels"))
            return
        }
        context.addPending(tunnel)
        tunnel.isPending = true
        tunnel.arm(at: tunnel.acceptedAt + context.policy.config.timeouts.header)
    }

    private init(socket: consuming Socket, peer: SocketAddress, context: ProxyLoop) {
        client = socket
        self.peer = peer
        self.context = context
        policy = context.policy
        let trusted = policy.config.proxyProtocolSources
        reader = TunnelHeadReader(headerLimit: min(policy.config.limits.headerBytes, context.loop.buffers.bufferSize),
                                  trustsProxyHeader: !trusted.isEmpty && trusted.contains { $0.contains(peer.ip) })
        acceptedAt = context.loop.iterationTime
        relay = TunnelRelay(now: acceptedAt)
        recorder = TunnelRecorder(slot: context.statsSlot(for: policy.tenant(forClient: peer.ip), in: policy))
    }

    // MARK: events

    func handle(events: EpollEvents, tag: UInt32) {
        let isClient = tag == Self.clientTag
        let gone = !events.isDisjoint(with: [.hangup, .error])
        switch phase {
        case .readingHead:
            if isClient { readHead() }
        case .resolving:
            if isClient && gone { finish(result: nil, why: "client_gone") }
        case .connecting, .chaining:
            if !isClient {
                phase == .connecting ? finishConnect() : handshake()
            } else if gone {
                finish(result: nil, why: "client_gone")
            }
        case .relaying:
            relay.ready(isClient ? .client : .upstream, readable: !events.isDisjoint(with: [.readable, .readHangup, .hangup, .error]),
                        writable: !events.isDisjoint(with: [.writable, .hangup, .error]))
            drive()
        case .lingering:
            if isClient { linger() }
        case .closed:
            break
        }
    }

    func timerFired(_ token: UInt64) {
        timer = nil
        switch phase {
        case .readingHead:
            reject(.init(status: 408, result: .timeout, why: "header_timeout"))
        case .resolving, .connecting, .chaining:
            reject(.init(status: 502, result: .dialFailed, why: "dial_timeout"))
        case .relaying:
            let now = context.loop.now()
            let idleDeadline = relay.lastActivity + policy.config.timeouts.idle
            let lifetimeDeadline = (establishedAt ?? acceptedAt) + policy.config.timeouts.lifetime
            if now >= lifetimeDeadline {
                finish(result: .established, why: "lifetime")
            } else if now >= idleDeadline {
                finish(result: .established, why: "idle_timeout")
            } else {
                arm(at: min(idleDeadline, lifetimeDeadline))
            }
        case .lingering:
            finish(result: nil)
        case .closed:
            break
        }
    }

    private func arm(at deadline: Instant) {
        if let timer { context.loop.cancel(timer) }
        timer = context.loop.schedule(at: deadline, target: self)
    }

    // MARK: head, decision, lookup

    private func readHead() {
        while phase == .readingHead {
            let buffer = relay.up.buffer ?? context.loop.buffers.acquire()
            relay.up.buffer = buffer
            let result: IOResult<Int>
            do {
                result = try client.read(into: buffer.free)
            } catch {
                finish(result: nil, why: "client_error")
                return
            }
            switch result {
            case .wouldBlock:
                if buffer.isEmpty { relay.up.releaseBuffer(loop: context.loop) }
                return
            case .processed(0):
                finish(result: nil, why: "client_closed_before_request")
                return
            case .processed(let count):
                buffer.writeIndex += count
                parseHead(buffer)
            }
        }
    }

    private func parseHead(_ buffer: IOBuffer) {
        while true {
            switch reader.step(buffer) {
            case .needMore:
                return
            case .source(let source):
                peer = source
                recorder.slot = context.statsSlot(for: policy.tenant(forClient: source.ip), in: policy)
            case .refused(let refusal, let detail):
                reject(refusal, detail: detail)
                return
            case .complete(let parsed):
                received(parsed)
                return
            }
        }
    }

    private func received(_ parsed: RequestHead) {
        leavePending()
        head = parsed
        let decision = TunnelAdmission.decide(parsed, client: peer.ip, policy: policy, now: context.loop.now())
        if let chosen = decision.tenant {
            tenant = chosen
            recorder.slot = context.statsSlot(for: chosen, in: policy)
        }
        switch decision.outcome {
        case .failure(let refusal):
            reject(refusal)
        case .success(let next):
            recorder.report(decision.reported, stats: &context.stats)
            route(next, within: decision.ranges)
        }
    }

    /// Dials at once when every address is known (IP literals, direct or to an IP parent);
    /// otherwise looks the names up off the loop first, the destination's and the parent's
    /// in one job.
    private func route(_ next: TunnelAdmission.Next, within ranges: [CIDR]?) {
        let targets = DialTargets(next, parent: tenant?.config.parentProxy)
        if let known = targets.known { return admit(known.destination, within: ranges, parentAddresses: known.parent) }
        phase = .resolving
        arm(at: context.loop.now() + policy.config.timeouts.dial)
        let bound = LoopBound(self, on: context.loop)
        let loop = context.loop
        let ticket = WorkTicket()
        lookup = ticket
        let queued = context.shared.resolver.submit(key: tenant?.name ?? "", ticket: ticket) {
            let found = targets.destination.resolve()
            let parent = targets.parent?.resolve() ?? .success([])
            loop.execute { bound.value.resolved(found, parent: parent, within: ranges) }
        }
        if !queued { reject(.init(status: 503, result: .overLimit, why: "dns_queue_full")) }
    }

    private func resolved(_ found: Result<[SocketAddress], Posix.ResolveError>, parent: Result<[SocketAddress], Posix.ResolveError>,
                          within ranges: [CIDR]?) {
        guard phase == .resolving else { return }  // the client left or the dial timed out
        lookup = nil
        switch (found, parent) {
        case (.failure(let error), _):
            reject(.init(status: 502, result: .dnsFailed, why: "dns_failed"), detail: "\(error)")
        case (_, .failure(let error)):
            reject(.init(status: 502, result: .dnsFailed, why: "parent_dns_failed"), detail: "\(error)")
        case (.success(let addresses), .success(let parentAddresses)):
            admit(addresses, within: ranges, parentAddresses: parentAddresses)
        }
    }

    /// Screens the destination's candidates, takes a tenant slot, and dials: the admitted
    /// addresses, or the parent's when the tenant chains.
    private func admit(_ addresses: [SocketAddress], within ranges: [CIDR]?, parentAddresses: [SocketAddress]) {
        guard let tenant, let head else { return }
        switch TunnelAdmission.screen(addresses, tenant: tenant, within: ranges, policy: policy) {
        case .failure(let refusal):
            reject(refusal)
            return
        case .success(let screened):
            recorder.report(screened.reported, stats: &context.stats)
            guard tenant.runtime.acquire(limit: tenant.config.maxTunnels) else {
                reject(.init(status: 503, result: .overLimit, why: "tenant_max_tunnels"))
                return
            }
            holdsTenantSlot = true
            dialer = TunnelDialer(addresses: screened.addresses, parent: tenant.config.parentProxy,
                                  parentAddresses: parentAddresses, destination: head.authority)
        }
        if phase != .resolving { arm(at: context.loop.now() + policy.config.timeouts.dial) }
        phase = .connecting
        dialNext()
    }

    // MARK: dial

    private func dialNext() {
        while true {
            switch dialer.dial(into: &upstream, egress: tenant?.config.egressAddress) {
            case .outOfDescriptors:
                reject(.init(status: 503, result: .overLimit, why: "out_of_descriptors"))
            case .exhausted(let detail):
                reject(.init(status: 502, result: .dialFailed, why: "dial_failed"), detail: detail)
            case .opened(let connected):
                do {
                    upstreamRegistration = try context.loop.register(
                        upstream.descriptor, events: [.readable, .writable, .readHangup], handler: self, tag: Self.upstreamTag)
                } catch {
                    dialer.failed(error.errno)
                    upstream.close()
                    continue
                }
                if connected { self.connected() }
            }
            return
        }
    }

    private func finishConnect() {
        guard upstream.isOpen else { return }
        if let error = upstream.pendingError() {
            dialer.failed(error)
            closeUpstream()
            dialNext()
            return
        }
        connected()
    }

    private func connected() {
        guard dialer.isChained else { return established() }
        phase = .chaining
        handshake()
    }

    /// Our CONNECT to the parent and its reply; the reply is read into `relay.down`, where
    /// whatever follows its head (the destination's first bytes) stays for the client.
    private func handshake() {
        let reply = relay.down.buffer ?? context.loop.buffers.acquire()
        relay.down.buffer = reply
        switch dialer.handshake(upstream, reply: reply) {
        case .wait:
            return
        case .established(let length):
            reply.readIndex += length
            established()
        case .refused(let line):
            reject(.init(status: 502, result: .dialFailed, why: "parent_refused"), detail: line)
        case .failed(let detail):
            reject(.init(status: 502, result: .dialFailed, why: "parent_failed"), detail: detail)
        }
    }

    private func established() {
        guard let head else { return }
        let loop = context.loop
        let now = loop.now()
        // A parent's bytes after its 200 (a server that speaks first), to go after our reply.
        var early = relay.down.buffer
        relay.down.buffer = nil
        defer { if let early { loop.buffers.release(early) } }
        var budget: Int?
        switch head.kind {
        case .connect:
            let reply = loop.buffers.acquire()
            ProxyResponse.connectEstablished.withUnsafeBytes { _ = reply.append($0) }
            recorder.replyBytesUncounted = reply.pendingCount
            if let early { _ = reply.append(early.pending) }  // at most `ParentReply.limit`, so it fits
            relay.down.buffer = reply
        case .forward(let method, let authority, let path):
            let rewritten = ForwardRequest.serialize(head, method: method, authority: authority, path: path)
            let body = (try? ForwardRequest.bodyLength(head).get()) ?? 0
            let buffer = loop.buffers.acquire()
            rewritten.withUnsafeBytes { _ = buffer.append($0) }
            // Only the body's bytes go with the head: whatever the client sent after them (a
            // pipelined second request) was never decided on, so it never leaves.
            let wanted = min(relay.up.buffer?.pendingCount ?? 0, body)
            let copied = relay.up.buffer.map { buffer.append(UnsafeRawBufferPointer(rebasing: $0.pending.prefix(wanted))) } ?? 0
            relay.up.releaseBuffer(loop: loop)
            relay.up.buffer = buffer
            if copied < wanted { return reject(.init(status: 431, result: .badRequest, why: "forward_head_too_large")) }
            if let kept = early, !kept.isEmpty {
                relay.down.buffer = kept
                early = nil
            }
            budget = rewritten.count + body
        }
        phase = .relaying
        establishedAt = now
        recorder.established(connectSeconds: now.since(acceptedAt).seconds, stats: &context.stats)
        relay.begin(now: now, loop: loop, upstreamBudget: budget)
        arm(at: min(now + policy.config.timeouts.idle, now + policy.config.timeouts.lifetime))
        drive()
    }

    /// Relays until the machine waits; a completed forward lingers for the client's FIN.
    private func drive() {
        guard phase == .relaying else { return }
        let environment = TunnelRelay.Environment(loop: context.loop, useSplice: context.shared.useSplice)
        switch relay.drive(client: client, upstream: upstream, in: environment, recorder: &recorder, stats: &context.stats) {
        case nil: return
        case .completed?:
            if case .forward? = head?.kind { beginLinger() } else { finish(result: .established, why: "completed") }
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
        abandonLookup()
        leavePending()
        recorder.refused(refusal, stats: &context.stats)
        audit(result: refusal.result.label, status: refusal.status, error: detail)
        // The reply goes out on a clean slate: nothing of the request or the upstream is kept.
        releaseTenantSlot()
        closeUpstream()
        relay.releaseAll(loop: context.loop)
        let buffer = context.loop.buffers.acquire()
        ProxyResponse.error(refusal.status, why: refusal.why, extraHeaders: refusal.extraHeaders).withUnsafeBytes { _ = buffer.append($0) }
        relay.down.buffer = buffer
        phase = .lingering
        arm(at: context.loop.now() + Self.lingerTimeout)
        linger()
    }

    /// Forwarded response complete: the client got its FIN; drain its remaining bytes.
    private func beginLinger() {
        recordEnd(why: "completed")
        releaseTenantSlot()
        closeUpstream()
        relay.releaseAll(loop: context.loop)
        phase = .lingering
        arm(at: context.loop.now() + Self.lingerTimeout)
        linger()
    }

    /// Writes what is left of our reply, sends our FIN, then discards whatever the client
    /// still sends until its FIN (closing with unread bytes would reset the connection and
    /// could destroy the reply before the client read it).
    private func linger() {
        if let buffer = relay.down.buffer {
            while !buffer.isEmpty {
                let result: IOResult<Int>
                do {
                    result = try client.write(from: buffer.pending)
                } catch {
                    return finish(result: nil)
                }
                switch result {
                case .wouldBlock: return
                case .processed(let count): buffer.readIndex += count
                }
            }
            relay.down.releaseBuffer(loop: context.loop)
            try? client.shutdownWrite()
        }
        if client.discardInput() == .closed { finish(result: nil) }
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

    private func abandonLookup() {
        lookup?.cancel()
        lookup = nil
    }

    private func releaseTenantSlot() {
        if holdsTenantSlot { tenant?.runtime.release() }
        holdsTenantSlot = false
    }

    private func closeUpstream() {
        if let upstreamRegistration { context.loop.deregister(upstreamRegistration) }
        upstreamRegistration = nil
        upstream.close()
    }

    private func recordEnd(why: String) {
        let lifetime = context.loop.now().since(establishedAt ?? acceptedAt).seconds
        if recorder.ended(why: why, lifetimeSeconds: lifetime, stats: &context.stats) {
            audit(result: TunnelResult.established.label, status: 200)
        }
    }

    /// Releases everything, exactly once. `result` is `.established` for tunnels that were
    /// established (their end is recorded here) and nil otherwise. Deregisters before closing
    /// each descriptor, so the loop never sees an event for a number the kernel may reuse.
    private func finish(result: TunnelResult?, why: String = "") {
        guard phase != .closed else { return }
        abandonLookup()
        leavePending()
        if result == .established { recordEnd(why: why) }
        phase = .closed
        if let timer { context.loop.cancel(timer) }
        timer = nil
        closeUpstream()
        releaseTenantSlot()
        if let clientRegistration { context.loop.deregister(clientRegistration) }
        clientRegistration = nil
        client.close()
        relay.releaseAll(loop: context.loop)
        context.unlink(self)
    }

    // MARK: observability

    private func audit(result: String, status: Int, error: String? = nil) {
        let logger = context.shared.logger
        guard logger.logLevel <= .info else { return }
        let facts = TunnelRecorder.Facts(
            client: peer, tenant: tenant?.name ?? context.stats.names[recorder.slot], destination: head?.authority,
            dialed: dialer.dialed, parent: dialer.isChained ? tenant?.config.parentProxy?.authority : nil,
            closedFirst: relay.machine.firstEOF, ageSeconds: context.loop.now().since(acceptedAt).seconds)
        recorder.audit(result: result, status: status, error: error, facts: facts, logger: logger)
    }

    func snapshot(now: Instant) -> TunnelSnapshot {
        TunnelSnapshot(
            tenant: tenant?.name ?? context.stats.names[recorder.slot], client: peer.description,
            destination: head?.authority.description ?? "", state: phase.rawValue, bytesUp: recorder.bytesUp,
            bytesDown: recorder.bytesDown, ageSeconds: now.since(acceptedAt).seconds)
    }
}
