@testable import ActionsGatewayController
import Foundation
import GitHubKit
import KubeKit
import Logging
import OutboundPool
import TestSupport
import Testing

/// Recovery's pure parts on plain values (which pod states are which cause, the ledger's
/// budget and claims, the re-run pacing), then its loop on a manual clock against the fakes.
@Suite struct DisruptionTests {
    /// A worker pod as the API server would send it (decoded, as the informer decodes it).
    static func pod(phase: String? = "Running", reason: String? = nil, target: String? = nil, container: [String: Any]? = nil,
                    deletedAt: String? = nil, grace: Int64? = nil, deletionReason: String? = nil) -> Pod {
        var annotations = [WorkerLabels.runID: "77", WorkerLabels.repository: "acme/widgets", WorkerLabels.acquisition: "scaleSet"]
        if let deletionReason { annotations[WorkerLabels.deletionReason] = deletionReason }
        var metadata: [String: Any] = ["name": "gw-cpu-1", "namespace": "team-a", "uid": "u1", "annotations": annotations,
                                       "labels": [WorkerLabels.group: "cpu", WorkerLabels.jobID: "j1"]]
        if let deletedAt { metadata["deletionTimestamp"] = deletedAt }
        if let grace { metadata["deletionGracePeriodSeconds"] = grace }
        var status: [String: Any] = [:]
        if let phase { status["phase"] = phase }
        if let reason { status["reason"] = reason }
        if let target { status["conditions"] = [["type": "DisruptionTarget", "status": "True", "reason": target]] }
        if let container { status["containerStatuses"] = [["name": "runner", "state": container]] }
        let data = (try? JSONSerialization.data(withJSONObject: ["metadata": metadata, "status": status])) ?? Data()
        guard let pod = try? JSONDecoder().decode(Pod.self, from: data) else { preconditionFailure("the test's pod does not decode") }
        return pod
    }

    static var running: [String: Any] { ["running": ["startedAt": "2026-12-03T10:00:00Z"]] }
    static func ended(at finished: String, reason: String? = nil, exit: Int = 137) -> [String: Any] {
        var terminated: [String: Any] = ["exitCode": exit, "startedAt": "2026-12-03T10:00:00Z", "finishedAt": finished]
        if let reason { terminated["reason"] = reason }
        return ["terminated": terminated]
    }
    static var waiting: [String: Any] { ["waiting": ["reason": "ImagePullBackOff"]] }

    /// Every row of spec section 5's table, and the states next to each that are not it.
    static let rows: [(String, Pod, Bool, DisruptionCause?)] = [
        ("running", pod(container: running), false, nil),
        ("succeeded", pod(phase: "Succeeded", container: ended(at: "2026-12-03T10:05:00Z", exit: 0)), false, nil),
        ("failed by its own exit", pod(phase: "Failed", container: ended(at: "2026-12-03T10:05:00Z", exit: 1)), false, nil),
        ("evicted", pod(phase: "Failed", reason: "Evicted", container: ended(at: "2026-12-03T10:05:00Z")), false, .eviction),
        ("preempted, running", pod(target: "PreemptionByScheduler", container: running), false, .preemption),
        ("preempted, ended Succeeded", pod(phase: "Succeeded", target: "PreemptionByScheduler",
                                           container: ended(at: "2026-12-03T10:05:00Z", exit: 0)), false, .preemption),
        ("taint manager", pod(target: "DeletionByTaintManager", container: running, deletedAt: "2026-12-03T10:05:00Z"), true, .nodeLost),
        ("pod GC", pod(target: "DeletionByPodGC", container: running), true, .nodeLost),
        ("drained", pod(target: "EvictionByEvictionAPI", container: running, deletedAt: "2026-12-03T10:05:00Z", grace: 30), false, .drain),
        ("kubelet shutdown", pod(phase: "Failed", target: "TerminationByKubelet", container: ended(at: "2026-12-03T10:05:00Z")), false, .drain),
        ("OOMKilled", pod(phase: "Failed", container: ended(at: "2026-12-03T10:05:00Z", reason: "OOMKilled")), false, .oom),
        ("OOMKilled and evicted", pod(phase: "Failed", reason: "Evicted", container: ended(at: "2026-12-03T10:05:00Z", reason: "OOMKilled")),
         false, .eviction),
        ("deleted, ended after the request", pod(phase: "Failed", container: ended(at: "2026-12-03T10:05:10Z", exit: 143),
                                                  deletedAt: "2026-12-03T10:05:30Z", grace: 30), false, .deletion),
        ("deleted, gone while running (forced)", pod(container: running, deletedAt: "2026-12-03T10:05:00Z", grace: 0), true, .deletion),
        ("deleting, still in its grace period", pod(container: running, deletedAt: "2026-12-03T10:05:30Z", grace: 30), false, nil),
        ("deleted after it had finished", pod(phase: "Failed", container: ended(at: "2026-12-03T10:04:00Z", exit: 1),
                                              deletedAt: "2026-12-03T10:05:30Z", grace: 30), true, nil),
        ("deleted before it started", pod(phase: "Pending", container: waiting), true, .abandoned),
        ("deleting before it started", pod(phase: "Pending", deletedAt: "2026-12-03T10:05:30Z", grace: 30), false, .abandoned),
        ("our own deletion", pod(container: running, deletedAt: "2026-12-03T10:05:00Z", deletionReason: "completed_ttl"), true, nil),
        ("our own deletion of a preempted pod", pod(target: "PreemptionByScheduler", container: running, deletionReason: "orphaned_running"),
         true, nil),
        ("our reclaim", pod(container: running, deletedAt: "2026-12-03T10:05:00Z", deletionReason: "quota-reclaimed"), true, .quotaReclaimed),
    ]

