import EgressLoop
import EgressPosix

/// A tunnel's way to its 200: the head (`TunnelHeadReader`), the decision (`TunnelAdmission`),
/// the lookup's answer and the dial (`TunnelDialer`), and the parent's reply when the tenant
/// chains. Each call is one step, given the tunnel's parts it needs for that step (the sockets,
/// a buffer, the recorder) and answering with what the tunnel must do next (`Next`); the
/// tunnel owns those parts, the phases and the timers, and only follows the answers.
///
/// A value inside the tunnel, not an object of its own: a second object per tunnel would be
/// one more allocation on every CONNECT, for state that is a few words once the tunnel relays
/// (`settle` drops the header fields and the dial's candidates at the 200).
///
/// Confined to the tunnel's loop thread, like the tunnel. Owns the tenant slot the admission
/// took (`holdsTenantSlot`); the tunnel releases it through `releaseTenantSlot`, exactly once.
struct TunnelOpening {
    private var reader: TunnelHeadReader
    private(set) var dialer = TunnelDialer()
    /// The parsed head; its header fields (credentials among them) are dropped at the 200.
    private(set) var head: RequestHead?
    /// The admitted tenant's index in the policy's tenants (-1 before authentication): an
    /// index, not a copy of the 200-byte `Tenant`, so an idle tunnel stays small.
    private var tenantIndex: Int32 = -1
    /// Holds one of the tenant's `maxTunnels` slots (taken by the admission's dial step).
    private var holdsTenantSlot = false
    /// For a `cidr` rule: the ranges the lookup's answers must fall into.
    private var ranges: [CIDR]?
    /// The queued or running lookup, cancelled when the tunnel ends before it answers (so a
    /// lookup nobody waits for never takes a resolver thread).
    private var lookup: WorkTicket?

    /// What the tunnel does after a step.
    enum Next {
        /// Wait for the next readiness report or the lookup's answer.
        case wait
        /// The client left or failed before its head was complete: close, no reply.
        case end(why: String)
        case refuse(TunnelAdmission.Refusal, detail: String?)
        /// Look these up off the loop (the tunnel holds the callback), then call `resolved`.
        case lookUp(DialTargets)
        /// A dial is prepared: enter `.connecting`, then call `dial`.
        case dial
        /// Connected to the tenant's parent: enter `.chaining`, then call `handshake`.
        case chain
        /// Connected to the destination (through the parent, if any): relay.
        case established
    }

    init(headerLimit: Int, trustsProxyHeader: Bool) {
        reader = TunnelHeadReader(headerLimit: headerLimit, trustsProxyHeader: trustsProxyHeader)
    }

    func tenant(in policy: PolicySnapshot) -> PolicySnapshot.Tenant? {
        tenantIndex >= 0 ? policy.tenants[Int(tenantIndex)] : nil
    }

    // MARK: head and decision

    /// Reads and decides, until the head needs more bytes or is decided. A PROXY protocol
    /// header moves `peer` (and the recorder to the source's tenant) before the head is read,
    /// because the source is who the head is judged for. `.wait` only while the head is
    /// incomplete: any other answer means the tunnel stops waiting for its head.
    mutating func readHead<Client: StreamEndpoint & ~Copyable>(
        from client: borrowing Client, into channel: inout RelayChannel, pools: RelayPools,
        peer: inout SocketAddress, recorder: inout TunnelRecorder, policy: PolicySnapshot, context: ProxyLoop
    ) -> Next {
        while true {
            switch reader.read(from: client, into: &channel, pools: pools) {
            case .needMore:
                return .wait
            case .ended(let why):
                return .end(why: why)
            case .source(let source):
                peer = source  // then the head, which may already be in the buffer
                recorder.slot = context.statsSlot(for: policy.tenant(forClient: source.ip), in: policy)
            case .refused(let refusal, let detail):
                return .refuse(refusal, detail: detail)
            case .complete(let parsed):
                return admit(parsed, client: peer.ip, recorder: &recorder, policy: policy, context: context)
            }
        }
    }

