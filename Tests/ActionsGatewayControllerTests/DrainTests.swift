@testable import ActionsGatewayController
import KubeKit
import Testing

/// The drain annotation is tenant input read by a pure function, and `Drained` is planned from
/// the groups' facts alone.
@Suite struct DrainTests {
    func gateway(_ annotations: JSONObject?) -> JSONObject {
        var metadata: JSONObject = ["name": "gw"]
        if let annotations { metadata["annotations"] = annotations }
        return ["metadata": metadata]
    }

    @Test func onlyTheExactValuesMeanAnything() {
        #expect(Drain.request(gateway(nil)) == .serve)
        #expect(Drain.request(gateway(["other": "true"])) == .serve)
        #expect(Drain.request(gateway([Drain.annotation: "true"])) == .drain)
        #expect(Drain.request(gateway([Drain.annotation: "false"])) == .serve)
        #expect(Drain.request(gateway([Drain.annotation: "True"])) == .invalid("True"), "no guessing at case")
        #expect(Drain.request(gateway([Drain.annotation: "yes"])).draining == false)
        #expect(Drain.request(gateway([Drain.annotation: Int64(1)])) == .invalid("(not a string)"))
        let long = String(repeating: "x", count: 10_000)
        #expect(Drain.request(gateway([Drain.annotation: long])) == .invalid(String(repeating: "x", count: 64)), "bounded for the message")
    }

    @Test func drainedOnceNoSessionNoLockAndNoJobIsLeft() {
        var classic = GroupFacts(name: "legacy", acquisition: "classic")
        var scaleSet = GroupFacts(name: "cpu", acquisition: "scaleSet")
        #expect(Drain.condition(.serve, groups: [classic, scaleSet]) == GatewayCondition(type: "Drained", status: "False", reason: "NotRequested", message: ""))
        #expect(Drain.condition(.drain, groups: [classic, scaleSet]).status == "True")
        #expect(Drain.condition(.drain, groups: [classic, scaleSet]).reason == "NothingRunning")

        scaleSet.activeSessions = 1
        #expect(Drain.condition(.drain, groups: [classic, scaleSet]).status == "False", "a session not yet given up")
        scaleSet.activeSessions = 0
        scaleSet.runningJobs = 2
        scaleSet.pendingJobs = 1
        classic.locksHeld = 1  // a job held before its pod: no pod counts it
        let busy = Drain.condition(.drain, groups: [classic, scaleSet])
        #expect(busy.status == "False" && busy.reason == "JobsRunning")
        #expect(busy.message.hasPrefix("4 job(s) still running here"), "\(busy.message)")
        classic.runningJobs = 1  // the same job once its pod runs: counted once
        #expect(Drain.condition(.drain, groups: [classic, scaleSet]).message.hasPrefix("4 job(s)"))
    }

    @Test func aValueThatMeansNothingServesAndSaysSo() {
        let condition = Drain.condition(.invalid("yes"), groups: [])
        #expect(condition.status == "False" && condition.reason == "InvalidAnnotation")
        #expect(condition.message.contains("\"yes\"") && condition.message.hasSuffix("serving"))
    }

    @Test func theConditionIsTheAGCsAndWrittenWithTheOthers() {
        #expect(AGCStatus.ownedConditions.contains("Drained"))
        let conditions = AGCStatus.conditions([GroupFacts(name: "cpu", acquisition: "scaleSet")], tokenFailure: nil, drain: .drain)
        #expect(conditions.last == Drain.condition(.drain, groups: [GroupFacts(name: "cpu", acquisition: "scaleSet")]))
    }
}