    @Test(arguments: 0..<rows.count)
    func eachRowOfTheTable(_ index: Int) {
        let (what, pod, gone, expected) = Self.rows[index]
        #expect(Disruption.classify(pod, gone: gone, retryOOMKilled: true)?.cause == expected, "\(what)")
    }

    @Test func anOOMKillIsRerunOnlyWhenTheGroupSaysSo() {
        let oom = Self.pod(phase: "Failed", container: Self.ended(at: "2026-12-03T10:05:00Z", reason: "OOMKilled"))
        #expect(Disruption.classify(oom, gone: false, retryOOMKilled: false) == nil)
    }

    @Test func theDisruptionCarriesTheJobsIdentity() throws {
        let evicted = try #require(Disruption.classify(Self.pod(phase: "Failed", reason: "Evicted"), gone: false, retryOOMKilled: true))
        #expect(evicted == Disruption(cause: .eviction, pod: "gw-cpu-1", uid: "u1", group: "cpu", jobID: "j1", runID: 77,
                                      repository: "acme/widgets", acquisition: "scaleSet"))
    }
}

@Suite struct RetryLedgerTests {
    static func disruption(uid: String, run: Int64? = 77, cause: DisruptionCause = .eviction, acquisition: String = "scaleSet",
                           repository: String = "acme/widgets") -> Disruption {
        Disruption(cause: cause, pod: "pod-\(uid)", uid: uid, group: "cpu", jobID: "j-\(uid)", runID: run, repository: repository,
                   acquisition: acquisition)
    }

