import EgressLoop
import EgressPosix
import GatewayOps
import Logging

/// What one tunnel counts and logs: its slot in its loop's `LoopStats`, its bytes each way,
/// its audit reason. Every counter a tunnel moves goes through here, so each is moved in one
/// place; the stats themselves stay the loop's (passed in, never held), which keeps the hot
/// path an array index on the loop's own thread.
struct TunnelRecorder {
    /// The tenant's slot: the client's `sources` tenant (or "unknown") until authentication
    /// names one, so a refusal before that is still attributed.
    var slot: Int
    private(set) var bytesUp: UInt64 = 0
    private(set) var bytesDown: UInt64 = 0
    /// Bytes of our own 200 reply still at the front of the downstream buffer: they go to the
    /// client but are not destination bytes, so they are never counted.
    var replyBytesUncounted = 0
    /// A stable token (the audit `reason`, also sent as X-Egress-Proxy-Error); set once, by
    /// the first outcome, so a later close never rewrites why a tunnel ended.
    private(set) var reason = ""
    /// Report mode: what enforce would have refused this tunnel for (audit `reported`).
    private(set) var reported: DenyReason?
    /// Counted as active (between `established` and `ended`).
    private var isActive = false

    init(slot: Int) { self.slot = slot }

    mutating func refused(_ refusal: TunnelAdmission.Refusal, stats: inout LoopStats) {
        if let denied = refusal.denied { stats.tenants[slot].denied[denied.ordinal] += 1 }
        stats.tenants[slot].results[refusal.result.rawValue] += 1
        reason = refusal.why
    }

    /// Counted like a header timeout (the result label), with its own reason.
    mutating func timedOut(why: String, stats: inout LoopStats) {
        stats.tenants[slot].results[TunnelResult.timeout.rawValue] += 1
        reason = why
    }

    mutating func report(_ why: DenyReason?, stats: inout LoopStats) {
        guard let why else { return }
        reported = why
        stats.tenants[slot].reported[why.ordinal] += 1
    }

    mutating func established(connectSeconds: Double, stats: inout LoopStats) {
        stats.tenants[slot].connectSeconds.observe(connectSeconds)
        stats.tenants[slot].results[TunnelResult.established.rawValue] += 1
        stats.tenants[slot].active += 1
        isActive = true
    }

    /// The end of an established tunnel, once: false if it was never established or its end
    /// was already recorded (then nothing is logged twice).
    mutating func ended(why: String, lifetimeSeconds: Double, stats: inout LoopStats) -> Bool {
        guard isActive, reason.isEmpty else { return false }
        isActive = false
        reason = why
        stats.tenants[slot].tunnelSeconds.observe(lifetimeSeconds)
        stats.tenants[slot].active -= 1
        return true
    }

    mutating func wrote(_ direction: RelayStateMachine.Direction, _ count: Int, stats: inout LoopStats) {
        if direction == .upstream {
            bytesUp += UInt64(count)
            stats.tenants[slot].bytesUp += UInt64(count)
        } else {
            let ours = min(count, replyBytesUncounted)
            replyBytesUncounted -= ours
            bytesDown += UInt64(count - ours)
            stats.tenants[slot].bytesDown += UInt64(count - ours)
        }
    }

    /// What the audit line says about a tunnel beyond the recorder's own fields.
    struct Facts {
        /// Unique in the process (`ProxyLoop.newTunnelID`), shown as `loop-serial`.
        var id: UInt64
        var client: SocketAddress
        var tenant: String
        var destination: Authority?
        var dialed: SocketAddress?
        var parent: Authority?
        var closedFirst: RelayStateMachine.Side?
        var ageSeconds: Double
        var resolveMilliseconds: UInt32?
        var connectMilliseconds: UInt32?

        /// `loop-serial`; short enough (under 16 bytes for any realistic serial) to stay a small,
        /// inline string.
        var idText: String { String(id >> 48) + "-" + String(id & 0xffff_ffff_ffff) }
    }

    /// The audit line (spec section 8): one per finished tunnel or refused request. Built by
    /// hand (`JSONLine`) rather than through swift-log metadata: it is written for every tunnel.
    /// - Parameter error: resolver, kernel or parent text behind a failure: in the log only,
    ///   never in a reply.
    func audit(result: String, status: Int, error: String? = nil, facts: Facts, logger: Logger) {
        guard logger.logLevel <= .info else { return }
        var line = JSONLine(level: "info", message: "tunnel", logger: logger.label)
        line.add("bytes_down", bytesDown)
        line.add("bytes_up", bytesUp)
        line.add("client", facts.client.description)
        if let first = facts.closedFirst { line.add("closed_first", first == .client ? "client" : "upstream") }
        if let connect = facts.connectMilliseconds { line.add("connect_ms", Int(connect)) }
        if let destination = facts.destination { line.add("destination", destination.description) }
        if let dialed = facts.dialed { line.add("dialed", dialed.description) }
        if let resolve = facts.resolveMilliseconds { line.add("dns_ms", Int(resolve)) }
        line.add("duration_ms", Int(facts.ageSeconds * 1000))
        if let error { line.add("error", error) }
        line.add("event", "tunnel")
        if let parent = facts.parent { line.add("parent", parent.description) }
        line.add("reason", reason)
        if let reported { line.add("reported", reported.rawValue) }
        line.add("result", result)
        line.add("status", status)
        line.add("tenant", facts.tenant)
        line.add("tunnel_id", facts.idText)
        line.emit()
    }

    /// One row of the admin endpoint's `/tunnels`.
    func snapshot(_ facts: Facts, state: String) -> TunnelSnapshot {
        TunnelSnapshot(id: facts.idText, tenant: facts.tenant, client: facts.client.description, destination: facts.destination?.description ?? "",
                       state: state, bytesUp: bytesUp, bytesDown: bytesDown, ageSeconds: facts.ageSeconds)
    }
}
