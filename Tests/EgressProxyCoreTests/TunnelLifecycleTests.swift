import EgressLoop
import Testing

@testable import EgressProxyCore

/// The tunnel's phases, event by event, with no socket and a hand-driven clock.
struct TunnelLifecycleTests {
    let limits = TunnelLifecycle.Limits(ProxyConfig.Timeouts())  // idle 300 s, lifetime 6 h
    let start = Instant(nanoseconds: 1_000_000_000)

    func at(_ seconds: Int) -> Instant { start + .seconds(seconds) }

    func client(readable: Bool = true, writable: Bool = false, gone: Bool = false) -> TunnelLifecycle.Event {
        .ready(client: true, readable: readable, writable: writable, gone: gone)
    }

    func upstream(readable: Bool = true, writable: Bool = false, gone: Bool = false) -> TunnelLifecycle.Event {
        .ready(client: false, readable: readable, writable: writable, gone: gone)
    }

    func relaying() -> TunnelLifecycle {
        var machine = TunnelLifecycle()
        for phase in [TunnelLifecycle.Phase.resolving, .connecting] { _ = machine.handle(.entered(phase, at: start, limits: limits)) }
        #expect(machine.handle(.entered(.relaying, at: start, limits: limits)) == .arm(at(300)), "the idle deadline comes first")
        return machine
    }

    @Test func eachPhaseAnswersTheSocketItWaitsOn() {
        var machine = TunnelLifecycle()
        #expect(machine.handle(client()) == .readHead)
        #expect(machine.handle(upstream()) == .none, "no upstream before the dial")
        _ = machine.handle(.entered(.resolving, at: start, limits: limits))
        #expect(machine.handle(client()) == .none, "client bytes wait while resolving (they are early data)")
        _ = machine.handle(.entered(.connecting, at: start, limits: limits))
        #expect(machine.handle(upstream(readable: false, writable: true)) == .finishConnect)
        _ = machine.handle(.entered(.chaining, at: start, limits: limits))
        #expect(machine.handle(upstream()) == .handshake)
        _ = machine.handle(.entered(.relaying, at: start, limits: limits))
        #expect(machine.handle(upstream(readable: true, writable: true)) == .relay(.upstream, readable: true, writable: true))
        #expect(machine.handle(client(readable: false, writable: false, gone: true)) == .relay(.client, readable: true, writable: true),
                "a hangup reaches the relay machine as readiness: its read returns EOF or the error")
    }

    @Test func theClientLeavingBeforeTheDialEndsTheTunnelWithoutARecord() {
        for phase in [TunnelLifecycle.Phase.resolving, .connecting, .chaining] {
            var machine = TunnelLifecycle()
            _ = machine.handle(.entered(phase, at: start, limits: limits))
            #expect(machine.handle(client(gone: true)) == .finish(established: false, why: "client_gone"), "\(phase)")
        }
    }

    @Test func timersRefuseBeforeRelayingAndMeasureIdleAndLifetimeAfter() {
        var reading = TunnelLifecycle()
        #expect(reading.handle(.timer(now: at(5), lastActivity: start, limits: limits)) == .refuse(.init(status: 408, result: .timeout, why: "header_timeout")))
        var dialing = TunnelLifecycle()
        _ = dialing.handle(.entered(.chaining, at: start, limits: limits))
        #expect(dialing.handle(.timer(now: at(10), lastActivity: start, limits: limits)) == .refuse(.init(status: 502, result: .dialFailed, why: "dial_timeout")))

        var machine = relaying()
        #expect(machine.handle(.timer(now: at(300), lastActivity: at(200), limits: limits)) == .arm(at(500)), "active since: re-armed")
        #expect(machine.handle(.timer(now: at(500), lastActivity: at(200), limits: limits)) == .finish(established: true, why: "idle_timeout"))
        var busy = relaying()
        let sixHours = 6 * 3600
        #expect(busy.handle(.timer(now: at(sixHours - 100), lastActivity: at(sixHours - 101), limits: limits)) == .arm(at(sixHours)),
                "the lifetime caps the next deadline")
        #expect(busy.handle(.timer(now: at(sixHours), lastActivity: at(sixHours - 1), limits: limits)) == .finish(established: true, why: "lifetime"),
                "busy or not")
        #expect(busy.establishedAt == start)
    }

    @Test func transitionsOnlyMoveForwardAndClosedIsFinal() {
        var machine = relaying()
        _ = machine.handle(.entered(.resolving, at: at(1), limits: limits))
        #expect(machine.phase == .relaying, "a late lookup answer cannot move a relaying tunnel back")
        _ = machine.handle(.entered(.lingering, at: at(2), limits: limits))
        #expect(machine.phase == .lingering && machine.handle(client()) == .linger)
        #expect(machine.handle(upstream()) == .none)
        #expect(machine.handle(.timer(now: at(4), lastActivity: at(2), limits: limits)) == .finish(established: false, why: ""))
        _ = machine.handle(.entered(.closed, at: at(4), limits: limits))
        for event in [client(), upstream(), .timer(now: at(9), lastActivity: at(2), limits: limits)] {
            #expect(machine.handle(event) == .none)
        }
        _ = machine.handle(.entered(.lingering, at: at(5), limits: limits))
        _ = machine.handle(.entered(.relaying, at: at(5), limits: limits))
        #expect(machine.phase == .closed)
    }

    @Test func aRefusalWhileReadingTheHeadLingersStraightAway() {
        var machine = TunnelLifecycle()
        _ = machine.handle(.entered(.lingering, at: start, limits: limits))
        #expect(machine.phase == .lingering && machine.establishedAt == nil)
    }

    @Test func theLookupAndTheDialAreTimedForTheAuditLine() {
        var named = TunnelLifecycle()
        _ = named.handle(.entered(.resolving, at: start, limits: limits))
        _ = named.handle(.entered(.connecting, at: start + .milliseconds(30), limits: limits))
        #expect(named.resolveMilliseconds == 30 && named.connectMilliseconds == nil, "connecting has not ended yet")
        _ = named.handle(.entered(.chaining, at: start + .milliseconds(42), limits: limits))
        _ = named.handle(.entered(.relaying, at: start + .milliseconds(50), limits: limits))
        #expect(named.connectMilliseconds == 20, "the parent exchange counts as connecting")

        var literal = TunnelLifecycle()
        _ = literal.handle(.entered(.connecting, at: start, limits: limits))
        _ = literal.handle(.entered(.lingering, at: start + .seconds(3), limits: limits))  // a refused dial
        #expect(literal.resolveMilliseconds == nil && literal.connectMilliseconds == 3_000, "an IP literal is never looked up")

        var refused = TunnelLifecycle()
        _ = refused.handle(.entered(.lingering, at: start, limits: limits))
        #expect(refused.resolveMilliseconds == nil && refused.connectMilliseconds == nil)
    }
}
