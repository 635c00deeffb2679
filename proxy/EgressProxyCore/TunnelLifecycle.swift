import EgressLoop

/// A tunnel's phases as a pure state machine: readiness and timer events in, the step to
/// perform out; the tunnel reports each step it completed (`.entered`) so the next event is
/// judged in the right phase. Nothing here touches a socket, so every phase's reaction to a
/// hangup or a deadline is testable event by event (`TunnelLifecycleTests`).
///
/// The order is fixed: readingHead, then optionally resolving, connecting, optionally
/// chaining, relaying; lingering (after a refusal, or a completed forward) and closed can
/// follow any phase. A transition out of order is ignored, and closed is final, so a late
/// callback (a lookup that answers after the client left) can never revive a tunnel.
struct TunnelLifecycle {
    /// Where the connection is (the raw value shows in /tunnels).
    enum Phase: String, Comparable {
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

        private var order: Int {
            switch self {
            case .readingHead: return 0
            case .resolving: return 1
            case .connecting: return 2
            case .chaining: return 3
            case .relaying: return 4
            case .lingering: return 5
            case .closed: return 6
            }
        }

        static func < (lhs: Phase, rhs: Phase) -> Bool { lhs.order < rhs.order }
    }

    enum Event: Equatable {
        /// One socket's readiness; `gone` = hangup or error.
        case ready(client: Bool, readable: Bool, writable: Bool, gone: Bool)
        /// The tunnel's one timer fired; `lastActivity` is the relay's last read.
        case timer(now: Instant, lastActivity: Instant, limits: Limits)
        /// The tunnel finished the step that leads into `phase`.
        case entered(Phase, at: Instant, limits: Limits)
    }

    /// An established tunnel's two clocks, from the policy the tunnel was accepted under
    /// (passed with each event rather than stored: idle tunnels stay small).
    struct Limits: Equatable {
        var idle: Duration
        var lifetime: Duration

        init(_ timeouts: ProxyConfig.Timeouts) {
            idle = timeouts.idle
            lifetime = timeouts.lifetime
        }
    }

    enum Action: Equatable {
        case none
        case readHead
        case finishConnect
        case handshake
        case relay(RelayStateMachine.Side, readable: Bool, writable: Bool)
        case linger
        case refuse(TunnelAdmission.Refusal)
        /// Close everything; `established` when the tunnel's end is to be recorded.
        case finish(established: Bool, why: String)
        case arm(Instant)
    }

    private(set) var phase = Phase.readingHead
    /// When relaying began (the lifetime's reference).
    private(set) var establishedAt: Instant?
    /// When the current phase began (0: not yet known, the head phase).
    private var phaseStart: UInt64 = 0
    /// Milliseconds spent resolving, and connecting (the parent exchange included), for the
    /// audit line; `.max` when the tunnel never went through the phase. Plain words, not
    /// optionals, because every tunnel carries them.
    private var resolveMs = UInt32.max
    private var connectMs = UInt32.max

    var resolveMilliseconds: UInt32? { resolveMs == .max ? nil : resolveMs }
    var connectMilliseconds: UInt32? { connectMs == .max ? nil : connectMs }

    mutating func handle(_ event: Event) -> Action {
        switch event {
        case .entered(let next, let now, let limits):
            // Forward only; lingering may follow any phase but closed, and closed is final.
            guard next > phase || (next == .lingering && phase != .closed) else { return .none }
            timePhase(leaving: phase, at: now)
            phase = next
            guard next == .relaying else { return .none }
            establishedAt = now
            return .arm(now + min(limits.idle, limits.lifetime))
        case .ready(let client, let readable, let writable, let gone):
            return ready(client: client, readable: readable, writable: writable, gone: gone)
        case .timer(let now, let lastActivity, let limits):
            return timerFired(now: now, lastActivity: lastActivity, limits: limits)
        }
    }

    private mutating func timePhase(leaving left: Phase, at now: Instant) {
        defer { phaseStart = now.nanoseconds }
        guard phaseStart != 0 else { return }
        let ms = UInt32(clamping: (now.nanoseconds >= phaseStart ? now.nanoseconds - phaseStart : 0) / 1_000_000)
        switch left {
        case .resolving: resolveMs = min(ms, .max - 1)
        case .connecting, .chaining: connectMs = min((connectMs == .max ? 0 : connectMs) &+ ms, .max - 1)
        default: break
        }
    }

    private func ready(client: Bool, readable: Bool, writable: Bool, gone: Bool) -> Action {
        switch phase {
        case .readingHead:
            return client ? .readHead : .none
        case .resolving:
            return client && gone ? .finish(established: false, why: "client_gone") : .none
        case .connecting, .chaining:
            if !client { return phase == .connecting ? .finishConnect : .handshake }
            return gone ? .finish(established: false, why: "client_gone") : .none
        case .relaying:
            // A hangup or error is both readable (the read returns EOF or the error) and
            // writable (the write fails): the relay machine learns of it through its I/O.
            return .relay(client ? .client : .upstream, readable: readable || gone, writable: writable || gone)
        case .lingering:
            return client ? .linger : .none
        case .closed:
            return .none
        }
    }

    private func timerFired(now: Instant, lastActivity: Instant, limits: Limits) -> Action {
        switch phase {
        case .readingHead:
            return .refuse(.init(status: 408, result: .timeout, why: "header_timeout"))
        case .resolving, .connecting, .chaining:
            return .refuse(.init(status: 502, result: .dialFailed, why: "dial_timeout"))
        case .relaying:
            let idleDeadline = lastActivity + limits.idle
            let lifetimeDeadline = (establishedAt ?? now) + limits.lifetime
            if now >= lifetimeDeadline { return .finish(established: true, why: "lifetime") }
            if now >= idleDeadline { return .finish(established: true, why: "idle_timeout") }
            return .arm(min(idleDeadline, lifetimeDeadline))
        case .lingering:
            return .finish(established: false, why: "")
        case .closed:
            return .none
        }
    }
}