    @Test func oneBudgetPerRunAcrossCausesAndOneCountPerPod() {
        var ledger = RetryLedger()
        #expect(ledger.admit(Self.disruption(uid: "a"), budget: 2, now: 1000) == .scheduled)
        #expect(ledger.admit(Self.disruption(uid: "a"), budget: 2, now: 1001) == .alreadyHandled)
        #expect(ledger.admit(Self.disruption(uid: "b", cause: .oom), budget: 2, now: 1002) == .joined, "a re-run of the run is pending")
        #expect(ledger.runs["77"]?.spent == 1)
        #expect(ledger.pending["77"]?.pods == ["pod-a", "pod-b"])
        #expect(ledger.pending["77"]?.due == 1005 && ledger.pending["77"]?.deadline == 1905)
        ledger.pending["77"] = nil  // that re-run ended
        #expect(ledger.admit(Self.disruption(uid: "c", cause: .preemption), budget: 2, now: 2000) == .scheduled)
        ledger.pending["77"] = nil
        #expect(ledger.admit(Self.disruption(uid: "d"), budget: 2, now: 3000) == .exhausted(spent: 2))
        #expect(ledger.admit(Self.disruption(uid: "d"), budget: 2, now: 3001) == .alreadyHandled, "exhausted is reported once")
        #expect(ledger.admit(Self.disruption(uid: "e", cause: .quotaReclaimed), budget: 2, now: 3002) == .scheduled,
                "a reclaim spends no budget")
        #expect(ledger.runs["77"]?.spent == 2)
    }

    @Test func zeroDisablesAndUnknownRunsAreRefused() {
        var ledger = RetryLedger()
        #expect(ledger.admit(Self.disruption(uid: "a"), budget: 0, now: 1) == .exhausted(spent: 0))
        #expect(ledger.admit(Self.disruption(uid: "b", run: nil), budget: 2, now: 1) == .identityUnknown)
        #expect(ledger.admit(Self.disruption(uid: "c", run: 0), budget: 2, now: 1) == .identityUnknown)
        #expect(ledger.admit(Self.disruption(uid: "d", run: 5, repository: "acme/../../orgs"), budget: 2, now: 1) == .identityUnknown)
    }

    @Test func budgetsExpireAfterADayUnlessARerunIsPending() {
        var ledger = RetryLedger()
        _ = ledger.admit(Self.disruption(uid: "a", run: 1), budget: 2, now: 0)
        _ = ledger.admit(Self.disruption(uid: "b", run: 2), budget: 2, now: 0)
        ledger.pending["1"] = nil
        ledger.expire(now: RetryLedger.ttl)
        #expect(ledger.runs["1"] == nil && ledger.runs["2"] != nil)
    }

    @Test func aClassicJobThatNeverStartedIsCancelledFirst() {
        var ledger = RetryLedger()
        #expect(ledger.admit(Self.disruption(uid: "a", cause: .abandoned, acquisition: "classic"), budget: 2, now: 100) == .scheduled)
        let entry = ledger.pending["77"]
        #expect(entry?.cancelled == false && entry?.waitScheduledAfter == 100 && entry?.deadline == 105 + RetryLedger.scheduledWait)
    }
}

@Suite struct RerunPlanTests {
    static func entry(_ cause: DisruptionCause = .eviction, due: Int64 = 5) -> RetryLedger.Pending {
        RetryLedger.Pending(runID: 77, repository: "acme/widgets", cause: cause, group: "cpu", pods: ["p"], due: due, deadline: due + 900,
                            attempts: 0, statusUnknown: false, cancelled: nil, waitScheduledAfter: nil)
    }

    @Test func alreadyRunningIsRetriedEvery30sUntilTheWindowCloses() {
        var entry = Self.entry()
        #expect(RerunPlan.first(entry) == .rerun)
        var now: Int64 = 5
        var calls = 0
        while true {
            calls += 1
            let next = RerunPlan.next(&entry, after: .rerun, answer: .alreadyRunning, now: now)
            guard case .retry(let at) = next else {
                #expect(next == .finish(.failed("run_never_concluded")))
                break
            }
            #expect(at == now + 30)
            now = at
        }
        #expect(calls == 31 && now == 905, "calls at 5, 35, ..., 905: the 15-minute window")
        #expect(entry.attempts == 31)
    }

    @Test func acceptedEndsItAndOtherAnswersFail() {
        var entry = Self.entry()
        #expect(RerunPlan.next(&entry, after: .rerun, answer: .accepted, now: 5) == .finish(.accepted))
        #expect(RerunPlan.next(&entry, after: .rerun, answer: .refused(422, "no failed jobs"), now: 5) == .finish(.failed("api_error")))
        #expect(RerunPlan.next(&entry, after: .rerun, answer: .unavailable("503"), now: 5) == .retry(at: 35), "no answer: try again")
    }

