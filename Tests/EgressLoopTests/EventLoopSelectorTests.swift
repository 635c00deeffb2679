import EgressLoop
import EgressPosix
import Synchronization
import TestSupport
import Testing

/// Records every readiness report a handler gets.
final class ReadinessLog: LoopHandler {
    var seen: [(events: EpollEvents, tag: UInt32)] = []
    func handle(events: EpollEvents, tag: UInt32) { seen.append((events, tag)) }
}

/// The loop stepped by hand over a `FakeSelector`: dispatch, registration flags, stale
/// reports and timers, with no descriptor behind the numbers it registers (high numbers,
/// so they never meet the loop's own eventfd and timerfd in the fake's table).
@Suite struct EventLoopSelectorTests {
    let selector = FakeSelector()
    let clock = ManualClock()

    func loop() throws -> EventLoop { try EventLoop(name: "stepped", clock: clock, selector: selector) }

    @Test func aReportReachesItsHandlerWithItsTag() throws {
        let loop = try loop()
        let client = ReadinessLog(), upstream = ReadinessLog()
        _ = try loop.register(10_100, events: [.readable, .writable], handler: client, tag: 0)
        _ = try loop.register(10_101, events: [.readable, .writable], handler: upstream, tag: 1)
        #expect(selector.interests[10_100]?.events.contains(.edgeTriggered) == true, "edge-triggered unless asked otherwise")
        selector.deliver(fd: 10_101, [.readable, .readHangup])
        selector.deliver(fd: 10_100, [.writable])
        loop.runIteration()
        #expect(upstream.seen.map(\.tag) == [1] && upstream.seen.first?.events == [.readable, .readHangup])
        #expect(client.seen.map(\.tag) == [0] && client.seen.first?.events == [.writable])
    }

    @Test func levelTriggeredAndModifiedInterestsReachTheSelector() throws {
        let loop = try loop()
        let log = ReadinessLog()
        let registration = try loop.register(10_007, events: [.readable], handler: log, levelTriggered: true)
        #expect(selector.interests[10_007]?.events == [.readable], "libcurl's sockets are level-triggered")
        try loop.modify(10_007, events: [.readable, .writable], registration: registration, levelTriggered: true)
        #expect(selector.interests[10_007]?.events == [.readable, .writable])
        loop.deregister(registration, fd: 10_007)
        #expect(selector.interests[10_007] == nil && selector.log.suffix(2) == ["modify 10007", "remove 10007"])
    }

    @Test func aReportQueuedForARegistrationThatWentAwayNeverReachesTheNextOwner() throws {
        let loop = try loop()
        let old = ReadinessLog(), new = ReadinessLog()
        let first = try loop.register(10_100, events: [.readable], handler: old)
        let staleToken = try #require(selector.interests[10_100]?.token)
        loop.deregister(first)
        selector.closed(10_100)  // its owner closed it; the kernel may hand the number out again
        _ = try loop.register(10_100, events: [.readable], handler: new)
        #expect(selector.interests[10_100]?.token != staleToken, "same slot, new generation")
        selector.deliver(token: staleToken, [.readable])
        loop.runIteration()
        #expect(old.seen.isEmpty && new.seen.isEmpty)
        #expect(loop.staleEvents == 1)
        selector.deliver(fd: 10_100, [.readable])
        loop.runIteration()
        #expect(new.seen.count == 1)
    }

    @Test func timersFireWhenTheManualClockPassesThemNotBefore() throws {
        final class Fired: TimerTarget {
            var tokens: [UInt64] = []
            func timerFired(_ token: UInt64) { tokens.append(token) }
        }
        let loop = try loop()
        let fired = Fired()
        loop.schedule(after: .milliseconds(200), target: fired, token: 9)
        loop.runIteration()
        clock.advance(by: .milliseconds(150))
        loop.runIteration()
        #expect(fired.tokens.isEmpty)
        clock.advance(by: .milliseconds(120))
        loop.runIteration()
        #expect(fired.tokens == [9])
    }

    @Test func workFromAnotherThreadRunsOnTheNextIteration() throws {
        final class Count: Sendable { let value = Atomic<Int>(0) }
        let loop = try loop()
        let ran = Count()
        try Posix.spawnThread(name: "other") { loop.execute { ran.value.add(1, ordering: .relaxed) } }
        let deadline = ContinuousClock.now + .seconds(10)
        while ran.value.load(ordering: .relaxed) == 0, ContinuousClock.now < deadline { loop.runIteration(timeout: 1) }
        #expect(ran.value.load(ordering: .relaxed) == 1, "the task ran on the stepping thread")
    }
}
