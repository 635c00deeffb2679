import GitHubKit
import KubeKit
import Logging
import OutboundPool

/// Where jobs come from, for one runner group: the scale-set queue or classic sessions.
/// `run` acquires until its task is cancelled, then releases what it holds at GitHub.
public protocol JobSource: Actor {
    func run() async
    /// A drain (`Drain`): while on, the source holds no session at GitHub and takes no job; the
    /// jobs it has go on. Takes effect within a second; off again, it asks for sessions anew.
    func setDraining(_ draining: Bool)
    /// The source's part of the group's status facts (sessions, rate limiting, auth).
    func health(into facts: inout GroupFacts)
    /// GitHub queued a job for this group (the GMC's webhook router said so).
    func wake() async
    /// Whether jobs still need this source (classic: their locks); a source that holds none
    /// can be cancelled without harm to them.
    func holdsJobs() -> Bool
}

extension JobSource {
    /// A scale set's runners hold their jobs themselves.
    public func holdsJobs() -> Bool { false }

    /// Nothing to do by default: a scale set's one session already waits on GitHub's queue.
    public func wake() async {}
}

/// The scale-set source of one group (spec/agc.md section 3): runner group, scale set
/// get-or-create, one session, long poll advertising the group's *total* capacity, JobAssigned
/// → JIT config → pod, JobStarted → bind, JobCompleted → guards, then DELETE of every message
/// whose jobs have all concluded. Faults recover as reference section 2.2 says: 401 refreshes
/// the session, 404/410 recreates it from cursor 0, 429 waits `Retry-After`, others back off.
public actor ScaleSetSource: JobSource {
    private let group: String
    private let settings: @Sendable () async -> (scaleSetName: String, gitHubGroup: String, labels: [String])
    private let client: ScaleSetClient
    private let lifecycle: JobLifecycle
    private let owner: String
    private let clock: any ControllerClock
    private let logger: Logger
    private let metrics: AGCMetrics
    private let events: EventRecorder
    /// A job held back (ceiling, quota, name conflict, a failed create), offered again after
    /// `retryAt`. It keeps its JIT config: its runner name is registered at GitHub already.
    struct Deferred {
        var job: JobMessage
        var messageID: Int64
        var acquired: AcquiredJob?
        var retryAt: Duration
        var attempts: Int
        /// Creates the API server refused with "exceeded quota" (our headroom said it fit:
        /// something the cache does not see uses the quota). Retried every 30 s; after
        /// `quotaRetries` a Warning Event, then every 5 min, so the job is never dropped.
        var quotaRefusals = 0
        /// Held by our own ceiling or quota verdict: worth offering only once there is room.
        var waitsForRoom = false
        /// When it was first held (monotonic), and why it waits now, for `/jobs`.
        var since: Duration
        var why: String
        /// Handed back by the lifecycle (its worker never started): provisioned again although
        /// the guards name its assigning message as reaped.
        var reoffered = false
        /// Its runner, another AGC's, is running it (a blue/green takeover): it holds one of the
        /// set's assignments at GitHub but none of this AGC's pods.
        var runsElsewhere = false
    }
    private var deferred: [Deferred] = []
    /// Quota-refused creates retried before `QuotaRetriesExhausted` (spec: 5 x 30 s).
    static let quotaRetries = 5
    static let quotaRetryDelay: Duration = .seconds(30)
    /// Delivered messages not yet deleted, with the jobs each names (whether those concluded
    /// is the lifecycle's guards, the one record of it).
    private var undeleted: [(id: Int64, jobs: [String])] = []
    /// For status: a session open now, since when GitHub has answered only 429, and the
    /// last 401/403 that stopped the bootstrap (cleared by the next success).
    private var sessionOpen = false
    /// A drain asked for: the session is given up and none is opened while it holds.
    private var draining = false
    private var throttledSince: Duration?
    private var authFailure: String?

    /// The source's part of the group's status facts.
    public func health(into facts: inout GroupFacts) {
        facts.activeSessions = sessionOpen ? 1 : 0
        facts.rateLimitedFor = throttledSince.map { clock.now() - $0 }
        facts.authFailure = authFailure
    }

    private func throttled() {
        if throttledSince == nil { throttledSince = clock.now() }
    }

    public init(group: String, owner: String, client: ScaleSetClient, lifecycle: JobLifecycle, metrics: AGCMetrics,
                events: EventRecorder, clock: any ControllerClock, logger: Logger,
                settings: @escaping @Sendable () async -> (scaleSetName: String, gitHubGroup: String, labels: [String])) {
        self.group = group
        self.owner = owner
        self.client = client
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.logger = logger
        self.settings = settings
    }

    /// Backoff for failures in a row: 2 s, doubling to 60 s.
    private func backoff(_ failures: Int) -> Duration { .seconds(min(60, 2 << min(max(failures - 1, 0), 5))) }

    private func pause(_ duration: Duration) async -> Bool { (try? await clock.sleep(for: duration)) != nil }

    /// The poll in flight sees it within `wakeCheck` and ends; `serve` then closes the session.
    public func setDraining(_ draining: Bool) { self.draining = draining }

    public func run() async {
        var failures = 0
        while !Task.isCancelled {
            if draining {
                guard await pause(.seconds(1)) else { return }
                continue
            }
            do {
                try await lifecycle.loadGuards(group)
                let wanted = await settings()
                let groupID = try await client.runnerGroupID(named: wanted.gitHubGroup)
                let set = try await client.scaleSet(name: wanted.scaleSetName, groupID: groupID, labels: wanted.labels)
                let got = Set((set.labels ?? []).map(\.name))
                if !Set(wanted.labels).isSubset(of: got) {
                    logger.warning("scale set labels dropped by GitHub", metadata: [
                        "runner_group": .string(group), "wanted": .string(wanted.labels.joined(separator: ",")),
                        "got": .string(got.sorted().joined(separator: ",")),
                    ])
                }
                failures = 0
                authFailure = nil
                try await serve(set)  // until cancelled, or a drain began
            } catch is CancellationError {
                return
            } catch {
                failures += 1
                if let error = error as? OutboundError, error.kind == .http(401) || error.kind == .http(403) {
                    authFailure = "\(error)"
                } else if let error = error as? OutboundError, error.kind == .http(429) {
                    throttled()
                }
                logger.warning("scale set bootstrap failed", metadata: ["runner_group": .string(group), "error": .string("\(error)")])
                await events.warning("JobAcquisitionFailed", "runner group \(group): cannot open its scale set at GitHub: \(error)")
                guard await pause(backoff(failures)) else { return }
            }
        }
    }

    /// Opens the session (409: a predecessor still draining, retried flat) and polls until
    /// cancelled or drained. A drain gives up what it holds of GitHub's queue: held jobs are
    /// dropped (their messages stay undeleted, so the session that takes over replays them).
    private func serve(_ set: RunnerScaleSet) async throws {
        guard var session = try await openSession(set) else { return }
        defer {
            metrics.gauge("agc_sessions", [group, "polling"], 0)
            sessionOpen = false
        }
        metrics.gauge("agc_sessions", [group, "polling"], 1)
        sessionOpen = true
        var cursor: Int64 = 0
        var failures = 0
        while !Task.isCancelled && !draining {
            await offerDeferred(set)
            await flushDeletes(session)
            // GitHub counts every job assigned to the set, those another AGC's runners run too:
            // they are advertised on top of ours, or they would starve new work until they end.
            let capacity = (await lifecycle.capacities()[group]?.total ?? 0) + deferred.filter(\.runsElsewhere).count
            do {
                switch try await pollOrWake(session, cursor: cursor, capacity: capacity) {
                case .message(let message?): cursor = try await handle(message, set: set)
                case .message(nil), .woken: break
                }
                failures = 0
                throttledSince = nil
            } catch let error as OutboundError {
                failures += 1
                switch error.kind {
                case .http(401), .http(403):
                    session = try await client.refreshSession(scaleSetID: set.id, sessionID: session.sessionId)
                case .http(404), .http(410):
                    logger.info("queue session gone: recreating from cursor 0", metadata: ["runner_group": .string(group)])
                    guard let fresh = try await openSession(set) else { return }
                    session = fresh
                    cursor = 0
                    undeleted = []
                case .http(429):
                    throttled()
                    guard await pause(Self.retryAfter(error)) else { break }
                case .cancelled:
                    break
                default:
                    guard await pause(backoff(failures)) else { break }
                }
            }
        }
        await shutdown(session, set: set)
        if draining && !Task.isCancelled {
            deferred = []
            undeleted = []
            publishHeld()
            logger.info("draining: queue session given up, running jobs left to their runners", metadata: ["runner_group": .string(group)])
        }
    }

    /// What ended one long poll: GitHub's answer, or a held job that can go now.
    enum PollEnd: Sendable {
        case message(QueueMessage?)
        case woken
    }

    /// The long poll (GitHub holds it ~50 s), cut short when a held job can be offered: one
    /// due for its retry, waiting for room that has appeared (a pod ended, a quota grew), or a
    /// job the lifecycle handed back (its worker never started).
    /// Cancelling a poll loses nothing: the cursor did not move, so GitHub delivers again.
    private func pollOrWake(_ session: ScaleSetSession, cursor: Int64, capacity: Int) async throws -> PollEnd {
        let client = client
        let clock = clock
        return try await withThrowingTaskGroup(of: PollEnd.self) { tasks in
            tasks.addTask { .message(try await client.poll(session, cursor: cursor, capacity: capacity)) }
            tasks.addTask {
                // Never throws: on shutdown the loop above sees the cancellation and closes the session.
                repeat {
                    guard (try? await clock.sleep(for: Self.wakeCheck)) != nil else { return .woken }
                } while await !self.heldCanGo()
                return .woken
            }
            defer { tasks.cancelAll() }
            guard let first = try await tasks.next() else { return .woken }
            return first
        }
    }

    /// How often a poll in flight checks whether a held job can go.
    static let wakeCheck: Duration = .seconds(1)

    /// Whether a held job is due: a timed retry (JIT, a refused create), or one held by the
    /// ceiling or the quota now that admission would find room.
    private func heldCanGo() async -> Bool {
        if draining { return true }
        if await lifecycle.hasReoffered(group) { return true }
        let now = clock.now()
        let due = deferred.filter { $0.retryAt <= now }
        if due.isEmpty { return false }
        if due.contains(where: { !$0.waitsForRoom }) { return true }
        return await lifecycle.hasRoom(group)
    }

    /// The set's session; nil when a drain began while another held it.
    private func openSession(_ set: RunnerScaleSet) async throws -> ScaleSetSession? {
        while !draining {
            do {
                let session = try await client.createSession(scaleSetID: set.id, owner: owner)
                logger.info("queue session open", metadata: ["runner_group": .string(group), "scaleSet": .string(set.name)])
                return session
            } catch ScaleSetError.sessionConflict {
                guard await pause(.seconds(5)) else { throw CancellationError() }
            }
        }
        return nil
    }

    /// Handles one delivery; returns the new cursor. JobCompleted before JobAssigned (a slot
    /// that frees in the same message is usable at once).
    private func handle(_ message: QueueMessage, set: RunnerScaleSet) async throws -> Int64 {
        let jobs = (try? message.jobMessages()) ?? []
        await lifecycle.setQueued(group, message.statistics?.totalAvailableJobs)
        var named: [String] = []
        for job in jobs where job.messageType == "JobCompleted" {
            guard await lifecycle.completed(job, group: group) else { return message.messageId - 1 }  // keep it: guards unsaved
            named.append(job.jobId)
        }
        for job in jobs where job.messageType == "JobStarted" {
            await lifecycle.started(job, group: group)
            named.append(job.jobId)
        }
        let assigned = jobs.filter { $0.messageType == "JobAssigned" }
        named += assigned.map(\.jobId)
        let now = clock.now()
        await assignAll(assigned.map { Deferred(job: $0, messageID: message.messageId, retryAt: .zero, attempts: 0, since: now, why: "") },
                        set: set)
        publishHeld()
        undeleted.append((message.messageId, named))
        return message.messageId
    }

    /// JobAssigned → JIT config → pod. Held jobs are offered again in 5 s; a replay of a job
    /// that has a pod or concluded creates nothing. A JIT config that cannot be had is retried
    /// later: 429 after its `Retry-After`, a name conflict after 30 s doubling to 5 min, other
    /// errors with the poll's backoff. Every outcome that leaves the job waiting re-defers it.
    private func assign(_ entry: Deferred, set: RunnerScaleSet) async {
        var entry = entry
        let job = entry.job
        // A pod, an admission in flight, concluded, or this very message's pod already reaped.
        if await lifecycle.knows(job.jobId, group: group, messageID: entry.reoffered ? nil : entry.messageID) { return }
        func hold(_ wait: Duration, _ why: String, room: Bool = false) {
            entry.waitsForRoom = room
            entry.attempts += 1
            entry.retryAt = clock.now() + wait
            entry.why = why
            deferred.append(entry)
        }
        let acquired: AcquiredJob
        if let known = entry.acquired {
            acquired = known
        } else {
            // The group's team policy, before GitHub registers a runner for the job.
            if let settings = await lifecycle.settings(of: group), !settings.allowedTeams.isEmpty {
                switch await lifecycle.teams.admit(group: settings, jobID: job.jobId, repository: job.repository, runID: job.workflowRunId,
                                                   waitingSince: entry.since) {
                case .run: break
                case .hold(let why): return hold(.seconds(10), why)
                case .denied: return  // its run is cancelled: a JobCompleted concludes it
                }
            }
            let jit: JITConfig
            do {
                jit = try await jitConfig(set: set, jobID: job.jobId)
            } catch is CancellationError {
                return hold(.zero, "shutting down")
            } catch ScaleSetError.runnerBusy(let runner) {
                // Its runner runs it (another AGC's pod): no second pod; its JobCompleted will conclude it here too.
                if !entry.runsElsewhere {  // said and counted once per job, not per retry
                    logger.info("job runs on another runner: no pod", metadata: ["runner_group": .string(group), "job_id": .string(job.jobId),
                                                                             "runner": .string(runner)])
                    metrics.count("agc_jobs_running_elsewhere_total", [group])
                }
                entry.runsElsewhere = true
                return hold(.seconds(30), "its runner \(runner) is running it")
            } catch {
                let wait: Duration
                switch error {
                case ScaleSetError.nameConflict:
                    wait = .seconds(min(300, 30 << min(entry.attempts, 4)))
                case let error as OutboundError where error.kind == .http(429):
                    throttled()
                    wait = Self.retryAfter(error)
                default:
                    wait = backoff(entry.attempts + 1)
                }
                logger.warning("JIT config failed", metadata: ["runner_group": .string(group), "job_id": .string(job.jobId), "error": .string("\(error)"),
                                                               "retryIn": .string("\(wait)")])
                await events.warning("JobAcquisitionFailed", "runner group \(group): job \(job.jobId): no runner registration from GitHub: \(error)")
                return hold(wait, "runner registration: \(error)")
            }
            acquired = AcquiredJob(
                jobID: job.jobId, runID: job.workflowRunId, repository: job.repository, workflow: job.jobWorkflowRef,
                jobName: job.jobDisplayName, jitConfig: jit.encodedJITConfig, acquisition: "scaleSet", runnerName: jit.runner.name,
                messageID: entry.messageID, queuedAt: job.queuedAt,
                receivedAt: Int64(clock.wallNow().timeIntervalSince1970))
            entry.acquired = acquired
        }
        switch await lifecycle.provision(acquired, group: group) {
        case .created, .duplicate:
            break
        case .held(let verdict):
            logger.info("job held", metadata: ["runner_group": .string(group), "job_id": .string(job.jobId), "why": .string(verdict.description)])
            hold(verdict.soon ? .seconds(1) : .seconds(5), verdict.description, room: true)
        case .quotaRefused(let detail):
            entry.quotaRefusals += 1
            if entry.quotaRefusals == Self.quotaRetries + 1 {
                metrics.count("agc_quota_retries_exhausted_total", [group])
                await events.warning("QuotaRetriesExhausted", "runner group \(group): job \(job.jobId): the API server refused its worker pod "
                                     + "\(entry.quotaRefusals) times (exceeded quota); still held, retried every 5 min: \(detail)")
            }
            hold(entry.quotaRefusals > Self.quotaRetries ? .seconds(300) : Self.quotaRetryDelay, "quota (API server): \(detail)")
        case .failed(let detail):
            await events.warning("WorkerPodCreateFailed", "runner group \(group): job \(job.jobId): \(detail)")
            hold(.seconds(5), "pod create failed: \(detail)")
        }
    }

    /// The job's runner registration, named `<set>-<jobId>` (P§3.2). A 409 means a runner of
    /// that name is registered already: a predecessor's, which died before its pod existed
    /// (a pod would have made `knows` true), or another AGC's (a blue/green peer, whose
    /// session this one took over). It is deregistered and the name tried once more; then `-1`
    /// to `-3`, 2 s apart. A runner GitHub will not deregister because it is running a job
    /// means the job runs elsewhere: `runnerBusy`, and no second runner is made for it.
    private func jitConfig(set: RunnerScaleSet, jobID: String) async throws -> JITConfig {
        let name = "\(set.name)-\(jobID)"
        do {
            return try await client.generateJITConfig(scaleSetID: set.id, runnerName: name)
        } catch ScaleSetError.nameConflict {
            logger.info("runner name taken: deregistering the stale runner", metadata: ["runner_group": .string(group), "runner": .string(name)])
        }
        let deregistered: Bool
        do {
            deregistered = try await client.deregisterRunner(named: name)
        } catch ScaleSetError.runnerBusy(let busy) {
            throw ScaleSetError.runnerBusy(busy)
        } catch {
            deregistered = false
        }
        if deregistered {
            do {
                return try await client.generateJITConfig(scaleSetID: set.id, runnerName: name)
            } catch ScaleSetError.nameConflict {}
        }
        for suffix in 1...3 {
            guard await pause(.seconds(2)) else { throw CancellationError() }
            do {
                return try await client.generateJITConfig(scaleSetID: set.id, runnerName: "\(name)-\(suffix)")
            } catch ScaleSetError.nameConflict {}
        }
        throw ScaleSetError.nameConflict(name)
    }

    /// A 429's `Retry-After`, bounded to [1 s, 5 min] (2 s when absent).
    static func retryAfter(_ error: OutboundError) -> Duration {
        .seconds(min(max(error.response?.retryAfterSeconds ?? 2, 1), 300))
    }

    private func offerDeferred(_ set: RunnerScaleSet) async {
        let now = clock.now()
        for (job, messageID) in await lifecycle.takeReoffered(group) {
            deferred.append(Deferred(job: job, messageID: messageID, retryAt: .zero, attempts: 0, since: now, why: "offered again",
                                     reoffered: true))
        }
        let due = deferred.filter { $0.retryAt <= now }
        guard !due.isEmpty else { return }
        deferred.removeAll { $0.retryAt <= now }
        await assignAll(due, set: set)
        publishHeld()
    }

    /// Jobs provisioned at once (a JIT call to GitHub and three API writes each).
    static let provisionWidth = 16

    /// Provisions several jobs, `provisionWidth` at a time: one after another, the last of 100
    /// jobs in a message would wait for 99 GitHub round trips. Admission stays exact: the
    /// lifecycle reserves a slot before its first await, so concurrent jobs never share one.
    private func assignAll(_ entries: [Deferred], set: RunnerScaleSet) async {
        await withTaskGroup(of: Void.self) { tasks in
            for (index, entry) in entries.enumerated() {
                if index >= Self.provisionWidth { await tasks.next() }
                tasks.addTask { await self.assign(entry, set: set) }
            }
        }
    }

    /// What `/jobs` shows of the jobs this source holds back.
    private func publishHeld() {
        let now = clock.now()
        lifecycle.setHeld(group, deferred.map { entry in
            HeldJob(jobID: entry.job.jobId, runID: entry.job.workflowRunId, repository: entry.job.repository, why: entry.why,
                    attempt: entry.attempts, ageSeconds: Int((now - entry.since).seconds))
        })
    }

    /// DELETE of every delivered message whose jobs have all concluded (or that named none).
    private func flushDeletes(_ session: ScaleSetSession) async {
        guard !undeleted.isEmpty else { return }
        let concluded = await lifecycle.concluded(undeleted.flatMap(\.jobs), group: group)
        var kept: [(id: Int64, jobs: [String])] = []
        for entry in undeleted {
            if entry.jobs.allSatisfy(concluded.contains) {
                do {
                    try await client.deleteMessage(session, messageID: entry.id)
                } catch {
                    kept.append(entry)
                }
            } else {
                kept.append(entry)
            }
        }
        undeleted = kept
    }

    /// SIGTERM: delete what can be deleted and the session, within 10 s, on a task detached
    /// from the cancelled one. Running worker pods are not touched.
    private func shutdown(_ session: ScaleSetSession, set: RunnerScaleSet) async {
        let client = client
        let concluded = await lifecycle.concluded(undeleted.flatMap(\.jobs), group: group)
        let pending = undeleted.filter { $0.jobs.allSatisfy(concluded.contains) }.map(\.id)
        let done = Task.detached {
            for id in pending { try? await client.deleteMessage(session, messageID: id) }
            try? await client.deleteSession(scaleSetID: set.id, sessionID: session.sessionId)
        }
        let clock = clock
        let watchdog = Task.detached {
            try? await clock.sleep(for: .seconds(10))
            done.cancel()
        }
        await done.value
        watchdog.cancel()
        logger.info("queue session closed", metadata: ["runner_group": .string(group)])
    }
}