    @Test func aDeletionReadsTheRunAndStandsDownWhenItWasCancelled() {
        var entry = Self.entry(.deletion)
        #expect(RerunPlan.first(entry) == .readRun)
        #expect(RerunPlan.next(&entry, after: .readRun, answer: .run(status: "completed", conclusion: "cancelled"), now: 5)
                == .finish(.withheld("run_cancelled")))
        #expect(RerunPlan.next(&entry, after: .readRun, answer: .run(status: "completed", conclusion: "failure"), now: 5) == .call(.rerun))
        #expect(RerunPlan.next(&entry, after: .readRun, answer: .unavailable("timeout"), now: 5) == .retry(at: 35))
        var unknown = Self.entry(.deletion)
        _ = RerunPlan.next(&unknown, after: .readRun, answer: .unavailable("timeout"), now: 890)
        #expect(RerunPlan.next(&unknown, after: .readRun, answer: .unavailable("timeout"), now: 900) == .finish(.failed("conclusion_unknown")))
        #expect(RerunPlan.next(&entry, after: .readRun, answer: .refused(404, "Not Found"), now: 5) == .finish(.failed("api_error")))
    }

    @Test func aClassicNeverStartedRunIsCancelledThenRerunOnceCapacityIsBack() {
        var entry = Self.entry(.abandoned)
        entry.cancelled = false
        entry.waitScheduledAfter = 0
        entry.deadline = 5 + RetryLedger.scheduledWait
        #expect(RerunPlan.first(entry) == .forceCancel)
        #expect(RerunPlan.next(&entry, after: .forceCancel, answer: .accepted, now: 5) == .call(.awaitScheduled))
        #expect(RerunPlan.first(entry) == .awaitScheduled, "after a restart it waits, it does not cancel again")
        #expect(RerunPlan.next(&entry, after: .awaitScheduled, answer: .unavailable("no pod"), now: 5) == .retry(at: 35))
        #expect(RerunPlan.next(&entry, after: .awaitScheduled, answer: .accepted, now: 600) == .call(.rerun))
        #expect(entry.deadline == 1500 && RerunPlan.first(entry) == .rerun)
        var expired = Self.entry(.abandoned)
        expired.waitScheduledAfter = 0
        expired.deadline = 100
        #expect(RerunPlan.next(&expired, after: .awaitScheduled, answer: .unavailable("no pod"), now: 90) == .finish(.failed("capacity_never_returned")))
    }
}

/// The re-run loop on a manual clock, against the fake GitHub (which refuses re-runs as told)
/// and the fake API server (which holds the retries ConfigMap and the Events). Nothing sleeps:
/// each step advances the clock and runs one pass.
@Suite(.serialized) struct RecoveryLoopTests {
    /// Both fakes, a Recovery on a manual clock, and readers of what the fakes saw.
    final class World: Sendable {
        let kube: PythonFake
        let github: PythonFake
        let pool: OutboundPool
        let client: KubeClient
        let clock = ManualControllerClock()
        let metrics = AGCMetrics()
        let recovery: Recovery
        let tokens: InstallationTokens

        init() async throws {
            let app = try AppFixture(appID: "42")
            kube = try PythonFake("kube_apiserver.py")
            github = try PythonFake("github_actions.py", ["--public-key", app.publicKey, "--app-id", "42"])
            pool = try OutboundPool()
            client = KubeClient(server: kube.url, pool: pool)
            _ = try await client.create("/api/v1/namespaces", ["metadata": ["name": "team-a"] as JSONObject])
            let runner = ControllerRunner(metrics: RunnerMetrics(prefix: "agc_"), clock: clock)
            let pods = runner.watch(Pod.self, client: client, namespace: "team-a") { _ in [] }
            let events = EventRecorder(client: client, component: "agc", involved: .init(
                apiVersion: "actions-gateway.github.com/v1alpha1", kind: "ActionsGateway", name: "gw", namespace: "team-a", uid: nil),
                                       clock: clock, logger: .init(label: "test"))
            recovery = Recovery(namespace: "team-a", gateway: "gw", client: client, pods: pods, metrics: metrics, events: events,
                                clock: clock, logger: .init(label: "test"))
            // GitHub's token endpoint checks the App JWT against real time: the tokens keep it.
            let tokens = InstallationTokens(credentials: try AppCredentials.load(directory: app.directory), apiBase: github.url + "/api/v3",
                                            pool: pool)
            self.tokens = tokens
            let (pool, base) = (pool, github.url + "/api/v3")
            await recovery.setRuns { _ in RunsClient(apiBase: base, tokens: tokens, pool: pool) }
        }

        deinit { pool.shutdown() }

