import EgressLoop

/// The graceful drain of spec section 6 as a pure function of time and observations, so it
/// is tested with a manual clock. The server ticks it periodically after SIGTERM.
///
/// Timeline from the signal at `start`: readiness is already 503; the listeners stay open
/// while clients keep arriving and close once none arrived for `quiescence` (counted from
/// `start` at the earliest, because endpoint removal in Kubernetes lags the signal), and at
/// `start + linger` at the latest; open tunnels then run on until they end, until
/// `start + budget`, when the rest are closed. The process exits once listeners are closed
/// and no tunnel is open.
public struct DrainPlan: Sendable {
    /// What the server must do after one tick.
    public struct Decision: Equatable, Sendable {
        public var closeListeners = false
        public var forceClose = false
        public var exit = false

        public init(closeListeners: Bool = false, forceClose: Bool = false, exit: Bool = false) {
            self.closeListeners = closeListeners
            self.forceClose = forceClose
            self.exit = exit
        }
    }

    public let start: Instant
    public let linger: Duration
    public let quiescence: Duration
    public let budget: Duration
    public private(set) var listenersClosed = false
    public private(set) var forced = false

    public init(start: Instant, linger: Duration, quiescence: Duration, budget: Duration) {
        self.start = start
        self.linger = linger
        self.quiescence = quiescence
        self.budget = budget
    }

    /// - Parameters:
    ///   - lastArrival: the latest client arrival on any loop.
    ///   - openTunnels: client connections still open on all loops.
    public mutating func tick(now: Instant, lastArrival: Instant, openTunnels: Int) -> Decision {
        var decision = Decision()
        let quietSince = max(lastArrival, start)
        let overBudget = now >= start + budget
        if !listenersClosed && (now >= quietSince + quiescence || now >= start + min(linger, budget) || overBudget) {
            listenersClosed = true
            decision.closeListeners = true
        }
        if overBudget && openTunnels > 0 && !forced {
            forced = true
            decision.forceClose = true
        }
        decision.exit = listenersClosed && openTunnels == 0
        return decision
    }
}
