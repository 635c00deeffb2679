import Foundation
import GitHubKit
import KubeKit
import Logging
import OutboundPool

/// The classic source of one group (spec/agc.md section 3, reference 2.1 and 3.1): virtual
/// runner sessions against the per-runner broker, each with its own JIT agent (one session per
/// agent), between `minListeners` and `maxListeners`.
///
/// Memory: a waiting session is one suspended async frame chain and one curl transfer in the
/// shared OutboundPool, never a thread; its own state is the agent's credentials and the session.
///
/// Ordering rules: admission before acquire (a job we cannot place stays queued at GitHub and
/// is redelivered to a session with room); acquire before any pod; the agent is consumed by the
/// acquire (GitHub deletes a JIT runner's record), so the session recycles it at once, while
/// the job's own task renews the lock with the job token until its pod finished. Fan-out
/// deliveries of one plan run one pod; the others are completed with its result, and our own
/// delivery is never completed (that would conclude an unrun job green).
public actor ClassicSource: JobSource {
    /// What the source reads from the gateway on each (re)start of a session.
    public struct Settings: Sendable {
        public var gitHubGroup: String
        public var labels: [String]
        public var minListeners: Int
        public var maxListeners: Int
        public init(gitHubGroup: String, labels: [String], minListeners: Int, maxListeners: Int) {
            self.gitHubGroup = gitHubGroup
            self.labels = labels
            self.minListeners = minListeners
            self.maxListeners = maxListeners
        }
    }

    /// One agent: its runner record and the blob its worker gets.
    struct Agent {
        var runnerID: Int64
        var name: String
        var jitConfig: String
        var credentials: AgentCredentials
    }

    /// A plan acquired here: who runs it, and the deliveries to complete with its result.
    struct Plan {
        var siblings: [(request: JobRequest, job: ClassicJob)] = []
        /// The result of the delivery that ran, once its pod finished (late siblings get it too).
        var result: String?
        var doneAt: Duration?
    }
    /// A finished plan is remembered this long, for fan-out deliveries that arrive late.
    static let planLinger: Duration = .seconds(1_200)

    private let group: String
    private let gateway: String
    private let namespace: String
    private let owner: String
    private let client: ClassicClient
    private let kube: KubeClient
    private let lifecycle: JobLifecycle
    private let metrics: AGCMetrics
    private let events: EventRecorder
    private let clock: any ControllerClock
    private let logger: Logger
    private let settings: @Sendable () async -> Settings
    /// Session tasks by slot index.
    private var slots: [Int: Task<Void, Never>] = [:]
    /// Slots polling now (a slot recycling its agent is not polling).
    private var polling = Set<Int>()
    private var plans: [String: Plan] = [:]
    /// The runner version floor refused our sessions (a condition, not retried quickly).
    private var versionRefused: String?
    private var throttledSince: Duration?
    /// Job tasks (renew, sibling completion): cancelled with the source; pods are left alone.
    private var jobs: [UUID: Task<Void, Never>] = [:]

    /// Empty polls in a row after which a session above the baseline exits.
    static let idleThreshold = 50
    /// The renew cadence (each renewal extends the lock ~10 min).
    static let renewInterval: Duration = .seconds(60)
    /// How often a job task looks at its pod in the cache (cheap; sibling completion waits on it).
    static let podCheck: Duration = .seconds(1)

    public init(group: String, gateway: String, namespace: String, client: ClassicClient, kube: KubeClient, lifecycle: JobLifecycle,
                metrics: AGCMetrics, events: EventRecorder, clock: any ControllerClock, logger: Logger,
                settings: @escaping @Sendable () async -> Settings) {
        self.group = group
        self.gateway = gateway
        self.namespace = namespace
        owner = "\(namespace)/\(gateway)"
        self.client = client
        self.kube = kube
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.logger = logger
        self.settings = settings
    }

    /// The source's part of the group's status facts.
    public func health(into facts: inout GroupFacts) {
        facts.activeSessions = polling.count
        facts.rateLimitedFor = throttledSince.map { clock.now() - $0 }
        facts.versionRefused = versionRefused
    }

    private func pause(_ duration: Duration) async -> Bool { (try? await clock.sleep(for: duration)) != nil }

    /// Keeps the baseline of sessions running until cancelled; then every session deletes its
    /// broker session (10 s budget) and the job tasks stop renewing (their pods run on).
    public func run() async {
        try? await lifecycle.loadGuards(group)
        while !Task.isCancelled {
            let wanted = await settings()
            for index in 0..<max(wanted.minListeners, 1) where slots[index] == nil { start(index) }
            let now = clock.now()
            plans = plans.filter { $0.value.doneAt.map { now - $0 < Self.planLinger } ?? true }
            guard await pause(.seconds(1)) else { break }
        }
        let running = Array(slots.values) + Array(jobs.values)
        for task in running { task.cancel() }
        for task in running { await task.value }
    }

    private func start(_ index: Int) {
        slots[index] = Task { await self.session(index) }
    }

    /// After an acquire (jobs are queued: the broker gives no count), one more session, up to `maxListeners`.
    private func scaleUp() async {
        let wanted = await settings()
        guard slots.count < wanted.maxListeners, let free = (0..<wanted.maxListeners).first(where: { slots[$0] == nil }) else { return }
        start(free)
    }

    private func ended(_ index: Int) {
        slots[index] = nil
        polling.remove(index)
    }

    // MARK: one session

    /// One virtual session: agent, token, session, poll; recycles its agent after every
    /// acquire; exits when idle above the baseline (never the group's last polling session).
    private func session(_ index: Int) async {
        defer { ended(index) }
        var failures = 0
        while !Task.isCancelled {
            do {
                var agent = try await loadOrRegister(index)
                var token = try await brokerToken(&agent, index: index)
                var session: BrokerSession
                do {
                    session = try await client.createSession(agent.credentials, token: token, owner: owner)
                } catch ClassicError.sessionConflict, ClassicError.credentialsRejected {
                    // A predecessor's session (an AGC that died) or a dead agent: a fresh agent ends both.
                    agent = try await recycle(agent, index: index)
                    token = try await brokerToken(&agent, index: index)
                    session = try await client.createSession(agent.credentials, token: token, owner: owner)
                }
                versionRefused = nil
                failures = 0
                // The session is deleted however polling ends (SIGTERM cancels the poll in flight):
                // else GitHub keeps it, and its deliveries, until the session's TTL.
                let exit: Bool
                do {
                    exit = try await poll(index: index, agent: &agent, token: &token, session: &session)
                } catch {
                    await closeSession(agent, token: token)
                    throw error
                }
                await closeSession(agent, token: token)
                if exit { return }
            } catch is CancellationError {
                return
            } catch ClassicError.versionTooOld(let message) {
                versionRefused = message
                logger.error("runner version below GitHub's floor", metadata: ["group": .string(group), "message": .string(message)])
                await events.warning("RunnerVersionTooOld", "runner group \(group): GitHub refuses sessions of runner version "
                                     + "\(ClassicClient.runnerVersion): \(message)")
                guard await pause(.seconds(300)) else { return }
            } catch {
                failures += 1
                logger.warning("classic session failed", metadata: ["group": .string(group), "slot": .stringConvertible(index),
                                                                    "error": .string("\(error)")])
                guard await pause(Self.errorBackoff(failures)) else { return }
            }
        }
    }

    /// Reference 2.1: 15-30 s for the first 5 errors in a row, then 30-60 s (jittered).
    static func errorBackoff(_ failures: Int) -> Duration {
        failures <= 5 ? .milliseconds(Int64.random(in: 15_000...30_000)) : .milliseconds(Int64.random(in: 30_000...60_000))
    }

    /// Polls until the session must go: returns true when the slot should exit (idle), false to
    /// open a new session (healed). Recycles the agent after each acquire.
    private func poll(index: Int, agent: inout Agent, token: inout String, session: inout BrokerSession) async throws -> Bool {
        polling.insert(index)
        metrics.gauge("agc_sessions", [group, "polling"], Double(polling.count))
        defer {
            polling.remove(index)
            metrics.gauge("agc_sessions", [group, "polling"], Double(polling.count))
        }
        var idle = 0
        var empties = 0
        while !Task.isCancelled {
            let result: BrokerPoll
            do {
                result = try await client.poll(agent.credentials, token: token, session: session)
                throttledSince = nil
            } catch let error as OutboundError {
                switch error.kind {
                case .http(401), .http(403), .http(404), .http(410):
                    return false  // heal: delete, fresh token, new session (the caller recycles on a second 401)
                case .http(429):
                    if throttledSince == nil { throttledSince = clock.now() }
                    guard await pause(.seconds(min(max(error.response?.retryAfterSeconds ?? 30, 1), 300))) else { throw CancellationError() }
                    continue
                case .timeout:
                    continue  // a client-side timeout is retried at once
                case .cancelled:
                    return true
                default:
                    throw error
                }
            }
            switch result {
            case .idle, .other:
                idle += 1
                empties = 0
                let wanted = await settings()
                if idle >= Self.idleThreshold, slots.count > max(wanted.minListeners, 1), polling.count > 1 {
                    logger.info("idle classic session exits", metadata: ["group": .string(group), "slot": .stringConvertible(index)])
                    return true
                }
            case .empty:
                empties += 1
                if empties >= 3 { return false }
                guard await pause(.milliseconds(100)) else { throw CancellationError() }
            case .job(let request):
                idle = 0
                empties = 0
                guard await lifecycle.hasRoom(group) else {
                    let reason = await lifecycle.capacities(reclaiming: false)[group]?.held?.reason ?? "ceiling"
                    metrics.count("agc_jobs_admission_rejected_total", [group, reason])
                    logger.info("classic job left queued: no room", metadata: ["group": .string(group), "request": .stringConvertible(request.requestID)])
                    continue
                }
                let job: ClassicJob
                do {
                    job = try await client.acquire(request, token: token)
                } catch {
                    logger.warning("acquirejob failed", metadata: ["group": .string(group), "error": .string("\(error)")])
                    await events.warning("JobAcquisitionFailed", "runner group \(group): acquirejob failed: \(error)")
                    continue
                }
                let worker = agent
                let ticket = UUID()
                jobs[ticket] = Task {
                    await self.runJob(request: request, job: job, agent: worker)
                    self.finished(ticket)
                }
                await scaleUp()
                // The acquire consumed the agent at GitHub: a new one, a new session, then poll on.
                polling.remove(index)
                await closeSession(agent, token: token)
                agent = try await recycle(agent, index: index)
                token = try await brokerToken(&agent, index: index)
                session = try await client.createSession(agent.credentials, token: token, owner: owner)
                polling.insert(index)
            }
        }
        return true
    }

    /// SIGTERM or a heal: DELETE of the session on a task detached from the cancelled one,
    /// 3 attempts of 3 s within 10 s; a session that could not be deleted is counted.
    private func closeSession(_ agent: Agent, token: String) async {
        let client = client
        let clock = clock
        let deleted = await Task.detached { () -> Bool in
            for attempt in 0..<3 {
                if (try? await client.deleteSession(agent.credentials, token: token)) != nil { return true }
                if attempt < 2 { try? await clock.sleep(for: .milliseconds(250)) }
            }
            return false
        }.value
        if !deleted { metrics.count("agc_broker_session_leaks_total", [group]) }
    }

    // MARK: agents

    private func secretName(_ index: Int) -> String { "\(gateway)-agent-\(group)-\(index)" }

    /// The runner name of slot `index`: unique per gateway and group within the organisation.
    private func runnerName(_ index: Int) -> String { "\(gateway)-\(group)-\(index)" }

    /// The slot's agent from its Secret (an AGC restart), else a new registration.
    private func loadOrRegister(_ index: Int) async throws -> Agent {
        if let secret = try await kube.get(KubeResource.secrets.path(namespace: namespace, name: secretName(index))),
            let data = secret["data"] as? JSONObject,
            let blob = (data["encodedJITConfig"] as? String).flatMap(Base64.decode).map({ String(decoding: $0, as: UTF8.self) }),
            let id = (data["agentId"] as? String).flatMap(Base64.decode).flatMap({ Int64(String(decoding: $0, as: UTF8.self)) }),
            let credentials = try? AgentCredentials(encodedJITConfig: blob)
        {
            return Agent(runnerID: id, name: runnerName(index), jitConfig: blob, credentials: credentials)
        }
        return try await register(index)
    }

    private func register(_ index: Int) async throws -> Agent {
        let wanted = await settings()
        let name = runnerName(index)
        let groupID: Int64 = 1  // GitHub's Default runner group; named groups: see the note on gitHubRunnerGroup
        var registered: (runnerID: Int64, jitConfig: String)
        do {
            registered = try await client.register(name: name, groupID: groupID, labels: wanted.labels)
        } catch ClassicError.nameConflict {
            // A predecessor's record under our name: delete it, try once more.
            if let stale = try await client.runnerID(named: name) { try await deregister(stale) }
            registered = try await client.register(name: name, groupID: groupID, labels: wanted.labels)
        }
        let credentials = try AgentCredentials(encodedJITConfig: registered.jitConfig)
        let agent = Agent(runnerID: registered.runnerID, name: name, jitConfig: registered.jitConfig, credentials: credentials)
        try await saveSecret(agent, index: index)
        metrics.count("agc_agent_registrations_total", [group])
        return agent
    }

    /// Deregister with the reference's retry of a 422 "currently running" (6 attempts, 2 s rising to 15 s).
    private func deregister(_ runnerID: Int64) async throws {
        var wait: Duration = .seconds(2)
        for attempt in 1...6 {
            do {
                try await client.deregister(runnerID: runnerID)
                return
            } catch let error as OutboundError where error.kind == .http(422) && attempt < 6 {
                guard await pause(wait) else { throw CancellationError() }
                wait = min(wait * 2, .seconds(15))
            }
        }
    }

    /// Single-use agents: deregister (gone already, usually), register under the same name,
    /// rewrite the Secret.
    private func recycle(_ agent: Agent, index: Int) async throws -> Agent {
        try await deregister(agent.runnerID)
        return try await register(index)
    }

    /// The agent's Secret (`<gateway>-agent-<group>-<n>`): its key never leaves the AGC's namespace.
    private func saveSecret(_ agent: Agent, index: Int) async throws {
        let data: [String: [UInt8]] = [
            "agentIndex": Array(String(index).utf8), "agentId": Array(String(agent.runnerID).utf8), "runnerName": Array(agent.name.utf8),
            "brokerURL": Array(agent.credentials.brokerURL.utf8), "runnerVersion": Array(ClassicClient.runnerVersion.utf8),
            "encodedJITConfig": Array(agent.jitConfig.utf8),
        ]
        let meta = ObjectMeta(name: secretName(index), namespace: namespace,
                              labels: [WorkerLabels.gateway: gateway, WorkerLabels.group: group, WorkerLabels.prefix + "agent-index": String(index)])
        do {
            _ = try await kube.create(Secret(metadata: meta, data: data))
        } catch let error as OutboundError where error.kind == .http(409) {
            let encoded = data.mapValues { Data($0).base64EncodedString() as any Sendable }
            _ = try await kube.mergePatch(KubeResource.secrets.path(namespace: namespace, name: secretName(index)), ["data": encoded as JSONObject])
        }
    }

    /// The broker token, retrying a registration that has not propagated (6 attempts, ~2 s apart);
    /// rejected credentials recycle the agent once.
    private func brokerToken(_ agent: inout Agent, index: Int) async throws -> String {
        var recycled = false
        var attempt = 0
        while true {
            do {
                return try await client.brokerToken(agent.credentials, now: Int64(clock.wallNow().timeIntervalSince1970))
            } catch ClassicError.notPropagated where attempt < 5 {
                attempt += 1
                guard await pause(.milliseconds(Int64.random(in: 1_500...2_500))) else { throw CancellationError() }
            } catch ClassicError.credentialsRejected where !recycled {
                recycled = true
                agent = try await recycle(agent, index: index)
            }
        }
    }

    // MARK: one job

    private func finished(_ ticket: UUID) { jobs[ticket] = nil }

    /// One acquired delivery: the plan's first runs a pod, later ones wait as its siblings.
    /// Renews the lock with the job token every 60 s until the pod finished; then completes the
    /// siblings with its result (failed unless the pod succeeded). 404/410 or 5 failed renewals
    /// in a row: the lock is gone; the pod is deleted (`job_abandoned`).
    private func runJob(request: JobRequest, job: ClassicJob, agent: Agent) async {
        if plans[job.planID] != nil {
            plans[job.planID]?.siblings.append((request, job))
            metrics.count("agc_fanout_siblings_total", [group])
            logger.info("fan-out delivery joins its plan", metadata: ["group": .string(group), "plan": .string(job.planID),
                                                                      "request": .stringConvertible(request.requestID)])
            if let result = plans[job.planID]?.result { await completeSiblings(job.planID, result: result) }
            return
        }
        plans[job.planID] = Plan()
        await lifecycle.watchClassic(jobID: job.jobID)
        let acquired = AcquiredJob(jobID: job.jobID, runID: job.runID, repository: job.repository, workflow: job.workflow,
                                   jobName: job.jobName, jitConfig: agent.jitConfig, payload: job.payload, acquisition: "classic",
                                   runnerName: agent.name, queuedAt: Int64(clock.wallNow().timeIntervalSince1970))
        // The first renew right after the pod is made: a job token GitHub refuses shows at once,
        // not when the ~10 min lock runs out.
        var nextRenew = clock.now()
        var renewFailures = 0
        var created = false
        var seen = false
        while !Task.isCancelled {
            if !created {
                switch await lifecycle.provision(acquired, group: group) {
                case .created, .duplicate: created = true
                case .held(let verdict): logger.info("classic job held", metadata: ["group": .string(group), "why": .string(verdict.description)])
                case .quotaRefused(let detail), .failed(let detail):
                    logger.warning("classic worker pod not created", metadata: ["group": .string(group), "error": .string(detail)])
                }
            } else {
                switch await lifecycle.classicPodState(jobID: job.jobID, group: group) {
                case .finished(let succeeded):
                    await conclude(job.planID, result: succeeded ? "succeeded" : "failed")
                    return
                case .active:
                    seen = true
                case .absent where seen:
                    // Gone without an ending we saw (deleted, evicted): recovery re-runs it; the siblings fail.
                    await lifecycle.unwatchClassic(jobID: job.jobID)
                    await conclude(job.planID, result: "failed")
                    return
                case .absent:
                    break
                }
            }
            if clock.now() >= nextRenew {
                nextRenew = clock.now() + Self.renewInterval
                do {
                    try await client.renew(request, job: job)
                    renewFailures = 0
                } catch let error as OutboundError where error.kind == .http(404) || error.kind == .http(410) {
                    await tearDown(job, reason: "job_not_found")
                    return
                } catch {
                    renewFailures += 1
                    metrics.count("agc_renew_job_errors_total", [group])
                    if renewFailures >= 5 {
                        await tearDown(job, reason: "consecutive_failures")
                        return
                    }
                }
            }
            guard await pause(created ? Self.podCheck : .seconds(5)) else { return }
        }
    }

    private func tearDown(_ job: ClassicJob, reason: String) async {
        metrics.count("agc_renew_job_teardowns_total", [group, reason])
        logger.warning("classic job lock lost: worker deleted", metadata: ["group": .string(group), "job": .string(job.jobID), "reason": .string(reason)])
        await lifecycle.abandonClassic(jobID: job.jobID, group: group)
        await conclude(job.planID, result: "failed")
    }

    private func conclude(_ planID: String, result: String) async {
        plans[planID]?.result = result
        plans[planID]?.doneAt = clock.now()
        await completeSiblings(planID, result: result)
    }

    /// Completes every sibling delivery of a plan with the result of the one that ran.
    private func completeSiblings(_ planID: String, result: String) async {
        guard let siblings = plans[planID]?.siblings, !siblings.isEmpty else { return }
        plans[planID]?.siblings = []
        for sibling in siblings {
            do {
                try await client.complete(sibling.request, job: sibling.job, result: result)
            } catch {
                logger.warning("sibling completion failed", metadata: ["group": .string(group), "plan": .string(planID), "error": .string("\(error)")])
            }
        }
    }
}
