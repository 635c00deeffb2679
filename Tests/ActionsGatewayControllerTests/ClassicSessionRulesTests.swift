@testable import ActionsGatewayController
import GitHubKit
import OutboundPool
import Testing

/// The classic session's heal rules, with no server and no clock: a sequence of poll outcomes in,
/// the actions out.
@Suite struct ClassicSessionRulesTests {
    let request = JobRequest(requestID: 7, runServiceURL: "https://run.example", billingOwnerID: nil, messageID: 1)

    func run(_ outcomes: [ClassicSessionRules.Outcome], group: ClassicSessionRules.Group) -> [ClassicSessionRules.Action] {
        var counters = ClassicSessionRules.Counters()
        return outcomes.map { ClassicSessionRules.next($0, counters: &counters, group: group) }
    }

    @Test func anIdleSessionAboveTheBaselineExitsOnItsFiftiethEmptyPoll() {
        let actions = run(Array(repeating: .idle, count: 50), group: .init(sessions: 3, baseline: 1, polling: 3))
        #expect(actions.dropLast().allSatisfy { $0 == .poll })
        #expect(actions.last == .exit)
    }

    @Test func theBaselineAndTheLastPollerNeverExit() {
        let atBaseline = run(Array(repeating: .idle, count: 200), group: .init(sessions: 2, baseline: 2, polling: 2))
        #expect(atBaseline.allSatisfy { $0 == .poll })
        let lastPoller = run(Array(repeating: .idle, count: 200), group: .init(sessions: 3, baseline: 1, polling: 1))
        #expect(lastPoller.allSatisfy { $0 == .poll })
    }

    @Test func aDeliveryResetsTheIdleCount() {
        let outcomes: [ClassicSessionRules.Outcome] = Array(repeating: .idle, count: 49) + [.job(request)] + Array(repeating: .idle, count: 49)
        let actions = run(outcomes, group: .init(sessions: 3, baseline: 1, polling: 3))
        #expect(actions[49] == .admit(request))
        #expect(!actions.contains(.exit))
    }

    @Test func threeEmptyAnswersInARowRebuildTheSession() {
        let actions = run([.empty, .empty, .idle, .empty, .empty, .empty], group: .init(sessions: 1, baseline: 1, polling: 1))
        #expect(actions == [.pollAfter(.milliseconds(100)), .pollAfter(.milliseconds(100)), .poll,
                            .pollAfter(.milliseconds(100)), .pollAfter(.milliseconds(100)), .heal])
    }

    @Test(arguments: [(Int?.none, Duration.seconds(30)), (0, .seconds(1)), (7, .seconds(7)), (9_999, .seconds(300))])
    func throttlingWaitsRetryAfterWithinBounds(retryAfter: Int?, wait: Duration) {
        #expect(run([.throttled(retryAfterSeconds: retryAfter)], group: .init(sessions: 1, baseline: 1, polling: 1)) == [.pollAfter(wait)])
    }

    @Test func refusalsHealTimeoutsRepollAndFailuresBackOff() {
        let actions = run([.refused, .timedOut, .failed("HTTP 502"), .cancelled], group: .init(sessions: 1, baseline: 1, polling: 1))
        #expect(actions == [.heal, .poll, .fail("HTTP 502"), .exit])
    }

    @Test func pollErrorsMapOntoOutcomes() {
        func outcome(_ kind: OutboundError.Kind) -> ClassicSessionRules.Outcome {
            ClassicSessionRules.outcome(.failure(OutboundError(kind: kind, detail: "x")))
        }
        for status in [401, 403, 404, 410] { #expect(outcome(.http(status)) == .refused) }
        #expect(outcome(.http(429)) == .throttled(retryAfterSeconds: nil))
        #expect(outcome(.timeout) == .timedOut)
        #expect(outcome(.cancelled) == .cancelled)
        if case .failed = outcome(.http(500)) {} else { Issue.record("a 500 is a failure") }
        #expect(ClassicSessionRules.outcome(.success(.other("RunnerRefreshMessage"))) == .idle)
        #expect(ClassicSessionRules.outcome(.success(.empty)) == .empty)
    }
}
