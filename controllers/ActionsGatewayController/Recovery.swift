import Foundation
import GitHubKit
import KubeKit
import Logging
import OutboundPool
import Synchronization
import Vocabulary

/// Re-runs the jobs Kubernetes took away (spec/agc.md section 5, reference section 4.3), for
/// one gateway: takes in disruptions the job lifecycle sees on the pod informer, keeps the
/// budget and the pending re-runs in ConfigMap `<gateway>-retries` (written under the
/// resourceVersion read, so a concurrent writer is a 409 and a re-read, never a lost update),
/// and paces the GitHub calls on the injected clock. After a restart it resumes every re-run
/// the ConfigMap records, and a pod counted before is never counted again: the pod's uid is
/// in its run's entry, written before any GitHub call.
public actor Recovery {
    private let namespace: String
    private let gateway: String
    private let client: KubeClient
    private let pods: Lister<Pod>
    private let metrics: AGCMetrics
    private let events: EventRecorder
    private let clock: any ControllerClock
    private let logger: Logger
    /// The GitHub calls for a group (its requests are counted under its name).
    private var runs: (@Sendable (String) -> RunsClient)?
    /// The ledger as last read or written, and the resourceVersion it had (nil: no ConfigMap yet).
    private var ledger = RetryLedger()
    private var resourceVersion: String?
    private var loaded = false
    /// Pods whose disruption was counted in this process and that have no ledger entry (no
    /// run to re-run), so a resync does not count them again.
    private var countedWithoutRun = Set<String>()
    /// The last state of pods the informer saw deleted, until their reconcile reads it
    /// (written from the informer's callback, off the actor).
    private let gone = Mutex<[String: Pod]>([:])
    /// Re-runs being worked on now (so one pass does not start a run's calls twice).
    private var inFlight = Set<String>()
    /// Pending re-runs between calls, by run: the pacing (`due`) and attempts live here, in
    /// memory, so a re-read of the ConfigMap never moves a call forward. After a restart a
    /// re-run calls at once, inside the window the ConfigMap recorded.
    private var paced: [String: RetryLedger.Pending] = [:]
    /// Re-runs GitHub answered for good whose removal from the ConfigMap is not saved yet.
    private var unsaved: [String: (RerunPlan.Outcome, RetryLedger.Pending)] = [:]

    public init(namespace: String, gateway: String, client: KubeClient, pods: Lister<Pod>, metrics: AGCMetrics,
                events: EventRecorder, clock: any ControllerClock, logger: Logger) {
        self.namespace = namespace
        self.gateway = gateway
        self.client = client
        self.pods = pods
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.logger = logger
    }

    /// The GitHub calls, once the gateway's API base and tokens are known (a re-run due
    /// before then waits for its next turn).
    public func setRuns(_ make: @escaping @Sendable (String) -> RunsClient) { runs = make }

    // MARK: evidence

    /// From the pod informer's callback: a deleted pod's last state, which its reconcile
    /// (run later, when the cache no longer has it) classifies.
    public nonisolated func noteGone(_ pod: Pod) {
        guard let name = pod.metadata.name else { return }
        gone.withLock { $0[name] = pod }
    }

    /// The last state of a pod the informer saw deleted, taken once.
    public nonisolated func takeGone(_ name: String) -> Pod? {
        gone.withLock { $0.removeValue(forKey: name) }
    }

    private var now: Int64 { Int64(clock.wallNow().timeIntervalSince1970) }

    private var path: String { KubeResource.configMaps.path(namespace: namespace, name: "\(gateway)-retries") }

    /// Reads the ConfigMap (404: an empty ledger). Throws when it cannot be read: a budget
    /// that might be spent is never assumed fresh.
    private func load() async throws {
        let map = try await client.get(path)
        resourceVersion = (map?["metadata"] as? JSONObject)?["resourceVersion"] as? String
        if let text = (map?["data"] as? JSONObject)?["retries.json"] as? String,
            let decoded = try? JSONDecoder().decode(RetryLedger.self, from: Data(text.utf8))
        {
            ledger = decoded
        } else {
            ledger = RetryLedger()
        }
        loaded = true
    }

    /// Applies `change` to the newest ledger and writes it under the resourceVersion read;
    /// on a conflict, reads again and re-applies (up to 5 times). Nil when it could not be
    /// written: the caller retries later, nothing was assumed.
    private func save<T>(_ change: (inout RetryLedger) -> T) async -> T? {
        for _ in 0..<5 {
            do {
                if !loaded { try await load() }
                var next = ledger
                let result = change(&next)
                next.expire(now: now)
                if next == ledger { return result }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                let data: JSONObject = ["retries.json": String(decoding: try encoder.encode(next), as: UTF8.self)]
                let written: JSONObject
                if let resourceVersion {
                    written = try await client.mergePatch(path, ["metadata": ["resourceVersion": resourceVersion] as JSONObject, "data": data])
                } else {
                    let meta = ObjectMeta(name: "\(gateway)-retries", namespace: namespace, labels: [WorkerLabels.gateway: gateway])
                    written = try await client.create(KubeResource.configMaps.path(namespace: namespace),
                                                      ["metadata": try KubeClient.json(meta), "data": data])
                }
                ledger = next
                resourceVersion = (written["metadata"] as? JSONObject)?["resourceVersion"] as? String
                return result
            } catch let error as OutboundError where error.kind == .http(409) || error.kind == .http(404) {
                loaded = false  // someone else wrote (or it was deleted): read again, apply again
            } catch {
                logger.warning("retries ConfigMap write failed", metadata: ["gateway": .string(gateway), "error": .string("\(error)")])
                loaded = false
                return nil
            }
        }
        return nil
    }

    // MARK: taking in

    /// Takes in one disruption the lifecycle saw: counted once per pod, claimed in the ledger
    /// and, when its run has budget, scheduled for a re-run. Returns false when the ledger
    /// could not be written (the reconcile is retried; nothing was counted).
    /// - Parameter pod: the pod as the cache has it, when it still exists: a pod claimed
    ///   before (annotation `recovery`) is not taken in again, even when the ledger entry is
    ///   gone; a newly taken one is claimed under the resourceVersion read.
    public func take(_ disruption: Disruption, budget: Int, pod: Pod? = nil) async -> Bool {
        if pod?.metadata.annotations?[WorkerLabels.recovery] != nil { return true }
        if loaded, ledger.runs[String(disruption.runID ?? 0)]?.pods.contains(disruption.uid) == true { return true }
        if countedWithoutRun.contains(disruption.uid) { return true }
        // The delay starts at the second rounded up, so it is never cut short by a fraction.
        let (at, start) = (now, Int64(clock.wallNow().timeIntervalSince1970.rounded(.up)))
        guard let admission = await save({ $0.admit(disruption, budget: budget, now: at, start: start) }) else { return false }
        if admission != .alreadyHandled, let pod { await claim(pod, disruption) }
        let labels = [disruption.group, disruption.cause.rawValue]
        var metadata: Logger.Metadata = [
            "runner_group": .string(disruption.group), "pod": .string(disruption.pod), "cause": .string(disruption.cause.rawValue),
            "run_id": .string(disruption.runID.map(String.init) ?? ""), "repository": .string(disruption.repository ?? ""),
        ]
        switch admission {
        case .alreadyHandled:
            return true
        case .identityUnknown:
            countedWithoutRun.insert(disruption.uid)
            metrics.count("agc_disruptions_total", labels)
            metrics.count("agc_reruns_total", labels + ["failed"])
            logger.warning("job disrupted: no run to re-run", metadata: metadata)
            await events.warning("EvictionRerunFailed", "worker \(disruption.pod) (\(disruption.cause.rawValue)): its workflow run is unknown, "
                                 + "so the job cannot be re-run")
        case .exhausted(let spent):
            metrics.count("agc_disruptions_total", labels)
            metrics.count("agc_reruns_total", labels + ["exhausted"])
            metadata["spent"] = .stringConvertible(spent)
            logger.warning("job disrupted: re-run budget spent", metadata: metadata)
            await events.warning("EvictionRetriesExhausted", "run \(disruption.runID ?? 0) of \(disruption.repository ?? ""): worker "
                                 + "\(disruption.pod) lost its job (\(disruption.cause.rawValue)) after \(spent) automatic re-run(s); "
                                 + "maxEvictionRetries is spent, re-run it by hand")
        case .joined:
            metrics.count("agc_disruptions_total", labels)
            logger.info("job disrupted: joins the run's pending re-run", metadata: metadata)
        case .scheduled:
            metrics.count("agc_disruptions_total", labels)
            logger.info("job disrupted: re-run scheduled", metadata: metadata)
        }
        return true
    }

    /// Stamps `recovery=<cause> <time>` on the pod under the resourceVersion read; on a
    /// conflict the pod is read again and the stamp retried (3 times, as GAG does). The ledger
    /// already holds the claim; this makes it visible (`kubectl get pod -o yaml`) and survives
    /// the ledger's loss. A pod gone meanwhile changes nothing.
    private func claim(_ pod: Pod, _ disruption: Disruption) async {
        guard let name = pod.metadata.name, var version = pod.metadata.resourceVersion else { return }
        let path = KubeResource.pods.path(namespace: namespace, name: name)
        let stamp = "\(disruption.cause.rawValue) \(ISO8601DateFormatter().string(from: clock.wallNow()))"
        for _ in 0..<3 {
            let patch: JSONObject = ["metadata": ["resourceVersion": version, "annotations": [WorkerLabels.recovery: stamp] as JSONObject] as JSONObject]
            do {
                _ = try await client.mergePatch(path, patch)
                return
            } catch let error as OutboundError where error.kind == .http(409) {
                guard let current = try? await client.get(path), let metadata = current["metadata"] as? JSONObject,
                    (metadata["annotations"] as? JSONObject)?[WorkerLabels.recovery] == nil,
                    let next = metadata["resourceVersion"] as? String
                else { return }
                version = next
            } catch {
                return
            }
        }
    }

    // MARK: the re-run loop

    /// Runs until cancelled: every pending re-run whose time has come takes its next step.
    /// Wakes at the next due second, at most a second apart (so a re-run taken in meanwhile
    /// waits no longer), on the injected clock; nothing is sent while nothing is due.
    public func run() async {
        while !Task.isCancelled {
            await pass()
            let wall = clock.wallNow().timeIntervalSince1970
            let next = ledger.pending.map { key, entry in Double(paced[key]?.due ?? entry.due) }.min() ?? wall + 1
            let wait = min(1, max(0.01, next - wall))
            guard (try? await clock.sleep(for: .milliseconds(Int64(wait * 1000)))) != nil else { return }
        }
    }

    /// Re-runs pending in the ledger (for tests and `/jobs`).
    public func pending() -> [RetryLedger.Pending] { ledger.pending.values.sorted { $0.runID < $1.runID } }

    /// Where one run's re-run got to in a pass.
    private enum Step: Sendable {
        /// Waiting for its next call; `persist`: a change a restart must not lose.
        case paced(RetryLedger.Pending, persist: Bool)
        case finished(RerunPlan.Outcome, RetryLedger.Pending)
    }

    /// One pass over what is due, eight runs at a time, then one ledger write for all of
    /// them: concurrent writes of one ConfigMap would only conflict with each other.
    func pass() async {
        if !loaded {
            do { try await load() } catch { return }
        }
        let time = now
        paced = paced.filter { ledger.pending[$0.key] != nil }
        let due = ledger.pending.filter { key, entry in
            (paced[key]?.due ?? entry.due) <= time && !inFlight.contains(key) && unsaved[key] == nil
        }.map(\.key).sorted()
        var steps: [(String, Step)] = []
        if !due.isEmpty {
            inFlight.formUnion(due)
            steps = await withTaskGroup(of: (String, Step)?.self) { tasks in
                var done: [(String, Step)] = []
                for (index, key) in due.enumerated() {
                    if index >= 8, let step = await tasks.next(), let step { done.append(step) }
                    tasks.addTask { await self.advance(key).map { (key, $0) } }
                }
                for await step in tasks { if let step { done.append(step) } }
                return done
            }
            inFlight.subtract(due)
        }
        for (key, step) in steps {
            switch step {
            case .paced(let entry, _): paced[key] = entry
            case .finished(let outcome, let entry): unsaved[key] = (outcome, entry)
            }
        }
        let persist = steps.compactMap { key, step -> (String, RetryLedger.Pending)? in
            if case .paced(let entry, true) = step { return (key, entry) }
            return nil
        }
        guard !unsaved.isEmpty || !persist.isEmpty else { return }
        let finished = unsaved
        let saved: Void? = await save { ledger in
            for key in finished.keys { ledger.pending[key] = nil }
            for (key, entry) in persist {
                ledger.pending[key]?.cancelled = entry.cancelled
                ledger.pending[key]?.waitScheduledAfter = entry.waitScheduledAfter
                ledger.pending[key]?.deadline = entry.deadline
            }
        }
        // Unsaved, a finished re-run stays pending in the ConfigMap and is saved again next
        // pass, without calling GitHub again (a second re-run call would be refused: no failed
        // job left, and reported as a failure that did not happen).
        guard saved != nil else { return }
        unsaved = [:]
        for (key, (outcome, entry)) in finished.sorted(by: { $0.key < $1.key }) {
            paced[key] = nil
            report(outcome, entry)
            await event(for: outcome, entry)
        }
    }

    /// Takes one run's re-run as far as it goes now: calls until it must wait or is finished.
    private func advance(_ key: String) async -> Step? {
        guard let recorded = ledger.pending[key] else { return nil }
        var entry = paced[key] ?? recorded
        entry.pods = recorded.pods
        var call = RerunPlan.first(entry)
        while true {
            let answer = await perform(call, entry)
            let before = entry
            switch RerunPlan.next(&entry, after: call, answer: answer, now: now) {
            case .call(let next):
                call = next
            case .retry:
                // What must survive a restart (a force-cancel done, capacity back) is saved.
                let persist = entry.cancelled != before.cancelled || entry.waitScheduledAfter != before.waitScheduledAfter
                    || entry.deadline != before.deadline
                return .paced(entry, persist: persist)
            case .finish(let outcome):
                return .finished(outcome, entry)
            }
        }
    }

    private func perform(_ call: RerunPlan.Call, _ entry: RetryLedger.Pending) async -> RunAnswer {
        if call == .awaitScheduled {
            let after = entry.waitScheduledAfter ?? 0
            let back = pods.unordered(namespace: namespace, labelValue: entry.group).contains { pod in
                (pod.metadata.creationTimestamp.flatMap(ISO8601.epochSeconds) ?? 0) > after
                    && (pod.status?.conditions?.contains { $0.type == "PodScheduled" && $0.status == "True" } ?? false)
            }
            return back ? .accepted : .unavailable("no later pod scheduled yet")
        }
        guard let runs = runs?(entry.group) else { return .unavailable("GitHub not reachable yet") }
        switch call {
        case .readRun: return await runs.run(repository: entry.repository, runID: entry.runID)
        case .rerun: return await runs.rerunFailedJobs(repository: entry.repository, runID: entry.runID)
        case .forceCancel: return await runs.forceCancel(repository: entry.repository, runID: entry.runID)
        case .awaitScheduled: return .unavailable("unreachable")
        }
    }

    private func report(_ outcome: RerunPlan.Outcome, _ entry: RetryLedger.Pending) {
        metrics.count("agc_reruns_total", [entry.group, entry.cause.rawValue, outcome.label])
        var metadata: Logger.Metadata = [
            "runner_group": .string(entry.group), "run": .stringConvertible(entry.runID), "repository": .string(entry.repository),
            "cause": .string(entry.cause.rawValue), "attempts": .stringConvertible(entry.attempts), "outcome": .string(outcome.label),
            "pods": .string(entry.pods.joined(separator: ",")),
        ]
        switch outcome {
        case .accepted: logger.info("job re-run", metadata: metadata)
        case .withheld(let reason), .failed(let reason):
            metadata["reason"] = .string(reason)
            logger.warning("job not re-run", metadata: metadata)
        }
    }

    private func event(for outcome: RerunPlan.Outcome, _ entry: RetryLedger.Pending) async {
        let run = "run \(entry.runID) of \(entry.repository)"
        switch outcome {
        case .accepted:
            break
        case .withheld(let reason):
            await events.record(reason: "EvictionRerunWithheld", message: "\(run): not re-run (\(reason)): the run was cancelled", type: "Normal")
        case .failed(let reason):
            await events.warning("EvictionRerunFailed", "\(run) lost a job (\(entry.cause.rawValue)) and could not be re-run: \(reason) "
                                 + "after \(entry.attempts) call(s); re-run it by hand")
        }
    }
}
