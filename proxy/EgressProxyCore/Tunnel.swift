import EgressLoop
import EgressPosix
import GatewayOps
import Logging
import SystemPackage

/// One client connection, from accept to close: read the request head, apply policy,
/// resolve off the loop, dial non-blocking, reply, then relay through `RelayStateMachine`.
///
/// Confined to its loop's thread. Owns two sockets (client, upstream) and, only while
/// bytes are in flight, up to two pooled buffers; `finish` returns all of them, exactly once.
final class Tunnel: LoopHandler, TimerTarget {
    /// Where the connection is in its lifecycle (the raw value shows in /tunnels).
    enum Phase: String {
        case readingHead = "reading_head"
        case resolving
        case connecting
        case relaying
        /// Our error reply (or a forwarded response) is out; discarding client bytes until its
        /// FIN or a short timeout, so closing does not reset a client that is still sending.
        case lingering
        case closed
    }

    private static let clientTag: UInt32 = 0
    private static let upstreamTag: UInt32 = 1
    private static let lingerTimeout: Duration = .seconds(2)
    /// Bytes a direction relays through buffers before it switches to a splice pipe.
    static let spliceThreshold: UInt64 = 64 * 1024

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
    /// The peer is a trusted balancer: a PROXY protocol header may come first.
    private var awaitingProxyHeader: Bool
    private(set) var phase = Phase.readingHead
    private var parser: RequestHeadParser
    /// Client-to-destination bytes; during `readingHead` it holds the request head.
    private var upBuffer: IOBuffer?
    /// Destination-to-client bytes (first the 200 reply), or our error reply when lingering.
    private var downBuffer: IOBuffer?
    /// Once a direction has moved `spliceThreshold` bytes, it relays through a pooled splice
    /// pipe, so bulk bytes never enter user space; `*PipeBytes` is what sits in it.
    private var upPipe: SplicePipe?
    private var downPipe: SplicePipe?
    private var upPipeBytes = 0
    private var downPipeBytes = 0
    private var relay = RelayStateMachine(earlyBytes: 0, replyBytes: 0)
    private var policy: PolicySnapshot
    private var head: RequestHead?
    private var tenant: PolicySnapshot.Tenant?
    private var statsSlot: Int
    private var candidates: [SocketAddress] = []
    private var nextCandidate = 0
    private var dialed: SocketAddress?
    private var lastDialError: Errno?
    private var timer: TimerHandle?
    private let acceptedAt: Instant
    private var establishedAt: Instant?
    private var lastActivity: Instant
    private var bytesUp: UInt64 = 0
    private var bytesDown: UInt64 = 0
    /// Bytes of our own 200 reply still at the front of the downstream buffer (not counted).
    private var replyBytesUncounted = 0
    private var isForward = false
    /// A stable token (the audit `reason`, also sent as X-Egress-Proxy-Error).
    private var reason = ""
    /// Report mode: what enforce would have refused this tunnel for (audit `reported`).
    private var reported: DenyReason?
    /// Holds one of the tenant's `maxTunnels` slots (released in `finish`).
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
            tunnel.reject(status: 503, result: .overLimit, why: "process_max_tunnels")
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
        parser = RequestHeadParser(limit: min(context.policy.config.limits.headerBytes, context.loop.buffers.bufferSize))
        acceptedAt = context.loop.iterationTime
        lastActivity = acceptedAt
        statsSlot = context.statsSlot(for: context.policy.tenant(forClient: peer.ip), in: context.policy)
        let trusted = context.policy.config.proxyProtocolSources
        awaitingProxyHeader = !trusted.isEmpty && trusted.contains { $0.contains(peer.ip) }
    }

    // MARK: events

    func handle(events: EpollEvents, tag: UInt32) {
        let isClient = tag == Self.clientTag
        switch phase {
        case .readingHead:
            if isClient { readHead() }
        case .resolving:
            if isClient && !events.isDisjoint(with: [.hangup, .error]) { finish(result: nil, why: "client_gone") }
        case .connecting:
            if !isClient { finishConnect() } else if !events.isDisjoint(with: [.hangup, .error]) {
                finish(result: nil, why: "client_gone")
            }
        case .relaying:
            let side: RelayStateMachine.Side = isClient ? .client : .upstream
            if !events.isDisjoint(with: [.readable, .readHangup, .hangup, .error]) { relay.handle(.readable(side)) }
            if !events.isDisjoint(with: [.writable, .hangup, .error]) { relay.handle(.writable(side)) }
            drive()
        case .lingering:
            if isClient { linger() }
        case .closed:
            break
        }
    }

    func timerFired(_ token: UInt64) {
        timer = nil
        let timeouts = policy.config.timeouts
        switch phase {
        case .readingHead:
            reject(status: 408, result: .timeout, why: "header_timeout")
        case .resolving, .connecting:
            reject(status: 502, result: .dialFailed, why: "dial_timeout")
        case .relaying:
            let now = context.loop.now()
            let idleDeadline = lastActivity + timeouts.idle
            let lifetimeDeadline = (establishedAt ?? acceptedAt) + timeouts.lifetime
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

    // MARK: request head

    private func readHead() {
        while phase == .readingHead {
            let buffer = upBuffer ?? context.loop.buffers.acquire()
            upBuffer = buffer
            let result: IOResult<Int>
            do {
                result = try client.read(into: buffer.free)
            } catch {
                finish(result: nil, why: "client_error")
                return
            }
            switch result {
            case .wouldBlock:
                if buffer.isEmpty { releaseBuffer(&upBuffer) }
                return
            case .processed(0):
                finish(result: nil, why: "client_closed_before_request")
                return
            case .processed(let count):
                buffer.writeIndex += count
                if awaitingProxyHeader {
                    switch ProxyProtocolHeader.parse(buffer.pending) {
                    case .needMore:
                        continue
                    case .invalid(let why):
                        reject(status: 400, result: .badRequest, why: "bad_proxy_protocol", detail: why)
                        return
                    case .absent:
                        awaitingProxyHeader = false
                    case .parsed(let source, let length):
                        // The head starts after the header: from here on the buffer's
                        // readIndex, not 0, is where the request begins.
                        awaitingProxyHeader = false
                        buffer.readIndex += length
                        if let source {
                            peer = source
                            statsSlot = context.statsSlot(for: policy.tenant(forClient: source.ip), in: policy)
                        }
                        if buffer.isEmpty { continue }
                    }
                }
                switch parser.parse(buffer.pending) {
                case .needMore:
                    continue
                case .rejected(let rejection):
                    reject(status: rejection.status, result: .badRequest, why: rejection.reason)
                case .complete(let parsed, let length):
                    buffer.readIndex += length
                    received(parsed)
                }
            }
        }
    }

    private func received(_ parsed: RequestHead) {
        leavePending()
        head = parsed
        let selected: PolicySnapshot.Tenant
        switch policy.select(client: peer.ip, authorization: parsed.header("proxy-authorization")) {
        case .authFailed(let why):
            reject(status: 407, result: .authFailed, why: why, headers: [("Proxy-Authenticate", "Basic realm=\"egress\"")])
            return
        case .tenant(let chosen):
            selected = chosen
        }
        tenant = selected
        statsSlot = context.statsSlot(for: selected, in: policy)
        guard selected.config.enabled else {
            deny(.tenantDisabled)
            return
        }
        if let retryAfter = selected.runtime.takeToken(now: context.loop.now()) {
            let seconds = max(1, Int(retryAfter.seconds.rounded(.up)))
            reject(status: 429, result: .rateLimited, why: "connect_rate", headers: [("Retry-After", "\(seconds)")])
            return
        }
        let authority = parsed.authority
        if case .forward = parsed.kind {
            isForward = true
            switch ForwardRequest.bodyLength(parsed) {
            case .failure(.lengthRequired):
                reject(status: 411, result: .badRequest, why: "chunked_request_body")
                return
            case .failure:
                reject(status: 400, result: .badRequest, why: "content_length")
                return
            case .success:
                break
            }
        }
        let ranges: [CIDR]?
        switch selected.config.allow.decide(authority) {
        case .denied(let why):
            guard selected.config.mode == .report else {
                deny(why)
                return
            }
            report(why)
            ranges = nil
        case .allowed:
            ranges = nil
        case .allowedIfResolvedInto(let cidrs):
            ranges = cidrs
        }
        switch authority.host {
        case .ip(let ip):
            admit([SocketAddress(ip: ip, port: authority.port)], within: ranges)
        case .name(let name):
            phase = .resolving
            arm(at: context.loop.now() + policy.config.timeouts.dial)
            let bound = LoopBound(self, on: context.loop)
            let loop = context.loop
            let port = authority.port
            let ticket = WorkTicket()
            lookup = ticket
            let queued = context.shared.resolver.submit(key: selected.name, ticket: ticket) {
                let outcome: Result<[SocketAddress], Posix.ResolveError>
                do throws(Posix.ResolveError) {
                    outcome = .success(try Posix.resolve(host: name, port: port))
                } catch {
                    outcome = .failure(error)
                }
                loop.execute { bound.value.resolved(outcome, within: ranges) }
            }
            if !queued { reject(status: 503, result: .overLimit, why: "dns_queue_full") }
        }
    }

    private func resolved(_ outcome: Result<[SocketAddress], Posix.ResolveError>, within ranges: [CIDR]?) {
        guard phase == .resolving else { return }  // the client left or the dial timed out
        lookup = nil
        switch outcome {
        case .failure(let error):
            reject(status: 502, result: .dnsFailed, why: "dns_failed", detail: "\(error)")
        case .success(let addresses):
            admit(addresses, within: ranges)
        }
    }

    /// Keeps only candidates the policy admits; the dial uses exactly these addresses.
    private func admit(_ addresses: [SocketAddress], within ranges: [CIDR]?) {
        guard let tenant else { return }
        var (kept, droppedPrivate) = policy.admissible(addresses, tenant: tenant, within: ranges)
        if kept.isEmpty, !droppedPrivate, ranges != nil, tenant.config.mode == .report {
            // Outside every cidr rule: report mode lets it through, the deny ranges still hold.
            (kept, droppedPrivate) = policy.admissible(addresses, tenant: tenant, within: nil)
            if !kept.isEmpty { report(.notAllowed) }
        }
        guard !kept.isEmpty else {
            deny(droppedPrivate ? .privateAddress : .notAllowed)
            return
        }
        guard tenant.runtime.acquire(limit: tenant.config.maxTunnels) else {
            reject(status: 503, result: .overLimit, why: "tenant_max_tunnels")
            return
        }
        holdsTenantSlot = true
        candidates = kept
        nextCandidate = 0
        if phase != .resolving { arm(at: context.loop.now() + policy.config.timeouts.dial) }
        phase = .connecting
        dialNext()
    }

    // MARK: dial

    private func dialNext() {
        while nextCandidate < candidates.count {
            let address = candidates[nextCandidate]
            nextCandidate += 1
            do {
                let socket = try Socket.tcp(family: address.family)
                if let egress = tenant?.config.egressAddress {
                    try socket.bind(to: SocketAddress(ip: egress, port: 0))
                }
                try socket.setNoDelay()
                let connected = try socket.connect(to: address)
                dialed = address
                upstreamRegistration = try context.loop.register(
                    socket.descriptor, events: [.readable, .writable, .readHangup], handler: self, tag: Self.upstreamTag)
                upstream = socket
                if connected { established() }
                return
            } catch {
                lastDialError = error.errno
                if error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
                    reject(status: 503, result: .overLimit, why: "out_of_descriptors")
                    return
                }
                continue
            }
        }
        reject(status: 502, result: .dialFailed, why: "dial_failed", detail: lastDialError.map { "\($0)" } ?? "no address")
    }

    private func finishConnect() {
        guard upstream.isOpen else { return }
        if let error = upstream.pendingError() {
            lastDialError = error
            if let upstreamRegistration { context.loop.deregister(upstreamRegistration) }
            upstreamRegistration = nil
            upstream.close()
            dialNext()
            return
        }
        established()
    }

    private func established() {
        guard let head else { return }
        phase = .relaying
        let now = context.loop.now()
        establishedAt = now
        lastActivity = now
        let connectSeconds = now.since(acceptedAt).seconds
        context.stats.tenants[statsSlot].connectSeconds.observe(connectSeconds)
        context.stats.tenants[statsSlot].results[TunnelResult.established.rawValue] += 1
        context.stats.tenants[statsSlot].active += 1
        let early = upBuffer?.pendingCount ?? 0
        switch head.kind {
        case .connect:
            let reply = context.loop.buffers.acquire()
            ProxyResponse.connectEstablished.withUnsafeBytes { _ = reply.append($0) }
            downBuffer = reply
            replyBytesUncounted = reply.pendingCount
            relay = RelayStateMachine(earlyBytes: early, replyBytes: reply.pendingCount)
        case .forward(let method, let authority, let path):
            let rewritten = ForwardRequest.serialize(head, method: method, authority: authority, path: path)
            let buffer = context.loop.buffers.acquire()
            rewritten.withUnsafeBytes { _ = buffer.append($0) }
            let body = (try? ForwardRequest.bodyLength(head).get()) ?? 0
            if let early = upBuffer {
                // Only the body's bytes go with the head: whatever the client sent after them
                // (a pipelined second request) was never decided on, so it never leaves.
                let wanted = min(early.pendingCount, body)
                let copied = buffer.append(UnsafeRawBufferPointer(rebasing: early.pending.prefix(wanted)))
                releaseBuffer(&upBuffer)
                if copied < wanted {
                    upBuffer = buffer
                    reject(status: 431, result: .badRequest, why: "forward_head_too_large")
                    return
                }
            }
            upBuffer = buffer
            relay = RelayStateMachine(earlyBytes: buffer.pendingCount, replyBytes: 0, upstreamBudget: rewritten.count + body)
        }
        if upBuffer?.isEmpty == true { releaseBuffer(&upBuffer) }
        arm(at: min(now + policy.config.timeouts.idle, now + policy.config.timeouts.lifetime))
        drive()
    }

    // MARK: relay

    /// Performs the relay machine's actions until it waits or closes.
    private func drive() {
        while phase == .relaying {
            switch relay.nextAction() {
            case .wait:
                return
            case .read(let direction):
                read(direction)
            case .write(let direction):
                write(direction)
            case .shutdownWrite(let direction):
                do {
                    if direction == .upstream { try upstream.shutdownWrite() } else { try client.shutdownWrite() }
                    relay.handle(.didShutdown(direction))
                } catch {
                    relay.handle(.failed)
                }
            case .releaseBuffer(let direction):
                if direction == .upstream {
                    releaseBuffer(&upBuffer)
                    releasePipe(&upPipe, bytes: &upPipeBytes)
                } else {
                    releaseBuffer(&downBuffer)
                    releasePipe(&downPipe, bytes: &downPipeBytes)
                }
            case .close(let cause):
                if cause == .completed && isForward {
                    beginLinger()
                } else {
                    finish(result: .established, why: cause == .completed ? "completed" : "io_error")
                }
                return
            }
        }
    }

    private func read(_ direction: RelayStateMachine.Direction) {
        // The machine reads only when nothing is pending, so any buffer here is empty. Small
        // exchanges (handshakes, API calls) stay on buffers, where one read and one write beat
        // two splices and a pipe; a direction that has moved a bulk of bytes switches to splice.
        let moved = direction == .upstream ? bytesUp : bytesDown
        if context.shared.useSplice, moved >= Self.spliceThreshold, let pipe = pipe(for: direction) {
            spliceIn(direction, pipe)
            return
        }
        let buffer: IOBuffer
        if direction == .upstream {
            buffer = upBuffer ?? context.loop.buffers.acquire()
            upBuffer = buffer
        } else {
            buffer = downBuffer ?? context.loop.buffers.acquire()
            downBuffer = buffer
        }
        if buffer.isEmpty { buffer.reset() }
        var space = buffer.free
        if let limit = relay.readLimit(direction), limit < space.count {
            space = UnsafeMutableRawBufferPointer(rebasing: space[0..<max(0, limit)])
        }
        let result: IOResult<Int>
        do {
            result = direction == .upstream ? try client.read(into: space) : try upstream.read(into: space)
        } catch {
            relay.handle(.failed)
            return
        }
        readCompleted(direction, result)
        if case .processed(let count) = result, count > 0 { buffer.writeIndex += count }
    }

    /// The direction's pipe (taken from the pool if needed) once its buffer is drained and
    /// released; nil while a buffer is still held or when no pipe can be had (then buffers serve).
    private func pipe(for direction: RelayStateMachine.Direction) -> SplicePipe? {
        if direction == .upstream {
            if let upBuffer {
                guard upBuffer.isEmpty else { return nil }
                releaseBuffer(&self.upBuffer)
            }
            if upPipe == nil { upPipe = context.loop.pipes.acquire() }
            return upPipe
        }
        if let downBuffer {
            guard downBuffer.isEmpty else { return nil }
            releaseBuffer(&self.downBuffer)
        }
        if downPipe == nil { downPipe = context.loop.pipes.acquire() }
        return downPipe
    }

    private func spliceIn(_ direction: RelayStateMachine.Direction, _ pipe: SplicePipe) {
        let limit = min(relay.readLimit(direction) ?? Int.max, context.loop.pipes.capacity)
        let result: IOResult<Int>
        do {
            result = direction == .upstream
                ? try client.splice(into: pipe, count: limit) : try upstream.splice(into: pipe, count: limit)
        } catch {
            relay.handle(.failed)
            return
        }
        if case .processed(let count) = result, count > 0 {
            if direction == .upstream { upPipeBytes += count } else { downPipeBytes += count }
        }
        readCompleted(direction, result)
    }

    private func readCompleted(_ direction: RelayStateMachine.Direction, _ result: IOResult<Int>) {
        switch result {
        case .wouldBlock:
            relay.handle(.readWouldBlock(direction))
        case .processed(0):
            relay.handle(.readEOF(direction))
        case .processed(let count):
            lastActivity = context.loop.iterationTime
            relay.handle(.didRead(direction, count))
        }
    }

    private func write(_ direction: RelayStateMachine.Direction) {
        let result: IOResult<Int>
        do {
            if let buffer = direction == .upstream ? upBuffer : downBuffer, !buffer.isEmpty {
                result = direction == .upstream
                    ? try upstream.write(from: buffer.pending) : try client.write(from: buffer.pending)
                if case .processed(let count) = result { buffer.readIndex += count }
            } else if direction == .upstream, let pipe = upPipe, upPipeBytes > 0 {
                result = try upstream.splice(from: pipe, count: upPipeBytes)
                if case .processed(let count) = result { upPipeBytes -= count }
            } else if direction == .downstream, let pipe = downPipe, downPipeBytes > 0 {
                result = try client.splice(from: pipe, count: downPipeBytes)
                if case .processed(let count) = result { downPipeBytes -= count }
            } else {
                relay.handle(.failed)
                return
            }
        } catch {
            relay.handle(.failed)
            return
        }
        switch result {
        case .wouldBlock:
            relay.handle(.writeWouldBlock(direction))
        case .processed(let count):
            relay.handle(.didWrite(direction, count))
            if direction == .upstream {
                bytesUp += UInt64(count)
                context.stats.tenants[statsSlot].bytesUp += UInt64(count)
            } else {
                let ours = min(count, replyBytesUncounted)
                replyBytesUncounted -= ours
                bytesDown += UInt64(count - ours)
                context.stats.tenants[statsSlot].bytesDown += UInt64(count - ours)
            }
        }
    }

    // MARK: refusals and closing

    private func deny(_ why: DenyReason) {
        context.stats.tenants[statsSlot].denied[why.ordinal] += 1
        reject(status: 403, result: .denied, why: why.rawValue)
    }

    /// Report mode: counts and remembers what enforce would refuse; the tunnel goes on.
    private func report(_ why: DenyReason) {
        reported = why
        context.stats.tenants[statsSlot].reported[why.ordinal] += 1
    }

    private func leavePending() {
        guard isPending else { return }
        isPending = false
        context.removePending(self)
    }

    /// Dropped to make room for a newer connection (see `PendingLimits`): counted and logged
    /// like a header timeout, closed at once so the slot and descriptor are free now.
    func evictWhilePending() {
        guard phase == .readingHead else { return }
        context.stats.tenants[statsSlot].results[TunnelResult.timeout.rawValue] += 1
        reason = "pending_evicted"
        audit(result: TunnelResult.timeout.label, status: 408)
        finish(result: nil, why: reason)
    }

    private func abandonLookup() {
        lookup?.cancel()
        lookup = nil
    }

    /// Sends an error reply, then lingers (see `Phase.lingering`).
    /// - Parameter detail: resolver or kernel text behind the failure: in the audit line only,
    ///   never in the reply (a parameter, not a stored field: idle tunnels stay small).
    private func reject(status: Int, result: TunnelResult, why: String, detail: String? = nil, headers: [(String, String)] = []) {
        abandonLookup()
        leavePending()
        context.stats.tenants[statsSlot].results[result.rawValue] += 1
        reason = why
        audit(result: result.label, status: status, error: detail)
        releaseTenantSlot()
        closeUpstream()
        releaseBuffer(&upBuffer)
        releaseBuffer(&downBuffer)
        let buffer = context.loop.buffers.acquire()
        ProxyResponse.error(status, why: why, extraHeaders: headers).withUnsafeBytes { _ = buffer.append($0) }
        downBuffer = buffer
        phase = .lingering
        arm(at: context.loop.now() + Self.lingerTimeout)
        linger()
    }

    /// Forwarded response complete: the client got its FIN; drain its remaining bytes.
    private func beginLinger() {
        recordTunnelEnd(why: "completed")
        releaseTenantSlot()
        closeUpstream()
        releaseBuffer(&upBuffer)
        releaseBuffer(&downBuffer)
        releasePipe(&upPipe, bytes: &upPipeBytes)
        releasePipe(&downPipe, bytes: &downPipeBytes)
        phase = .lingering
        arm(at: context.loop.now() + Self.lingerTimeout)
        linger()
    }

    private func linger() {
        if let buffer = downBuffer {
            while !buffer.isEmpty {
                let result: IOResult<Int>
                do {
                    result = try client.write(from: buffer.pending)
                } catch {
                    finish(result: nil)
                    return
                }
                switch result {
                case .wouldBlock: return
                case .processed(let count): buffer.readIndex += count
                }
            }
            releaseBuffer(&downBuffer)
            try? client.shutdownWrite()
        }
        // Discard whatever the client still sends, until its FIN.
        if client.discardInput() == .closed { finish(result: nil) }
    }

    /// Closes now: drain budget exhausted, or the tenant was removed or disabled by a reload.
    func forceClose(why: String = "drain_timeout") {
        if phase == .relaying {
            finish(result: .established, why: why)
        } else {
            finish(result: nil, why: why)
        }
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

    /// Back to the pool when empty; a pipe that may still hold bytes is discarded instead.
    private func releasePipe(_ pipe: inout SplicePipe?, bytes: inout Int) {
        if let held = pipe {
            if bytes == 0 { context.loop.pipes.release(held) } else { context.loop.pipes.discard(held) }
        }
        pipe = nil
        bytes = 0
    }

    private func releaseBuffer(_ buffer: inout IOBuffer?) {
        if let held = buffer { context.loop.buffers.release(held) }
        buffer = nil
    }

    private func recordTunnelEnd(why: String) {
        guard establishedAt != nil, reason.isEmpty else { return }
        reason = why
        let lifetime = context.loop.now().since(establishedAt ?? acceptedAt).seconds
        context.stats.tenants[statsSlot].tunnelSeconds.observe(lifetime)
        context.stats.tenants[statsSlot].active -= 1
        audit(result: TunnelResult.established.label, status: 200)
    }

    /// Releases everything, exactly once. `result` is `.established` for tunnels that
    /// were established (their end is recorded here) and nil otherwise.
    private func finish(result: TunnelResult?, why: String = "") {
        guard phase != .closed else { return }
        abandonLookup()
        leavePending()
        if result == .established { recordTunnelEnd(why: why) }
        phase = .closed
        if let timer { context.loop.cancel(timer) }
        timer = nil
        closeUpstream()
        releaseTenantSlot()
        if let clientRegistration { context.loop.deregister(clientRegistration) }
        clientRegistration = nil
        client.close()
        releaseBuffer(&upBuffer)
        releaseBuffer(&downBuffer)
        releasePipe(&upPipe, bytes: &upPipeBytes)
        releasePipe(&downPipe, bytes: &downPipeBytes)
        context.unlink(self)
    }

    // MARK: observability

    /// The audit line (spec section 8): one per finished tunnel or refused request. Built by
    /// hand (`JSONLine`) rather than through swift-log metadata: it is written for every tunnel.
    private func audit(result: String, status: Int, error: String? = nil) {
        guard context.shared.logger.logLevel <= .info else { return }
        var line = JSONLine(level: "info", message: "tunnel", logger: context.shared.logger.label)
        line.add("bytes_down", bytesDown)
        line.add("bytes_up", bytesUp)
        line.add("client", peer.description)
        if let first = relay.firstEOF { line.add("closed_first", first == .client ? "client" : "upstream") }
        if let head { line.add("destination", head.authority.description) }
        if let dialed { line.add("dialed", dialed.description) }
        line.add("duration_ms", Int(context.loop.now().since(acceptedAt).seconds * 1000))
        if let error { line.add("error", error) }
        line.add("event", "tunnel")
        line.add("reason", reason)
        if let reported { line.add("reported", reported.rawValue) }
        line.add("result", result)
        line.add("status", status)
        line.add("tenant", tenant?.name ?? context.stats.names[statsSlot])
        line.emit()
    }

    func snapshot(now: Instant) -> TunnelSnapshot {
        TunnelSnapshot(
            tenant: tenant?.name ?? context.stats.names[statsSlot], client: peer.description,
            destination: head?.authority.description ?? "", state: phase.rawValue, bytesUp: bytesUp,
            bytesDown: bytesDown, ageSeconds: now.since(acceptedAt).seconds)
    }
}
