import EgressLoop
import Logging

/// Carries out a `DrainPlan` after SIGTERM: every 100 ms it gathers each proxy loop's last
/// arrival and open tunnels, asks the plan, and closes listeners, force-closes tunnels or
/// ends the process as the plan says. The plan decides; this type only observes and acts.
///
/// Confined to the admin loop: `begin` and every tick run there, and the proxy loops are
/// only reached through `execute` and `gather`, never touched directly.
final class DrainCoordinator: TimerTarget {
    private let adminLoop: EventLoop
    private let proxyLoops: [ProxyLoop]
    private let logger: Logger
    /// Called once, on the admin loop, when the plan says the process may exit.
    private let onExit: () -> Void
    private var plan: DrainPlan?

    init(adminLoop: EventLoop, proxyLoops: [ProxyLoop], logger: Logger, onExit: @escaping () -> Void) {
        self.adminLoop = adminLoop
        self.proxyLoops = proxyLoops
        self.logger = logger
        self.onExit = onExit
    }

    /// True from the first signal on (readiness answers 503, the metric says 1).
    var draining: Bool { plan != nil }

    /// Starts the drain; a second signal changes nothing.
    func begin(timeouts: ProxyConfig.Timeouts) {
        guard plan == nil else { return }
        plan = DrainPlan(start: adminLoop.now(), linger: timeouts.linger, quiescence: timeouts.quiescence, budget: timeouts.drain)
        logger.info("draining", metadata: ["budget_s": .stringConvertible(timeouts.drain.seconds)])
        tick()
    }

    private func tick() { adminLoop.schedule(after: .milliseconds(100), target: self) }

    func timerFired(_ token: UInt64) {
        // The answers come back on the admin loop, where this object lives.
        let coordinator = LoopBound(self, on: adminLoop)
        gather(from: proxyLoops.map(\.loop), to: adminLoop, snapshot: { [proxyLoops] index in
            (proxyLoops[index].lastArrival, proxyLoops[index].tunnelCount)
        }) { observations in coordinator.value.observed(observations) }
    }

    private func observed(_ observations: [(Instant, Int)]) {
        guard var plan else { return }
        let lastArrival = observations.map(\.0).max() ?? plan.start
        let open = observations.map(\.1).reduce(0, +)
        let decision = plan.tick(now: adminLoop.now(), lastArrival: lastArrival, openTunnels: open)
        self.plan = plan
        if decision.closeListeners {
            logger.info("listeners closed", metadata: ["open_tunnels": .stringConvertible(open)])
            for proxyLoop in proxyLoops { proxyLoop.loop.execute { proxyLoop.closeListener() } }
        }
        if decision.forceClose {
            logger.info("drain budget exhausted, closing tunnels", metadata: ["open_tunnels": .stringConvertible(open)])
            for proxyLoop in proxyLoops { proxyLoop.loop.execute { proxyLoop.closeAllTunnels() } }
        }
        if decision.exit { onExit() } else { tick() }
    }
}
