@testable import ActionsGatewayController
import KubeKit
import Testing

/// The AGC's status plan is pure: facts and the gateway as read in, a merge patch (or none) out.
@Suite struct StatusTests {
    func gateway(conditions: [JSONObject], groups: [JSONObject]? = nil) -> JSONObject {
        var status: JSONObject = ["conditions": conditions as [any Sendable]]
        if let groups { status["runnerGroups"] = groups as [any Sendable] }
        return ["metadata": ["name": "gw", "resourceVersion": "41", "generation": Int64(3)] as JSONObject, "status": status]
    }

    func types(_ patch: JSONObject?) -> [String] {
        let status = patch?["status"] as? JSONObject
        return (status?["conditions"] as? [any Sendable])?.compactMap { ($0 as? JSONObject)?["type"] as? String } ?? []
    }

    func condition(_ patch: JSONObject?, _ type: String) -> JSONObject? {
        let status = patch?["status"] as? JSONObject
        return (status?["conditions"] as? [any Sendable])?.compactMap { $0 as? JSONObject }.first { $0["type"] as? String == type }
    }

    @Test func aRefusedRunnerVersionSaysSoInTheAuthenticationCondition() {
        var old = GroupFacts(name: "legacy", acquisition: "classic")
        old.versionRefused = "Runner version v2.300.0 is too old"
        let alone = AGCStatus.conditions([old], tokenFailure: nil).first { $0.type == "GitHubAuthenticated" }
        #expect(alone?.status == "False" && alone?.reason == "RunnerVersionTooOld")
        #expect(alone?.message == "group legacy: runner version refused: Runner version v2.300.0 is too old")
        var denied = GroupFacts(name: "cpu", acquisition: "classic")
        denied.authFailure = "http 401"
        let both = AGCStatus.conditions([old, denied], tokenFailure: nil).first { $0.type == "GitHubAuthenticated" }
        #expect(both?.reason == "Unauthorized" && both?.message.contains("legacy") == true, "credentials first; the version still named")
    }

    @Test func conditionsNameTheGroupsAndSayWhy() {
        var cpu = GroupFacts(name: "cpu", acquisition: "scaleSet")
        cpu.quotaHold = Hold(reason: "quota", detail: "pods 4/4")
        cpu.rateLimitedFor = .seconds(599)
        var gpu = GroupFacts(name: "gpu", acquisition: "scaleSet")
        gpu.unschedulable = 2
        gpu.rateLimitedFor = .seconds(600)
        gpu.authFailure = "http 401"
        let byType = Dictionary(uniqueKeysWithValues: AGCStatus.conditions([cpu, gpu], tokenFailure: nil).map { ($0.type, $0) })
        #expect(Set(byType.keys) == AGCStatus.ownedConditions)
        #expect(byType["WorkerQuotaExceeded"]?.status == "True")
        #expect(byType["WorkerQuotaExceeded"]?.message == "group cpu: quota pods 4/4")
        #expect(byType["WorkersUnschedulable"]?.message == "group gpu: 2 pod(s) cannot be scheduled")
        #expect(byType["RateLimited"]?.status == "True", "ten minutes of 429s and no more")
        #expect(byType["RateLimited"]?.message.contains("cpu") == false)
        #expect(byType["GitHubAuthenticated"]?.status == "False")
        #expect(byType["GitHubAuthenticated"]?.message == "group gpu: http 401")

        let calm = AGCStatus.conditions([GroupFacts(name: "cpu", acquisition: "scaleSet")], tokenFailure: nil)
        #expect(calm.allSatisfy { $0.type == "GitHubAuthenticated" ? $0.status == "True" : $0.status == "False" })
        let token = AGCStatus.conditions([], tokenFailure: "http 500")
        #expect(token.first { $0.type == "GitHubAuthenticated" }?.message == "installation token: http 500")
    }

