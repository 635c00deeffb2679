import Foundation
import GatewayManager
import GitHubKit
import KubeKit
import Logging
import OutboundPool
import Synchronization
import Vocabulary

/// What provisioning a job came to.
public enum ProvisionResult: Sendable, Equatable {
    /// The pod exists (now, or already: a replayed assignment).
    case created(pod: String)
    /// Already handled: its pod exists or it concluded earlier (guards); nothing was created.
    case duplicate
    /// Not now: the ceiling or the quota; the source offers it again later.
    case held(Hold)
    /// The API server refused the pod: "exceeded quota" (what its quota counts, the cache did not).
    case quotaRefused(String)
    /// The API refused for a reason a retry may fix; offered again later.
    case failed(String)
}

/// A job a source holds back, as `/jobs` shows it ("why is my job waiting?").
public struct HeldJob: Sendable, Equatable {
    public var jobID: String
    public var runID: Int64?
    public var repository: String?
    /// The verdict in numbers: `ceiling 20/20`, `quota requests.nvidia.com/gpu 4000/4000`.
    public var why: String
    public var attempt: Int
    public var ageSeconds: Int
}

/// The job lifecycle of one gateway, shared by every group's source (the seam: a source hands
/// over `AcquiredJob`s and GitHub's started/completed news; the lifecycle never knows which
/// protocol they came from). Reads pods and quotas from the informer caches; writes Secrets,
/// pods, annotations and the guards ConfigMap. An actor: admission's read-then-reserve is atomic.
public actor JobLifecycle {
    /// A group as the lifecycle runs it.
    struct Group {
        var context: WorkerPodContext
        /// Jobs GitHub last reported queued for the group (nil = unknown).
        var queued: Int?
        /// Job ids concluded at GitHub, with when (epoch seconds): persisted in the guards
        /// ConfigMap before any message naming them is deleted, so a replay never provisions again.
        var completed: [String: Int64] = [:]
        /// Jobs whose pod was reaped before the job concluded, with the assigning message: a
        /// replay of that message (after a restart) must not provision again; a later message
        /// assigning the job anew (GitHub re-offering it) must.
        var reaped: [String: Guards.Reaped] = [:]
        var guardsLoaded = false
        /// When the group last got a worker pod (RFC 3339), for status.
        var lastJobAt: String?
        /// What held the group's capacity at the last allocation, for status.
        var held: Hold?
        /// What one pod of the group asks for, by priority class ("" = none): derived from the
        /// template once per configuration, not per poll.
        var shapes: [String: PodShape] = [:]

        mutating func shape(priorityClass: String?) -> PodShape {
            if let known = shapes[priorityClass ?? ""] { return known }
            let made = WorkerPod.shape(context, priorityClass: priorityClass)
            shapes[priorityClass ?? ""] = made
            return made
        }
    }

    public let namespace: String
    public let gateway: String
    private let client: KubeClient
    private let pods: Lister<Pod>
    private let quotas: Lister<ResourceQuota>
    private let metrics: AGCMetrics
    private let clock: any ControllerClock
    private let logger: Logger
    /// Re-runs what Kubernetes took away: every pod state this lifecycle reconciles is shown to it.
    public let recovery: Recovery
    /// Runner groups' team policies (`allowedTeams`), asked before a job's pod is made.
    public let teams: TeamGate
    private var groups: [String: Group] = [:]
    /// Whether the gateway's groups were applied once (pods wait for it).
    private var configured = false
    /// Pods whose start latency was observed (once per pod).
    private var startObserved = Set<String>()
    /// When accelerator use was last integrated (the clock's monotonic time).
    private var acceleratorsAt: Duration?
    /// Admitted jobs by job id, until their pod's reconcile sees it: counted against ceiling
    /// and quota while their pod is not in the cache (`unseen`), never twice.
    private var reservations: [String: (group: String, shape: PodShape, pod: String)] = [:]
    /// Secrets already deleted (their pod's terminal state seen), so a resync does not repeat it.
    private var secretsDeleted = Set<String>()
    /// Each live pod's shape, by name, with the uid it was computed for.
    private var podShapes: [String: (uid: String?, shape: PodShape)] = [:]
    /// When a terminal pod was first seen terminal without a finish time (monotonic).
    private var terminalSeen: [String: Duration] = [:]
    /// Never-started scale-set workers counted (by uid), and how often each job was offered
    /// again, and the jobs waiting for their source to take them.
    private var countedAbandoned = Set<String>()
    /// Workers this process deleted to make quota room, until the cache no longer has them.
    private var reclaiming = Set<String>()
    private var reoffers: [String: Int] = [:]
    private var reoffered: [String: [(job: JobMessage, messageID: Int64)]] = [:]
    /// GitHub's queue times from the GMC's wakes, until each job is provisioned.
    private var queuedTimes = QueuedTimes()
    /// Jobs each group's source holds back, for `/jobs` (read off the actor, by the admin server).
    private let held = Mutex<[String: [HeldJob]]>([:])
    /// Guards entries older than this are dropped (GitHub does not replay beyond it in practice).
    static let guardsTTL: Int64 = 86_400

    public init(namespace: String, gateway: String, client: KubeClient, pods: Lister<Pod>, quotas: Lister<ResourceQuota>,
                metrics: AGCMetrics, events: EventRecorder, clock: any ControllerClock, logger: Logger) {
        recovery = Recovery(namespace: namespace, gateway: gateway, client: client, pods: pods, metrics: metrics, events: events,
                            clock: clock, logger: logger)
        teams = TeamGate(metrics: metrics, events: events, clock: clock, logger: logger)
        self.namespace = namespace
        self.gateway = gateway
        self.client = client
        self.pods = pods
        self.quotas = quotas
        self.metrics = metrics
        self.clock = clock
        self.logger = logger
    }

    // MARK: configuration

    /// Applies the gateway's groups (a changed ceiling or tier list applies to the next job).
    public func configure(_ contexts: [WorkerPodContext]) {
        configured = true
        var next: [String: Group] = [:]
        for context in contexts {
            var group = groups[context.group.name] ?? Group(context: context)
            group.context = context
            group.shapes = [:]
            next[context.group.name] = group
        }
        groups = next
        // A removed group's source is stopped: what it held back is no longer waiting here.
        held.withLock { $0 = $0.filter { next[$0.key] != nil } }
    }

    /// The gateway was read but serves no group (deleted, refused): pods stop waiting for it.
    public func markConfigured() { configured = true }

    public var groupNames: [String] { groups.keys.sorted() }

    public func setQueued(_ group: String, _ count: Int?) { groups[group]?.queued = count }

    /// A group's settings as last configured.
    public func settings(of group: String) -> DefaultedGateway.Group? { groups[group]?.context.group }

    // MARK: admission

    /// The group's pods in no order (for counts; a search that must be deterministic uses `pods.list`).
    private func groupPods(_ group: String) -> [Pod] { pods.unordered(namespace: namespace, labelValue: group) }

    /// The shapes of reservations whose pod the cache does not hold yet. The watch can deliver
    /// a pod before its reconcile clears the reservation; counting both would refuse jobs below
    /// the ceiling.
    private func unseen(group: String? = nil) -> [PodShape] {
        reservations.values.compactMap { entry in
            guard group == nil || entry.group == group, pods.get(namespace: namespace, name: entry.pod) == nil else { return nil }
            return entry.shape
        }
    }

    private func active(_ group: String) -> Int {
        groupPods(group).filter(\.isActive).count + unseen(group: group).count
    }

    /// Every group's advertised total (one allocator over the shared quotas), and why each is held.
    /// - Parameter reclaiming: a floor tier that may reclaim quota advertises a slot the quota
    ///   has no room for while a lower-tier worker could make it (so GitHub hands over the
    ///   floor job that triggers the reclaim); `hasRoom` asks without it, since room only
    ///   exists once the reclaimed worker is gone.
    public func capacities(reclaiming: Bool = true) -> [String: (total: Int, held: Hold?)] {
        let live = pods.unordered.filter(\.isActive).map(shape(of:)) + unseen()
        var demands: [Admission.Demand] = []
        for name in groups.keys.sorted() {
            guard var group = groups[name] else { continue }
            let settings = group.context.group
            let active = active(name)
            let tier = Admission.tier(active: active, tiers: settings.tiers, maxWorkers: settings.maxWorkers,
                                      templateClass: settings.podPriorityClassName)
            let shape = group.shape(priorityClass: tier?.priorityClass ?? settings.podPriorityClassName)
            groups[name] = group
            demands.append(Admission.Demand(group: name, active: active, ceiling: Admission.ceiling(tiers: settings.tiers, maxWorkers: settings.maxWorkers),
                                            shape: shape, queued: group.queued))
        }
        // Floor tiers that reclaim and hold a job are served first: a slot a reclaim freed must
        // go to the floor job it was freed for, not to the next group in name order. (An idle
        // floor tier reserves nothing: it can reclaim when its job comes.)
        let waiting = held.withLock { held in Set(held.filter { !$0.value.isEmpty }.keys) }
        let floors = Set(demands.filter { demand in
            guard waiting.contains(demand.group), let settings = groups[demand.group]?.context.group, settings.reclaimQuota,
                let floor = settings.tiers.first?.threshold
            else { return false }
            return demand.active < floor
        }.map(\.group))
        demands = demands.filter { floors.contains($0.group) } + demands.filter { !floors.contains($0.group) }
        var result = Admission.allocate(demands, quotas: quotas.all, pods: live)
        if reclaiming {
            for demand in demands where result[demand.group]?.held?.reason == "quota" {
                guard let settings = groups[demand.group]?.context.group, settings.reclaimQuota,
                    let floor = settings.tiers.first?.threshold, demand.active < floor, let total = result[demand.group]?.total,
                    total <= demand.active, reclaimVictims(for: demand.shape) != nil
                else { continue }
                result[demand.group]?.total = demand.active + 1
            }
        }
        for (name, verdict) in result {
            groups[name]?.held = verdict.held
            metrics.gauge("agc_advertised_capacity", [name], Double(verdict.total))
            for reason in ["ceiling", "quota"] {
                metrics.gauge("agc_capacity_withheld", [name, reason], verdict.held?.reason == reason ? 1 : 0)
            }
        }
        return result
    }

    /// Whether the group could take one more pod now (ceiling and quota, with the other groups' shares).
    public func hasRoom(_ group: String) -> Bool {
        guard let total = capacities(reclaiming: false)[group]?.total else { return false }
        return active(group) < total
    }

    /// What status reports of each group, as the caches and the last allocation have it.
    public func facts() -> [GroupFacts] {
        groups.keys.sorted().compactMap { name -> GroupFacts? in
            guard let group = groups[name] else { return nil }
            var facts = GroupFacts(name: name, acquisition: group.context.group.acquisition)
            let live = groupPods(name).filter { $0.metadata.deletionTimestamp == nil && !$0.isTerminal }
            facts.runningJobs = live.filter { $0.status?.phase == "Running" }.count
            facts.pendingJobs = live.count - facts.runningJobs + unseen(group: name).count
            facts.unschedulable = live.filter { pod in
                pod.status?.conditions?.contains { $0.type == "PodScheduled" && $0.status == "False" && $0.reason == "Unschedulable" } ?? false
            }.count
            facts.queuedAtGitHub = group.queued
            facts.lastJobAt = group.lastJobAt
            facts.quotaHold = group.held?.reason == "quota" ? group.held : nil
            return facts
        }
    }

    /// Whether the job already has a pod, an admission in flight, or concluded (guards).
    /// `messageID`: the message assigning it now; a replay of the message whose pod was reaped counts as known.
    public func knows(_ jobID: String, group: String, messageID: Int64? = nil) -> Bool {
        if reservations[jobID] != nil || groups[group]?.completed[jobID] != nil { return true }
        if let messageID, let reaped = groups[group]?.reaped[jobID], reaped.messageID >= messageID { return true }
        return pods.get(namespace: namespace, name: WorkerPod.name(gateway: gateway, group: group, jobID: jobID)) != nil
    }

    /// The `message` of the API server's Status answer (`pods "x" is forbidden: exceeded quota:
    /// ...`), else the body's first 300 bytes: what a log line or an Event should say.
    static func statusMessage(_ body: [UInt8]) -> String {
        if let status = try? KubeClient.decode(body), let message = status["message"] as? String { return String(message.prefix(500)) }
        return String(decoding: body.prefix(300), as: UTF8.self)
    }

    /// A wake said GitHub queued this job at `queuedAt` (epoch seconds).
    public func noteQueued(repository: String?, runID: Int64?, jobName: String?, queuedAt: Int64) {
        queuedTimes.note(repository: repository, runID: runID, jobName: jobName, queuedAt: queuedAt, now: clock.now())
    }

    /// Admits and provisions one job: ceiling and tier, then quota, then the Secret and the pod
    /// (both deterministic, so a replayed create is a 409 that counts as done).
    public func provision(_ job: AcquiredJob, group name: String) async -> ProvisionResult {
        var job = job
        // GitHub's queue time from a wake, when it is earlier than what the source knew (a
        // classic source knows only when it acquired the job).
        if let noted = queuedTimes.take(repository: job.repository, runID: job.runID, jobName: job.jobName, now: clock.now()) {
            job.queuedAt = min(job.queuedAt ?? noted, noted)
        }
        guard var group = groups[name] else { return .failed("runner group \(name) is gone") }
        if knows(job.jobID, group: name) { return .duplicate }
        if let pool = group.context.missingNodePool {
            return .failed("node pool \(pool) is not in the AGC's --node-pools file (the GMC renders it into \(gateway)-node-pools)")
        }
        let settings = group.context.group
        let active = active(name)
        guard let tier = Admission.tier(active: active, tiers: settings.tiers, maxWorkers: settings.maxWorkers,
                                        templateClass: settings.podPriorityClassName)
        else {
            metrics.count("agc_jobs_admission_rejected_total", [name, "ceiling"])
            return .held(Hold(reason: "ceiling", detail: "\(active)/\(Admission.ceiling(tiers: settings.tiers, maxWorkers: settings.maxWorkers))"))
        }
        let shape = group.shape(priorityClass: tier.priorityClass)
        groups[name] = group
        let live = pods.unordered.filter(\.isActive).map(shape(of:))
        let (fits, limiting) = Admission.headroom(for: shape, quotas: quotas.all, pods: live, reserved: unseen())
        if fits < 1 {
            if tier.index == 0, settings.reclaimQuota, let reclaimed = await reclaim(for: shape, group: name) { return reclaimed }
            metrics.count("agc_jobs_admission_rejected_total", [name, "quota"])
            return .held(limiting ?? Hold(reason: "quota", detail: "no headroom"))
        }
        let excluded = Admission.fullNodes(pods.unordered.filter { $0.isActive && $0.metadata.deletionTimestamp == nil }.compactMap(\.spec?.nodeName),
                                           maxPodsPerNode: settings.maxPodsPerNode)
        let podName = WorkerPod.name(gateway: gateway, group: name, jobID: job.jobID)
        reservations[job.jobID] = (name, shape, podName)
        let context = group.context
        let stamp = ISO8601DateFormatter().string(from: clock.wallNow())
        let podJSON = WorkerPod.pod(context, job: job, tier: tier.index, priorityClass: tier.priorityClass, acquiredAt: stamp,
                                    excludedNodes: excluded)
        do {
            do {
                _ = try await client.create(WorkerPod.secret(context, job: job))
            } catch let error as OutboundError where error.kind == .http(409) {}
            var uid: String?
            do {
                let created = try await client.create(KubeResource.pods.path(namespace: namespace), podJSON)
                uid = (created["metadata"] as? JSONObject)?["uid"] as? String
            } catch let error as OutboundError where error.kind == .http(409) {}
            if let uid {
                // The pod owns its Secret from now on: deleting the pod collects it.
                let owner: JSONObject = ["apiVersion": "v1", "kind": "Pod", "name": podName, "uid": uid, "controller": false]
                _ = try? await client.mergePatch(KubeResource.secrets.path(namespace: namespace, name: podName),
                                                 ["metadata": ["ownerReferences": [owner] as [any Sendable]] as JSONObject])
            }
        } catch {
            reservations[job.jobID] = nil
            // The Secret holds a runner credential: never leave it behind a pod that does not exist.
            try? await client.delete(KubeResource.secrets.path(namespace: namespace, name: podName))
            guard let error = error as? OutboundError else { return .failed("\(error)") }
            let detail = error.response.map { Self.statusMessage($0.body) } ?? error.detail
            if error.kind == .http(403), detail.contains("exceeded quota") {
                metrics.count("agc_jobs_admission_rejected_total", [name, "quota"])
                metrics.count("agc_quota_retries_total", [name])
                return .quotaRefused(detail)
            }
            logger.warning("worker pod create failed", metadata: ["runner_group": .string(name), "job_id": .string(job.jobID), "error": .string(detail)])
            return .failed(detail)
        }
        metrics.count("agc_jobs_acquired_total", [name])
        groups[name]?.lastJobAt = stamp
        if let queued = job.queuedAt ?? job.receivedAt { metrics.observe("agc_job_queue_seconds", [name], clock.wallNow().timeIntervalSince1970 - Double(queued)) }
        logger.info("job provisioned", metadata: [
            "runner_group": .string(name), "job_id": .string(job.jobID), "pod": .string(podName), "tier": .stringConvertible(tier.index),
            "run_id": .string(job.runID.map(String.init) ?? ""), "repository": .string(job.repository ?? ""),
        ])
        return .created(pod: podName)
    }

    // MARK: classic jobs

    /// A classic job's pod as the cache shows it: the source renews the job's lock while it is
    /// absent-but-expected or active, and completes fan-out siblings once it finished.
    public enum ClassicPodState: Sendable, Equatable {
        case absent
        case active
        case finished(succeeded: Bool)
    }

    /// Classic jobs whose source task waits for their pod's ending, and the endings seen for
    /// them (kept from the terminal reconcile until read: with `completedPodTTL: 0s` the pod
    /// is gone before the source looks again). Only watched jobs are recorded, so the map is
    /// bounded by the jobs in flight.
    private var classicWatched = Set<String>()
    private var classicEndings: [String: Bool] = [:]

    /// The source has a task waiting for this job's pod: record how it ends.
    public func watchClassic(jobID: String) { classicWatched.insert(jobID) }

    /// The source stopped waiting (the pod went without an ending seen, or its lock was lost).
    public func unwatchClassic(jobID: String) {
        classicWatched.remove(jobID)
        classicEndings[jobID] = nil
    }

    /// The pod's state; a recorded ending is handed over once, and ends the watch.
    public func classicPodState(jobID: String, group: String) -> ClassicPodState {
        if let succeeded = classicEndings[jobID] {
            unwatchClassic(jobID: jobID)
            return .finished(succeeded: succeeded)
        }
        guard let pod = pods.get(namespace: namespace, name: WorkerPod.name(gateway: gateway, group: group, jobID: jobID)) else { return .absent }
        if pod.isTerminal {
            unwatchClassic(jobID: jobID)
            return .finished(succeeded: pod.status?.phase == "Succeeded")
        }
        return .active
    }

    /// The group's classic worker pods still running (not finished, not being deleted): the
    /// jobs whose locks someone must renew.
    public func runningClassicPods(_ group: String) -> [(jobID: String, pod: String)] {
        groupPods(group).compactMap { pod -> (jobID: String, pod: String)? in
            guard pod.metadata.annotations?[WorkerLabels.acquisition] == "classic", !pod.isTerminal, pod.metadata.deletionTimestamp == nil,
                let job = pod.metadata.labels?[WorkerLabels.jobID], let name = pod.metadata.name
            else { return nil }
            return (job, name)
        }
    }

    /// GitHub took the job's lock away (renew 404/410, or 5 failures in a row): its pod is
    /// stamped `job_abandoned` and deleted (a worker whose job is gone only burns a node).
    public func abandonClassic(jobID: String, group: String) async {
        unwatchClassic(jobID: jobID)
        guard let pod = pods.get(namespace: namespace, name: WorkerPod.name(gateway: gateway, group: group, jobID: jobID)) else { return }
        _ = await reap(pod, reason: DeletionReason.jobAbandoned, group: group)
    }

    // MARK: GitHub's news

    /// JobStarted: GitHub may run any job on any idle runner of the set, so the pod whose
    /// runner is named `runnerName` is (re)stamped with the identity of the job that runs on it.
    public func started(_ message: JobMessage, group: String) async {
        guard let runner = message.runnerName else { return }
        guard let pod = pods.list(namespace: namespace, labelValue: group).first(where: { $0.metadata.annotations?[WorkerLabels.runnerName] == runner }),
            let podName = pod.metadata.name
        else {
            logger.info("job started on a runner without a pod", metadata: ["runner_group": .string(group), "job_id": .string(message.jobId),
                                                                            "runner": .string(runner)])
            return
        }
        var annotations: [String: any Sendable] = [WorkerLabels.jobID: message.jobId]
        if let run = message.workflowRunId { annotations[WorkerLabels.runID] = String(run) }
        if let repository = message.repository { annotations[WorkerLabels.repository] = repository }
        if let workflow = message.jobWorkflowRef { annotations[WorkerLabels.workflow] = workflow }
        if let name = message.jobDisplayName { annotations[WorkerLabels.jobName] = name }
        if pod.metadata.annotations?[WorkerLabels.runID] == annotations[WorkerLabels.runID] as? String,
            pod.metadata.annotations?[WorkerLabels.jobID] == message.jobId
        {
            return
        }
        do {
            _ = try await client.mergePatch(KubeResource.pods.path(namespace: namespace, name: podName),
                                            ["metadata": ["annotations": annotations as JSONObject] as JSONObject])
            logger.info("job started", metadata: ["runner_group": .string(group), "job_id": .string(message.jobId), "pod": .string(podName),
                                                  "run_id": .string(message.workflowRunId.map(String.init) ?? "")])
        } catch {
            logger.warning("job identity stamp failed", metadata: ["pod": .string(podName), "error": .string("\(error)")])
        }
    }

    /// JobCompleted: the job concluded at GitHub. Recorded in the guards (saved before this
    /// returns, so the caller may then delete the message), its Secret deleted, the pod stamped
    /// for the reaper. Returns false when the guards could not be saved (the caller keeps the message).
    public func completed(_ message: JobMessage, group name: String) async -> Bool {
        guard groups[name] != nil else { return true }
        // The pod that ran it: the one bound at JobStarted (its job-id annotation), else the one created for it.
        let pod = pods.list(namespace: namespace, labelValue: name).first { $0.metadata.annotations?[WorkerLabels.jobID] == message.jobId }
            ?? pods.get(namespace: namespace, name: WorkerPod.name(gateway: gateway, group: name, jobID: message.jobId))
        if groups[name]?.completed[message.jobId] == nil {
            metrics.count("agc_jobs_completed_total", [name, message.result ?? "unknown"])
            // GitHub's own clock when it gave both ends; else from the runner container's start.
            if let started = JobMessage.time(message.runnerAssignTime), let finished = JobMessage.time(message.finishTime) {
                metrics.observe("agc_job_duration_seconds", [name], Double(finished - started))
            } else if let started = pod.flatMap(Self.runnerStartedAt) {
                metrics.observe("agc_job_duration_seconds", [name], clock.wallNow().timeIntervalSince1970 - Double(started))
            }
        }
        groups[name]?.completed[message.jobId] = Int64(clock.wallNow().timeIntervalSince1970)
        reoffers[message.jobId] = nil
        guard await saveGuards(name) else { return false }
        if let pod, let podName = pod.metadata.name {
            if !pod.isTerminal, pod.metadata.annotations?[WorkerLabels.jobCompletedAt] == nil {
                let stamp = ISO8601DateFormatter().string(from: clock.wallNow())
                _ = try? await client.mergePatch(KubeResource.pods.path(namespace: namespace, name: podName),
                                                 ["metadata": ["annotations": [WorkerLabels.jobCompletedAt: stamp] as JSONObject] as JSONObject])
            }
            await deleteSecret(podName)
        } else {
            // No pod: a Secret may still be left from a create that died half-way (the AGC
            // crashed between the two). Its name is the job's, so it goes without any read of
            // the namespace's Secrets (the AGC may not list them: list would reveal their data).
            await deleteSecret(WorkerPod.name(gateway: gateway, group: name, jobID: message.jobId), track: false)
        }
        logger.info("job completed", metadata: ["runner_group": .string(name), "job_id": .string(message.jobId), "result": .string(message.result ?? ""),
                                                "run_id": .string(message.workflowRunId.map(String.init) ?? "")])
        return true
    }

    /// Which of `jobIDs` concluded at GitHub (the guards: the one record of it, kept 24 h).
    public func concluded(_ jobIDs: [String], group: String) -> Set<String> {
        Set(jobIDs.filter { groups[group]?.completed[$0] != nil })
    }

    // MARK: guards

    private func guardsPath(_ group: String) -> String {
        KubeResource.configMaps.path(namespace: namespace, name: "\(gateway)-\(group)-guards")
    }

    /// Reads the group's guards ConfigMap once (before its source polls).
    public func loadGuards(_ group: String) async throws {
        guard groups[group]?.guardsLoaded == false else { return }
        if let map = try await client.get(guardsPath(group)),
            let text = (map["data"] as? JSONObject)?["guards.json"] as? String,
            let guards = try? JSONDecoder().decode(Guards.self, from: Data(text.utf8))
        {
            groups[group]?.completed.merge(guards.completed) { old, _ in old }
            groups[group]?.reaped.merge(guards.reaped ?? [:]) { old, _ in old }
        }
        groups[group]?.guardsLoaded = true
    }

    /// `guards.json`: what must never be provisioned again.
    struct Guards: Codable {
        /// One reaped pod's job: the message that assigned it, and when (epoch seconds).
        struct Reaped: Codable, Equatable {
            var messageID: Int64
            var at: Int64
        }
        var completed: [String: Int64]
        /// Absent in guards written before it existed.
        var reaped: [String: Reaped]?
    }

    /// The group's last guards write, which the next one waits for (see `saveGuards`).
    private var guardWrites: [String: Task<Bool, Never>] = [:]

    /// Persists the group's guards as they are now; true once a write holding them has landed.
    ///
    /// Writes are chained, one at a time per group, each taking the guards as they are when it
    /// starts. Without the chain, two reaps in quick succession (an actor lets a second one run
    /// while the first awaits its write) sent two whole guards.json values at once; when the
    /// older landed last, the newer job's guard was lost, and after a restart the replayed
    /// JobAssigned of that reaped job got a second pod (the flake of
    /// test_a_restart_finishes_every_job_and_each_pending_rerun_once).
    private func saveGuards(_ name: String) async -> Bool {
        let previous = guardWrites[name]
        let write = Task { [self] in
            _ = await previous?.value
            return await writeGuards(name)
        }
        guardWrites[name] = write
        return await write.value
    }

    /// Writes the group's guards whole (guards.json is one value). Loads the ConfigMap first if
    /// this process has not yet: at start the pod informer can reap a finished pod (and save)
    /// before the group's source has loaded the guards, and writing then would drop every guard
    /// the previous AGC left, after which a replayed JobAssigned of a job it had reaped would get
    /// a second pod. Only `saveGuards` calls it, so one runs at a time per group.
    private func writeGuards(_ name: String) async -> Bool {
        if groups[name]?.guardsLoaded == false {
            do {
                try await loadGuards(name)
            } catch {
                logger.warning("guards load before save failed", metadata: ["runner_group": .string(name), "error": .string("\(error)")])
                return false
            }
        }
        guard var group = groups[name] else { return true }
        let cutoff = Int64(clock.wallNow().timeIntervalSince1970) - Self.guardsTTL
        group.completed = group.completed.filter { $0.value >= cutoff }
        group.reaped = group.reaped.filter { $0.value.at >= cutoff && group.completed[$0.key] == nil }
        groups[name] = group
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let bytes = try? encoder.encode(Guards(completed: group.completed, reaped: group.reaped)) else { return false }
        let data: JSONObject = ["guards.json": String(decoding: bytes, as: UTF8.self)]
        do {
            do {
                _ = try await client.mergePatch(guardsPath(name), ["data": data])
            } catch let error as OutboundError where error.kind == .http(404) {
                let meta = ObjectMeta(name: "\(gateway)-\(name)-guards", namespace: namespace,
                                      labels: [WorkerLabels.gateway: gateway, WorkerLabels.group: name])
                _ = try await client.create(KubeResource.configMaps.path(namespace: namespace),
                                            ["metadata": try KubeClient.json(meta), "data": data])
            }
            return true
        } catch {
            logger.warning("guards save failed", metadata: ["runner_group": .string(name), "error": .string("\(error)")])
            return false
        }
    }

    // MARK: pods

    /// - Parameter track: remember the deletion until the pod of that name is gone (false when
    ///   there is no pod whose reconcile would forget it again).
    private func deleteSecret(_ name: String, track: Bool = true) async {
        guard !secretsDeleted.contains(name) else { return }
        do {
            try await client.delete(KubeResource.secrets.path(namespace: namespace, name: name))
            if track { secretsDeleted.insert(name) }
        } catch let error as OutboundError where error.kind == .http(404) {
            if track { secretsDeleted.insert(name) }
        } catch {
            logger.warning("job secret delete failed", metadata: ["secret": .string(name), "error": .string("\(error)")])
        }
    }

    /// Deletes a pod, stamping why first (so recovery and humans can tell our deletions apart).
    /// A pod whose job has not concluded leaves a guard first (saved, or the pod stays): after
    /// a restart its assigning message is replayed, and must not find the job unknown.
    private func reap(_ pod: Pod, reason: String, group: String) async -> ReconcileResult {
        guard let name = pod.metadata.name else { return .success }
        if let job = pod.metadata.labels?[WorkerLabels.jobID], groups[group]?.completed[job] == nil,
            let message = pod.metadata.annotations?[WorkerLabels.messageID].flatMap({ Int64($0) }),
            groups[group]?.reaped[job]?.messageID != message
        {
            groups[group]?.reaped[job] = Guards.Reaped(messageID: message, at: Int64(clock.wallNow().timeIntervalSince1970))
            guard await saveGuards(group) else { return .retryable }
        }
        do {
            _ = try await client.mergePatch(KubeResource.pods.path(namespace: namespace, name: name),
                                            ["metadata": ["annotations": [WorkerLabels.deletionReason: reason] as JSONObject] as JSONObject])
            try await client.delete(KubeResource.pods.path(namespace: namespace, name: name))
        } catch let error as OutboundError where error.kind == .http(404) {
            return .success
        } catch {
            logger.warning("worker pod delete failed", metadata: ["pod": .string(name), "error": .string("\(error)")])
            return .retryable
        }
        await deleteSecret(name)
        metrics.count("agc_worker_pods_reaped_total", [group, reason])
        logger.info("worker pod reaped", metadata: ["runner_group": .string(group), "pod": .string(name), "reason": .string(reason)])
        return .success
    }

    /// One pod's reconcile, from the shared pod informer: terminal pods lose their Secret at
    /// once and their pod after `completedPodTTL`; never-started pods are reaped after
    /// `pendingPodDeadline`; pods whose job concluded at GitHub but that linger are reaped
    /// (Running 5 min, Pending 30 s after). Time-based steps requeue on the injected clock.
    public func reconcilePod(_ key: String) async -> ReconcileResult {
        let name = String(key.split(separator: "/").last ?? "")
        guard let pod = pods.get(namespace: namespace, name: name) else {
            guard configured else { return .requeue(after: .milliseconds(500)) }
            // Gone: its last state may show it was taken away (a deletion mid-job).
            if let last = recovery.takeGone(name) {
                guard await recover(last, gone: true) else {
                    recovery.noteGone(last)  // the ledger could not be written: keep the evidence for the retry
                    return .retryable
                }
                if let uid = last.metadata.uid { countedAbandoned.remove(uid) }  // no later event names it
            }
            // Its Secret went with it (the pod owns it); forget what we tracked for it.
            terminalSeen[name] = nil
            reclaiming.remove(name)
            podShapes[name] = nil
            secretsDeleted.remove(name)
            startObserved.remove(name)
            return .success
        }
        if let job = pod.metadata.labels?[WorkerLabels.jobID] { reservations[job] = nil }
        // At start the pod informer can sync before the gateway is read: what the pods show
        // then (finished, disrupted while no AGC ran) waits for the groups' settings.
        guard configured else { return .requeue(after: .milliseconds(500)) }
        guard let group = pod.metadata.labels?[WorkerLabels.group] else { return .success }
        guard let settings = groups[group]?.context.group else {
            // A removed group's pod: left to run (a retiring classic source renews its lock), and
            // deleted once it finished, its ending kept first for that source's job task.
            guard pod.isTerminal, pod.metadata.deletionTimestamp == nil else { return .success }
            if let job = pod.metadata.labels?[WorkerLabels.jobID], classicWatched.contains(job) {
                classicEndings[job] = pod.status?.phase == "Succeeded"
            }
            return await reap(pod, reason: "group_removed", group: group)
        }
        guard await recover(pod, gone: false) else { return .retryable }
        guard pod.metadata.deletionTimestamp == nil else { return .success }
        let now = clock.wallNow().timeIntervalSince1970
        observeStart(pod, group: group)
        if pod.isTerminal {
            if let job = pod.metadata.labels?[WorkerLabels.jobID], classicWatched.contains(job) {
                classicEndings[job] = pod.status?.phase == "Succeeded"
            }
            await deleteSecret(name)
            let finished = pod.status?.containerStatuses?.compactMap { $0.state?.terminated?.finishedAt.flatMap(ISO8601.epochSeconds) }.max()
            let elapsed: Double
            if let finished {
                elapsed = now - Double(finished)
            } else {
                let first = terminalSeen[name] ?? clock.now()
                terminalSeen[name] = first
                elapsed = (clock.now() - first).seconds
            }
            let ttl = Double(settings.completedPodTTLSeconds)
            if elapsed >= ttl { return await reap(pod, reason: "completed_ttl", group: group) }
            return .requeue(after: .milliseconds(Int64(((ttl - elapsed) * 1000).rounded(.up))))
        }
        let started = pod.status?.containerStatuses?.contains { $0.state?.running != nil || $0.state?.terminated != nil } ?? false
        let created = pod.metadata.creationTimestamp.flatMap(ISO8601.epochSeconds).map(Double.init) ?? now
        if let completedAt = pod.metadata.annotations?[WorkerLabels.jobCompletedAt].flatMap(ISO8601.epochSeconds) {
            let limit: Double = pod.status?.phase == "Running" ? 300 : 30
            let since = now - Double(completedAt)
            if since >= limit { return await reap(pod, reason: pod.status?.phase == "Running" ? "orphaned_running" : "completed_pending", group: group) }
            return .requeue(after: .milliseconds(Int64(((limit - since) * 1000).rounded(.up))))
        }
        if !started {
            let deadline = Double(settings.pendingPodDeadlineSeconds)
            let age = now - created
            if age >= deadline {
                let result = await reap(pod, reason: "pending_deadline", group: group)
                guard result == .success, let uid = pod.metadata.uid, countedAbandoned.insert(uid).inserted else { return result }
                if pod.metadata.annotations?[WorkerLabels.acquisition] == "classic",
                    var disruption = Disruption.classify(pod, gone: true, retryOOMKilled: false)
                {
                    disruption.cause = .abandoned  // our own deletion, but the job never started: force-cancel and re-run
                    _ = await recovery.take(disruption, budget: settings.maxEvictionRetries)
                } else {
                    metrics.count("agc_disruptions_total", [group, "abandoned"])
                    reoffer(pod, group: group, settings: settings, why: "pending past pendingPodDeadline")
                }
                return result
            }
            return .requeue(after: .milliseconds(Int64(((deadline - age) * 1000).rounded(.up))))
        }
        return .success
    }

    // MARK: reclaim (spec section 4 step 4)

    /// A worker a floor tier never takes: on the first tier of a group that reclaims.
    private func protected(_ pod: Pod) -> Bool {
        guard pod.metadata.annotations?[WorkerLabels.tier] == "0", let group = pod.metadata.labels?[WorkerLabels.group] else { return false }
        return groups[group]?.context.group.reclaimQuota == true
    }

    /// Which workers to delete so one pod of `shape` fits: the newest unprotected ones, as
    /// few as do it ([] when reclaims under way already make room; nil when nothing would).
    private func reclaimVictims(for shape: PodShape) -> [String]? {
        let active = pods.unordered.filter(\.isActive)
        let named = active.compactMap { pod in pod.metadata.name.map { ($0, self.shape(of: pod)) } }
        // Our own reclaims count as under way before the cache shows their stamp.
        let releasing = active.filter {
            $0.metadata.annotations?[WorkerLabels.deletionReason] == DeletionReason.quotaReclaimed || reclaiming.contains($0.metadata.name ?? "")
        }.compactMap(\.metadata.name)
        let candidates = active.filter { pod in
            pod.metadata.deletionTimestamp == nil && pod.metadata.annotations?[WorkerLabels.deletionReason] == nil && !protected(pod)
                && !reclaiming.contains(pod.metadata.name ?? "")
        }.sorted { ($0.metadata.creationTimestamp ?? "", $0.metadata.name ?? "") > ($1.metadata.creationTimestamp ?? "", $1.metadata.name ?? "") }
            .compactMap(\.metadata.name)
        return Admission.victims(for: shape, quotas: quotas.all, pods: named, candidates: candidates, releasing: releasing, reserved: unseen())
    }

    /// A floor-tier job the quota has no room for: deletes the newest lower-tier workers that
    /// make room (stamped `quota-reclaimed`, so recovery re-runs their jobs outside the budget)
    /// and holds the job until they are gone. Nil when no reclaim can make room.
    private func reclaim(for shape: PodShape, group: String) async -> ProvisionResult? {
        guard let victims = reclaimVictims(for: shape) else { return nil }
        guard !victims.isEmpty else { return .held(Hold(reason: "quota", detail: "waiting for reclaimed workers to go", soon: true)) }
        for victim in victims {
            guard let pod = pods.get(namespace: namespace, name: victim), let owner = pod.metadata.labels?[WorkerLabels.group] else { continue }
            reclaiming.insert(victim)
            guard await reap(pod, reason: DeletionReason.quotaReclaimed, group: owner) == .success else {
                reclaiming.remove(victim)
                continue
            }
            metrics.count("agc_quota_reclaims_total", [group])
            logger.info("worker reclaimed for a floor-tier job", metadata: ["runner_group": .string(group), "pod": .string(victim), "from": .string(owner)])
        }
        return .held(Hold(reason: "quota", detail: "reclaimed \(victims.joined(separator: ", ")) for a floor-tier job", soon: true))
    }

    // MARK: recovery

    /// Shows one pod state to recovery: a scale-set worker that never started is offered to
    /// its source again (GitHub keeps the job assigned to the set, and a cancel would end
    /// every job of the run); anything else Kubernetes took away goes to `Recovery`. False
    /// when the ledger could not be written.
    private func recover(_ pod: Pod, gone: Bool) async -> Bool {
        guard let group = pod.metadata.labels?[WorkerLabels.group], let settings = groups[group]?.context.group,
            let disruption = Disruption.classify(pod, gone: gone, retryOOMKilled: settings.retryOOMKilled)
        else { return true }
        if disruption.cause == .abandoned && disruption.acquisition != "classic" {
            if countedAbandoned.insert(disruption.uid).inserted {
                metrics.count("agc_disruptions_total", [group, disruption.cause.rawValue])
                reoffer(pod, group: group, settings: settings, why: "deleted before it started")
            }
            return true
        }
        return await recovery.take(disruption, budget: settings.maxEvictionRetries, pod: gone ? nil : pod)
    }

    /// Hands a never-started scale-set worker's job back to its source, at most
    /// `maxEvictionRetries` times per job (an image that never pulls is not retried for ever).
    private func reoffer(_ pod: Pod, group: String, settings: DefaultedGateway.Group, why: String) {
        let annotations = pod.metadata.annotations ?? [:]
        guard let jobID = pod.metadata.labels?[WorkerLabels.jobID], groups[group]?.completed[jobID] == nil else { return }
        let count = (reoffers[jobID] ?? 0) + 1
        guard count <= settings.maxEvictionRetries else {
            logger.warning("worker never started: not offered again (budget spent)", metadata: ["runner_group": .string(group), "job_id": .string(jobID)])
            return
        }
        reoffers[jobID] = count
        let repository = annotations[WorkerLabels.repository]?.split(separator: "/", maxSplits: 1).map(String.init) ?? []
        let job = JobMessage(messageType: "JobAssigned", jobId: jobID, ownerName: repository.first, repositoryName: repository.count == 2 ? repository[1] : nil,
                             workflowRunId: annotations[WorkerLabels.runID].flatMap { Int64($0) }, jobDisplayName: annotations[WorkerLabels.jobName],
                             jobWorkflowRef: annotations[WorkerLabels.workflow])
        reoffered[group, default: []].append((job, annotations[WorkerLabels.messageID].flatMap { Int64($0) } ?? 0))
        logger.info("worker never started: job offered again", metadata: ["runner_group": .string(group), "job_id": .string(jobID), "why": .string(why),
                                                                          "attempt": .stringConvertible(count)])
    }

    /// Jobs handed back to `group`'s source, taken once.
    public func takeReoffered(_ group: String) -> [(job: JobMessage, messageID: Int64)] {
        reoffered.removeValue(forKey: group) ?? []
    }

    public func hasReoffered(_ group: String) -> Bool { reoffered[group]?.isEmpty == false }

    /// When the pod's runner container started running (epoch seconds), while or after it ran.
    static func runnerStartedAt(_ pod: Pod) -> Int64? {
        let state = pod.status?.containerStatuses?.first { $0.name == "runner" }?.state
        return (state?.running?.startedAt ?? state?.terminated?.startedAt).flatMap(ISO8601.epochSeconds)
    }

    /// `agc_pod_start_seconds`: creation to the runner container running, once per pod.
    private func observeStart(_ pod: Pod, group: String) {
        guard let name = pod.metadata.name, !startObserved.contains(name),
            let created = pod.metadata.creationTimestamp.flatMap(ISO8601.epochSeconds),
            let running = Self.runnerStartedAt(pod)
        else { return }
        startObserved.insert(name)
        metrics.observe("agc_pod_start_seconds", [group], Double(running - created))
    }

    /// Adds the extended resources (`nvidia.com/gpu`, ...) running workers request, times the
    /// time since the last call, to `agc_accelerator_seconds_total` (the seed's GPU-hours).
    /// Called on the status tick, so the integration step is at most that interval.
    public func accountAccelerators() {
        let now = clock.now()
        defer { acceleratorsAt = now }
        guard let last = acceleratorsAt else { return }
        let elapsed = (now - last).seconds
        for pod in pods.all where pod.status?.phase == "Running" && pod.metadata.deletionTimestamp == nil {
            guard let group = pod.metadata.labels?[WorkerLabels.group] else { continue }
            for (resource, milli) in shape(of: pod).needs where resource.hasPrefix("requests.") && resource.contains("/") {
                metrics.count("agc_accelerator_seconds_total", [group, String(resource.dropFirst("requests.".count))],
                              by: Double(milli) / 1000 * elapsed)
            }
        }
    }

    /// What a live pod asks for, computed once per pod: a pod's resources never change, and
    /// admission reads every live pod's shape on each poll and each job (parsing quantities
    /// anew was most of the AGC's CPU in a burst).
    private func shape(of pod: Pod) -> PodShape {
        let name = pod.metadata.name ?? ""
        if let known = podShapes[name], known.uid == pod.metadata.uid { return known.shape }
        let made = PodShape(pod: pod)
        podShapes[name] = (pod.metadata.uid, made)
        return made
    }

    /// `agc_worker_pods{phase,tier}`, on the status tick: a pass over every pod, which per pod
    /// event would cost O(pods) each time.
    public func updatePodGauges() {
        var values: [[String]: Double] = [:]
        for pod in pods.all {
            let group = pod.metadata.labels?[WorkerLabels.group] ?? ""
            values[[group, pod.status?.phase ?? "Pending", pod.metadata.annotations?[WorkerLabels.tier] ?? ""], default: 0] += 1
        }
        metrics.replaceGauge("agc_worker_pods", values)
    }

    /// A source's held jobs, replaced whole each time they change.
    public nonisolated func setHeld(_ group: String, _ jobs: [HeldJob]) {
        held.withLock { $0[group] = jobs.isEmpty ? nil : jobs }
    }

    /// The jobs the AGC holds now, for `/jobs`: those with a pod, then those held back, with why.
    public nonisolated func jobs() -> [[String: String]] {
        let waiting = held.withLock { $0 }.sorted { $0.key < $1.key }.flatMap { group, jobs in
            jobs.map { job -> [String: String] in
                var entry = ["group": group, "jobId": job.jobID, "phase": "Held", "held": job.why, "attempt": String(job.attempt),
                             "age": String(job.ageSeconds)]
                if let run = job.runID { entry["runId"] = String(run) }
                if let repository = job.repository { entry["repository"] = repository }
                return entry
            }
        }
        let now = clock.wallNow().timeIntervalSince1970
        return pods.all.map { pod in
            var entry: [String: String] = [
                "group": pod.metadata.labels?[WorkerLabels.group] ?? "", "jobId": pod.metadata.labels?[WorkerLabels.jobID] ?? "",
                "pod": pod.metadata.name ?? "", "phase": pod.status?.phase ?? "Pending",
            ]
            if let created = pod.metadata.creationTimestamp.flatMap(ISO8601.epochSeconds) { entry["age"] = String(Int(now) - Int(created)) }
            for (key, label) in [("runId", WorkerLabels.runID), ("repository", WorkerLabels.repository), ("tier", WorkerLabels.tier),
                                 ("acquiredAt", WorkerLabels.acquiredAt)] {
                if let value = pod.metadata.annotations?[label] { entry[key] = value }
            }
            return entry
        } + waiting
    }
}