    private mutating func admit(_ parsed: RequestHead, client: IPAddress, recorder: inout TunnelRecorder,
                                policy: PolicySnapshot, context: ProxyLoop) -> Next {
        head = parsed
        let decision = TunnelAdmission.decide(parsed, client: client, policy: policy, now: context.loop.now())
        // Set before the outcome, so a refusal after authentication counts under its tenant.
        if let chosen = decision.tenant {
            tenantIndex = Int32(chosen.index)
            recorder.slot = context.statsSlot(for: chosen, in: policy)
        }
        switch decision.outcome {
        case .failure(let refusal):
            return .refuse(refusal, detail: nil)
        case .success(let next):
            recorder.report(decision.reported, stats: &context.stats)
            guard let tenant = decision.tenant else {
                return .refuse(.deny(.notAllowed), detail: "admitted without a tenant")  // decide never does this; deny, never dial
            }
            ranges = decision.ranges
            let step = TunnelAdmission.route(next, authority: parsed.authority, tenant: tenant, within: ranges, policy: policy)
            return follow(step, recorder: &recorder, stats: &context.stats)
        }
    }

    private mutating func follow(_ step: TunnelAdmission.Step, recorder: inout TunnelRecorder, stats: inout LoopStats) -> Next {
        switch step {
        case .refuse(let refusal, let detail):
            return .refuse(refusal, detail: detail)
        case .lookup(let targets):
            return .lookUp(targets)
        case .dial(let prepared, let reported):
            holdsTenantSlot = true
            dialer = prepared
            recorder.report(reported, stats: &stats)
            return .dial
        }
    }

    // MARK: lookup

    /// The lookup the tunnel queued for `.lookUp`.
    mutating func looking(_ ticket: WorkTicket) { lookup = ticket }

    /// The lookup's answers; nil when nobody waits for them any more (the tunnel moved on).
    mutating func resolved(_ answers: DialTargets.Answers, recorder: inout TunnelRecorder, policy: PolicySnapshot,
                           stats: inout LoopStats) -> Next? {
        guard lookup != nil, let tenant = tenant(in: policy), let head else { return nil }
        lookup = nil
        let step = TunnelAdmission.afterLookup(answers.destination, parent: answers.parent, authority: head.authority,
                                               tenant: tenant, within: ranges, policy: policy)
        return follow(step, recorder: &recorder, stats: &stats)
    }

    mutating func abandonLookup() {
        lookup?.cancel()
        lookup = nil
    }

    // MARK: dial and parent

    /// The next candidate (after `.dial`, or after `finishConnect` found a failure).
    mutating func dial(_ sockets: inout TunnelSockets, loop: EventLoop, handler: LoopHandler, policy: PolicySnapshot) -> Next {
        progressed(dialer.dialNext(&sockets, loop: loop, handler: handler, egress: tenant(in: policy)?.config.egressAddress))
    }

    /// The upstream socket is writable during `.connecting`: connected, or on to the next candidate.
    mutating func finishConnect(_ sockets: inout TunnelSockets, loop: EventLoop, handler: LoopHandler, policy: PolicySnapshot) -> Next {
        progressed(dialer.finishConnect(&sockets, loop: loop, handler: handler, egress: tenant(in: policy)?.config.egressAddress))
    }

    private func progressed(_ progress: TunnelDialer.Progress) -> Next {
        switch progress {
        case .pending: return .wait
        case .connected: return dialer.isChained ? .chain : .established
        case .refused(let refusal, let detail): return .refuse(refusal, detail: detail)
        }
    }

    /// Our CONNECT to the parent and its reply, read into `reply` (the relay's downstream
    /// channel): whatever follows the reply's head is the destination's first bytes, and
    /// stays there for the client.
    mutating func handshake(_ upstream: borrowing Socket, reply channel: inout RelayChannel, buffers: BufferPool) -> Next {
        let reply = channel.buffer ?? buffers.acquire()
        channel.buffer = reply
        let step = dialer.handshake(upstream, reply: reply)
        if case .established(let length) = step {
            reply.readIndex += length
            return .established
        }
        if let (refusal, detail) = step.refusal { return .refuse(refusal, detail: detail) }
        return .wait
    }

    // MARK: the 200 and the end

    /// Relaying: what only the decision and the dial needed goes now, not when the tunnel
    /// ends (relaying tunnels idle for hours, and there are thousands of them).
    mutating func settle() {
        head?.headers = []
        dialer.settle()
    }

    /// Gives the tenant slot back, if this tunnel holds one; idempotent.
    mutating func releaseTenantSlot(policy: PolicySnapshot) {
        if holdsTenantSlot { tenant(in: policy)?.runtime.release() }
        holdsTenantSlot = false
    }
}