    @Test func thePatchKeepsTheGMCsConditionsAndTransitionTimesAndCarriesTheResourceVersion() throws {
        let gmc: JSONObject = ["type": "Ready", "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"]
        let oldQuota: JSONObject = ["type": "WorkerQuotaExceeded", "status": "False", "reason": "WithinQuota", "message": "",
                                    "lastTransitionTime": "2026-01-02T00:00:00Z"]
        var cpu = GroupFacts(name: "cpu", acquisition: "scaleSet")
        cpu.runningJobs = 2
        cpu.pendingJobs = 1
        cpu.queuedAtGitHub = 7
        let conditions = AGCStatus.conditions([cpu], tokenFailure: nil)
        let patch = try #require(AGCStatus.patch(gateway: gateway(conditions: [gmc, oldQuota]), groups: [cpu], conditions: conditions,
                                                 now: "2026-02-02T00:00:00Z"))
        #expect(types(patch) == ["GitHubAuthenticated", "RateLimited", "WorkersUnschedulable", "WorkerQuotaExceeded", "Drained", "Ready"])
        #expect(condition(patch, "Ready")?["lastTransitionTime"] as? String == "2026-01-01T00:00:00Z", "the GMC's, untouched")
        #expect(condition(patch, "WorkerQuotaExceeded")?["lastTransitionTime"] as? String == "2026-01-02T00:00:00Z",
                "same status: the transition time stays")
        #expect(condition(patch, "GitHubAuthenticated")?["lastTransitionTime"] as? String == "2026-02-02T00:00:00Z")
        #expect(condition(patch, "GitHubAuthenticated")?["observedGeneration"] as? Int64 == 3)
        #expect((patch["metadata"] as? JSONObject)?["resourceVersion"] as? String == "41", "optimistic concurrency against the GMC")
        let line = try #require(((patch["status"] as? JSONObject)?["runnerGroups"] as? [any Sendable])?.first as? JSONObject)
        #expect(line["name"] as? String == "cpu" && line["runningJobs"] as? Int64 == 2 && line["pendingJobs"] as? Int64 == 1)
        #expect(line["queuedAtGitHub"] as? Int64 == 7 && line["acquisition"] as? String == "scaleSet")
        #expect(line["lastJobAt"] == nil, "no job yet: no field")
    }

    @Test func aStatusThatAlreadySaysItIsNotWrittenAgain() throws {
        let cpu = GroupFacts(name: "cpu", acquisition: "scaleSet")
        let conditions = AGCStatus.conditions([cpu], tokenFailure: nil)
        let first = try #require(AGCStatus.patch(gateway: gateway(conditions: []), groups: [cpu], conditions: conditions, now: "t1"))
        // What the server would hold after the patch (and the GMC's own condition beside it).
        let written = try #require(first["status"] as? JSONObject)
        var held = (written["conditions"] as? [any Sendable]) ?? []
        held.append(["type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""] as JSONObject)
        let stored = gateway(conditions: held.compactMap { $0 as? JSONObject }, groups: (written["runnerGroups"] as? [any Sendable])?.compactMap { $0 as? JSONObject })
        #expect(AGCStatus.patch(gateway: stored, groups: [cpu], conditions: conditions, now: "t2") == nil)

        var busier = cpu
        busier.runningJobs = 1
        #expect(AGCStatus.patch(gateway: stored, groups: [busier], conditions: conditions, now: "t2") != nil, "a count changed")
        var held2 = cpu
        held2.quotaHold = Hold(reason: "quota", detail: "pods 1/1")
        let patch = AGCStatus.patch(gateway: stored, groups: [held2], conditions: AGCStatus.conditions([held2], tokenFailure: nil), now: "t3")
        #expect(condition(patch, "WorkerQuotaExceeded")?["status"] as? String == "True")
        #expect(condition(patch, "WorkerQuotaExceeded")?["lastTransitionTime"] as? String == "t3")
        #expect(types(patch).last == "Degraded", "the GMC's condition rides along")
    }
}
