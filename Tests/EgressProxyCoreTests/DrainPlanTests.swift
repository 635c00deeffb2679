import EgressLoop
import Testing

@testable import EgressProxyCore

@Suite struct DrainPlanTests {
    let start = Instant(nanoseconds: 1_000_000_000_000)

    func plan() -> DrainPlan {
        DrainPlan(start: start, linger: .seconds(10), quiescence: .seconds(2), budget: .seconds(45))
    }

    @Test func idleProcessClosesAfterQuiescenceAndExits() {
        var drain = plan()
        #expect(drain.tick(now: start + .seconds(1), lastArrival: Instant(nanoseconds: 5), openTunnels: 0) == .init())
        #expect(drain.tick(now: start + .seconds(2), lastArrival: Instant(nanoseconds: 5), openTunnels: 0)
            == .init(closeListeners: true, exit: true))
    }

    @Test func arrivalsKeepListenersOpenUntilLinger() {
        var drain = plan()
        for second in 1...9 {
            let decision = drain.tick(now: start + .seconds(Int64(second)), lastArrival: start + .seconds(Int64(second)), openTunnels: 3)
            #expect(decision == .init(), "second \(second)")
        }
        #expect(drain.tick(now: start + .seconds(10), lastArrival: start + .seconds(10), openTunnels: 3) == .init(closeListeners: true))
    }

    @Test func openTunnelsRunOnThenBudgetForcesClose() {
        var drain = plan()
        #expect(drain.tick(now: start + .seconds(3), lastArrival: start, openTunnels: 2).closeListeners)
        #expect(drain.tick(now: start + .seconds(30), lastArrival: start, openTunnels: 2) == .init())
        #expect(drain.tick(now: start + .seconds(45), lastArrival: start, openTunnels: 2) == .init(forceClose: true))
        #expect(drain.tick(now: start + .milliseconds(45_100), lastArrival: start, openTunnels: 0) == .init(exit: true))
    }

    @Test func tunnelsEndingBeforeBudgetExitEarly() {
        var drain = plan()
        _ = drain.tick(now: start + .seconds(3), lastArrival: start, openTunnels: 1)
        #expect(drain.tick(now: start + .seconds(4), lastArrival: start, openTunnels: 0) == .init(exit: true))
    }

    @Test func budgetShorterThanLingerBoundsEverything() {
        var drain = DrainPlan(start: start, linger: .seconds(10), quiescence: .seconds(2), budget: .seconds(1))
        #expect(drain.tick(now: start + .seconds(1), lastArrival: start + .seconds(1), openTunnels: 1)
            == .init(closeListeners: true, forceClose: true))
    }
}