        func control(_ name: String, _ body: [String: Any]? = nil) async throws -> [String: Any] {
            let bytes = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) }
            let response = try await pool.send(OutboundRequest(method: bytes == nil ? "GET" : "POST", url: github.url + "/control/" + name,
                                                               headers: [("Content-Type", "application/json")], body: bytes))
            return try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] ?? [:]
        }

        /// Re-run calls GitHub saw for run 77, as accepted or not.
        func reruns() async throws -> [Bool] {
            let calls = try await control("state")["reruns"] as? [[String: Any]] ?? []
            return calls.filter { $0["runId"] as? String == "77" }.compactMap { $0["accepted"] as? Bool }
        }

        /// The ledger as the API server holds it.
        func ledger() async throws -> RetryLedger {
            let map = try await client.get("/api/v1/namespaces/team-a/configmaps/gw-retries")
            let text = (map?["data"] as? JSONObject)?["retries.json"] as? String ?? "{}"
            return try JSONDecoder().decode(RetryLedger.self, from: Data(text.utf8))
        }

        func step(_ seconds: Int64) async {
            clock.advance(by: .seconds(seconds))
            await recovery.pass()
        }

        func warnings(_ reason: String) async throws -> Int {
            let items = try await client.list("/api/v1/namespaces/team-a/events")
            return items.filter { $0["reason"] as? String == reason && $0["type"] as? String == "Warning" }.count
        }
    }

    static let evicted = Disruption(cause: .eviction, pod: "gw-cpu-1", uid: "u1", group: "cpu", jobID: "j1", runID: 77,
                                    repository: "acme/widgets", acquisition: "scaleSet")

    @Test func theRerunWaits5sThenHonoursThe403Window() async throws {
        let world = try await World()
        _ = try await world.control("rerun-refusals", ["runId": 77, "count": 3])
        #expect(await world.recovery.take(Self.evicted, budget: 2))
        #expect(try await world.ledger().pending["77"] != nil, "pending, in the ConfigMap, before any call")
        await world.step(4)
        #expect(try await world.reruns().isEmpty, "nothing before 5 s")
        await world.step(1)
        #expect(try await world.reruns() == [false])
        await world.step(29)
        #expect(try await world.reruns() == [false], "the next call waits 30 s")
        for _ in 0..<3 { await world.step(30) }
        #expect(try await world.reruns() == [false, false, false, true])
        #expect(try await world.ledger().pending.isEmpty)
        #expect(try await world.ledger().runs["77"]?.spent == 1)
        await world.step(60)
        #expect(try await world.reruns().count == 4, "accepted once: no further call")
    }

    @Test func theWindowClosesAfter15Minutes() async throws {
        let world = try await World()
        _ = try await world.control("rerun-refusals", ["runId": 77, "count": 1000])
        #expect(await world.recovery.take(Self.evicted, budget: 2))
        await world.step(5)
        for _ in 0..<35 { await world.step(30) }
        #expect(try await world.reruns().count == 31, "calls at 5 s, 35 s, ..., 905 s, then none")
        #expect(try await world.ledger().pending.isEmpty)
        #expect(try await world.warnings("EvictionRerunFailed") == 1)
    }

    @Test func aPendingRerunSurvivesANewRecovery() async throws {
        let world = try await World()
        #expect(await world.recovery.take(Self.evicted, budget: 2))
        // A new process: its Recovery reads the ConfigMap, and neither counts the pod again
        // nor forgets the re-run.
        let again = try await World.reusing(world)
        #expect(await again.take(Self.evicted, budget: 2))
        #expect(try await world.ledger().runs["77"]?.spent == 1)
        world.clock.advance(by: .seconds(5))
        await again.pass()
        #expect(try await world.reruns() == [true])
    }
}

extension RecoveryLoopTests.World {
    /// A second Recovery over the same fakes and clock (a restarted AGC).
    static func reusing(_ world: RecoveryLoopTests.World) async throws -> Recovery {
        let runner = ControllerRunner(metrics: RunnerMetrics(prefix: "agc_"), clock: world.clock)
        let pods = runner.watch(Pod.self, client: world.client, namespace: "team-a") { _ in [] }
        let events = EventRecorder(client: world.client, component: "agc", involved: .init(
            apiVersion: "actions-gateway.github.com/v1alpha1", kind: "ActionsGateway", name: "gw", namespace: "team-a", uid: nil),
                                   clock: world.clock, logger: .init(label: "test"))
        let recovery = Recovery(namespace: "team-a", gateway: "gw", client: world.client, pods: pods, metrics: AGCMetrics(), events: events,
                                clock: world.clock, logger: .init(label: "test"))
        let (pool, base) = (world.pool, world.github.url + "/api/v3")
        let tokens = world.tokens
        await recovery.setRuns { _ in RunsClient(apiBase: base, tokens: tokens, pool: pool) }
        return recovery
    }
}
