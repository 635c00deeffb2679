import Foundation
import GitHubKit
import KubeKit
import Logging
import OutboundPool

/// The classic source of one group (spec/agc.md section 3, reference 2.1 and 3.1): virtual
/// runner sessions against the per-runner broker, each with its own JIT agent (one session per
/// agent), between `minListeners` and `maxListeners`.
///
/// Memory: a waiting session is a `Slot` in this actor and one curl transfer in the shared
/// OutboundPool, nothing else: no thread, and no task (a suspended task keeps every slab its
/// deepest call ever needed, ~14 KiB measured, for as long as it lives). Work between polls
/// (open a session, acquire, back off) runs as one short-lived step task per slot, and a poll's
/// answer arrives as a callback that starts the next step.
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
    /// A slot between events. While its poll is held it is this and the poll's transfer: the
    /// agent's key and blob stay in its Secret and are read when needed (opening a session,
    /// acquiring a job), so a polling slot holds only what the poll and its deletion need.
    struct Slot {
        /// An agent in hand (a fresh registration) for the next open; nil while polling.
        var agent: Agent?
        var brokerURL: String?
        var token: String?
        /// The broker session open at GitHub: deleted however the slot ends.
        var session: BrokerSession?
        var counters = ClassicSessionRules.Counters()
        var failures = 0
        var call: OutboundCall?
        /// The slot's one step in progress; dropped once it hands over to a poll (a finished
        /// task keeps its memory while anything references it).
        var step: Task<Void, Never>?
    }
    private var slots: [Int: Slot] = [:]
    /// Slots with an open broker session (a slot recycling its agent is not polling): derived,
    /// so it cannot drift from the slots.
    private var polling: Int { slots.values.reduce(0) { $0 + ($1.session == nil ? 0 : 1) } }
    /// Set when the sessions are closed (by `stop`, or for a drain): no new poll or step starts
    /// while it holds. Lifted only by the run loop, when a drain ends.
    private var closed = false
    /// Bumped each time the sessions are closed: a poll answer from before is dropped, even
    /// when its slot's index is in use again after the drain ended.
    private var epoch = 0
    /// A drain asked for (`setDraining`): the run loop closes the sessions or reopens them to match.
    private var drainRequested = false
    private var plans: [String: Plan] = [:]
    /// The runner version floor refused our sessions (a condition, not retried quickly).
    private var versionRefused: String?
    private var throttledSince: Duration?
    /// Job tasks (renew, sibling completion): cancelled with the source; pods are left alone.
    private var jobs: [UUID: Task<Void, Never>] = [:]
    /// Jobs whose pod a job task here watches and renews (ours, or adopted after a restart).
    private var renewing = Set<String>()
    /// Jobs acquired here whose pod is not made yet: a stop gives them `podGrace` to get one.
    private var podless = Set<String>()
    /// How long a stop waits for acquired jobs' pods. A successor adopts a job by its pod; a
    /// job left without one runs nowhere until its lock lapses and GitHub fails it.
    static let podGrace: Duration = .seconds(5)
    /// Running classic pods whose Secret cannot say how to renew them (made by an older AGC):
    /// not read again while they run.
    private var unadoptable = Set<String>()
    private var runnerGroupIDs: [String: Int64] = [:]

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
        facts.activeSessions = polling
        facts.rateLimitedFor = throttledSince.map { clock.now() - $0 }
        facts.versionRefused = versionRefused
        facts.locksHeld = renewing.count
    }

    /// The run loop acts on it within a second.
    public func setDraining(_ draining: Bool) { drainRequested = draining }

    /// Job tasks running: each renews a lock (or completes siblings) that nothing else would.
    public func holdsJobs() -> Bool { !jobs.isEmpty }

    private func pause(_ duration: Duration) async -> Bool { (try? await clock.sleep(for: duration)) != nil }

    /// Keeps the baseline of sessions running until cancelled; then every session deletes its
    /// broker session (10 s budget) and the job tasks stop renewing (their pods run on).
    /// Drained, it holds no session but goes on renewing and adopting running jobs, so they
    /// end as they would have.
    public func run() async {
        try? await lifecycle.loadGuards(group)
        while !Task.isCancelled {
            if drainRequested && !closed {
                await closeSessions()
                logger.info("draining: classic sessions closed, running jobs renewed until they end",
                            metadata: ["runner_group": .string(group), "jobs": .stringConvertible(renewing.count)])
            } else if !drainRequested && closed {
                closed = false
                logger.info("drain lifted: classic sessions open again", metadata: ["runner_group": .string(group)])
            }
            let wanted = await settings()
            if !closed {
                for index in 0..<max(wanted.minListeners, 1) where slots[index] == nil { start(index) }
            }
            let now = clock.now()
            plans = plans.filter { $0.value.doneAt.map { now - $0 < Self.planLinger } ?? true }
            await adoptRunningJobs()
            guard await pause(.seconds(1)) else { break }
        }
        await stop()
    }

    /// The sessions close (an acquire in flight is answered, and its job task starts), jobs
    /// acquired here get up to `podGrace` for their pods, then the job tasks stop: their pods
    /// run on, and a successor adopts them.
    private func stop() async {
        await closeSessions()
        let clock = clock
        let deadline = clock.now() + Self.podGrace
        // On a task of its own: this one is cancelled (it is a stop), so its sleeps end at once.
        await Task.detached { [self] in
            while await self.hasPodlessJobs(), clock.now() < deadline {
                guard (try? await clock.sleep(for: .milliseconds(100))) != nil else { return }
            }
        }.value
        let running = Array(jobs.values)
        for task in running { task.cancel() }
        for task in running { await task.value }
    }

    private func hasPodlessJobs() -> Bool { !podless.isEmpty }

    /// Ordering: `closed` first (a poll answer or step arriving later starts nothing), then
    /// the held polls and steps are cancelled and awaited, so the set of open sessions is final
    /// before they are deleted, all at once. Job tasks are left running: a drain keeps them.
    private func closeSessions() async {
        closed = true
        epoch += 1
        for waiter in openWaiters { waiter.resume(returning: false) }
        openWaiters = []
        let steps = slots.values.compactMap(\.step)
        for slot in slots.values { slot.call?.cancel() }
        for task in steps { task.cancel() }
        for task in steps { await task.value }
        let open = slots.values.compactMap { slot -> (String, String)? in
            guard slot.session != nil, let brokerURL = slot.brokerURL, let token = slot.token else { return nil }
            return (brokerURL, token)
        }
        let client = client
        let clock = clock
        let leaks = await withTaskGroup(of: Bool.self) { tasks in
            for (brokerURL, token) in open { tasks.addTask { await Self.deleteSession(client: client, clock: clock, brokerURL: brokerURL, token: token) } }
            return await tasks.reduce(0) { $0 + ($1 ? 0 : 1) }
        }
        if leaks > 0 { metrics.count("agc_broker_session_leaks_total", [group], by: Double(leaks)) }
        slots = [:]
        publishPolling()
    }

    private func start(_ index: Int) {
        guard !closed else { return }
        slots[index] = Slot()
        step(index) { await $0.open(index) }
    }

    /// Runs the slot's next step as a short task (a slot has at most one at a time).
    private func step(_ index: Int, _ body: @escaping @Sendable (isolated ClassicSource) async -> Void) {
        guard !closed, slots[index] != nil else { return }
        slots[index]?.step = Task { await body(self) }
    }

    /// A job was queued for this group (a wake): one more session, up to `maxListeners`, so a
    /// burst of queued jobs finds sessions without waiting for each acquire to add the next.
    public func wake() async {
        guard !closed else { return }
        await scaleUp()
    }

    /// After an acquire (jobs are queued: the broker gives no count), one more session, up to `maxListeners`.
    private func scaleUp() async {
        let wanted = await settings()
        guard slots.count < wanted.maxListeners, let free = (0..<wanted.maxListeners).first(where: { slots[$0] == nil }) else { return }
        start(free)
    }

    private func ended(_ index: Int) {
        slots[index] = nil
        publishPolling()
    }

    /// The `agc_sessions` gauge's polling series, after a session opened or closed.
    private func publishPolling() { metrics.gauge("agc_sessions", [group, "polling"], Double(polling)) }

    // MARK: one session

    /// Sessions opening at once (agent, token, session create). A thousand slots starting
    /// together would otherwise burst GitHub's secondary rate limit (100 concurrent requests)
    /// and the AGC's heap, whose peak glibc keeps as resident memory.
    static let concurrentOpens = 32
    private var opening = 0
    /// Steps waiting for an opening permit, handed one in order (false: closing, no permit).
    private var openWaiters: [CheckedContinuation<Bool, Never>] = []

    private func enterOpening() async -> Bool {
        guard !closed else { return false }
        if opening < Self.concurrentOpens {
            opening += 1
            return true
        }
        return await withCheckedContinuation { openWaiters.append($0) }
    }

    private func leaveOpening() {
        if openWaiters.isEmpty { opening -= 1 } else { openWaiters.removeFirst().resume(returning: true) }
    }

    /// Opens the slot's broker session, retrying with backoff; then polls.
    private func open(_ index: Int) async {
        while !Task.isCancelled, !closed, slots[index] != nil {
            guard await enterOpening() else { return }
            let failure: (any Error)?
            do {
                try await openOnce(index)
                failure = nil
            } catch {
                failure = error
            }
            leaveOpening()
            switch failure {
            case nil:
                beginPoll(index)
                return
            case is CancellationError:
                return
            case ClassicError.agentOnline(let name)?:
                // Holds no session until the peer's goes: asked again every 5 s (one retry interval).
                // Counted as one failure, so the line is said once per wait, not every 5 s.
                slots[index]?.agent = nil
                if slots[index]?.failures == 0 {
                    logger.info("agent name held by another AGC's live session: waiting", metadata: [
                        "runner_group": .string(group), "slot": .stringConvertible(index), "runner": .string(name)])
                }
                slots[index]?.failures = 1
                guard await pause(.seconds(5)) else { return }
            case ClassicError.versionTooOld(let message)?:
                versionRefused = message
                logger.error("runner version below GitHub's floor", metadata: ["runner_group": .string(group), "message": .string(message)])
                await events.warning("RunnerVersionTooOld", "runner group \(group): GitHub refuses sessions of runner version "
                                     + "\(ClassicClient.runnerVersion): \(message)")
                guard await pause(.seconds(300)) else { return }
            case let error?:
                // The next attempt reads the agent again (its Secret holds the latest registration).
                slots[index]?.agent = nil
                guard await backOff(index, after: "\(error)") else { return }
            }
        }
    }

    /// One attempt: the agent (the slot's, its Secret's or a new registration), a broker token,
    /// the session; a session conflict or a dead agent recycles the agent once.
    private func openOnce(_ index: Int) async throws {
        var agent: Agent
        if let known = slots[index]?.agent { agent = known } else { agent = try await loadOrRegister(index) }
        slots[index]?.agent = agent
        var token = try await brokerToken(&agent, index: index)
        var session: BrokerSession
        do {
            session = try await client.createSession(agent.credentials, token: token, owner: owner)
        } catch ClassicError.sessionConflict, ClassicError.credentialsRejected {
            // A predecessor's session (an AGC that died) or a dead agent: a fresh agent ends both.
            agent = try await recycle(agent, index: index)
            slots[index]?.agent = agent
            token = try await brokerToken(&agent, index: index)
            session = try await client.createSession(agent.credentials, token: token, owner: owner)
        }
        slots[index]?.agent = nil
        slots[index]?.brokerURL = agent.credentials.brokerURL
        slots[index]?.token = token
        slots[index]?.session = session
        slots[index]?.failures = 0
        versionRefused = nil
        publishPolling()
    }

    /// Counts a failure in a row and waits the reference's backoff; false when cancelled.
    private func backOff(_ index: Int, after error: String) async -> Bool {
        let failures = (slots[index]?.failures ?? 0) + 1
        slots[index]?.failures = failures
        logger.warning("classic session failed", metadata: ["runner_group": .string(group), "slot": .stringConvertible(index), "error": .string(error)])
        return await pause(Self.errorBackoff(failures))
    }

    /// Reference 2.1: 15-30 s for the first 5 errors in a row, then 30-60 s (jittered).
    static func errorBackoff(_ failures: Int) -> Duration {
        failures <= 5 ? .milliseconds(Int64.random(in: 15_000...30_000)) : .milliseconds(Int64.random(in: 30_000...60_000))
    }

    /// Holds the slot's long poll; its answer comes back through `polled`. Drops the step that
    /// led here (it is done once the poll is held).
    private func beginPoll(_ index: Int) {
        guard !closed, let slot = slots[index] else { return }
        slots[index]?.step = nil
        guard let brokerURL = slot.brokerURL, let token = slot.token, let session = slot.session else {
            step(index) { await $0.open(index) }  // no session to poll on: open one
            return
        }
        let epoch = epoch
        slots[index]?.call = client.beginPoll(brokerURL: brokerURL, token: token, session: session) { result in
            await self.polled(index, epoch, result)
        }
    }

    /// A poll's answer: the rules decide, this carries it out.
    private func polled(_ index: Int, _ epoch: Int, _ result: Result<BrokerPoll, any Error>) async {
        guard !closed, epoch == self.epoch, slots[index] != nil else { return }
        slots[index]?.call = nil
        let outcome = ClassicSessionRules.outcome(result)
        switch outcome {
        case .throttled: if throttledSince == nil { throttledSince = clock.now() }
        case .failed, .cancelled: break
        default: throttledSince = nil
        }
        let baseline = max(await settings().minListeners, 1)
        guard !closed, var counters = slots[index]?.counters else { return }
        let action = ClassicSessionRules.next(outcome, counters: &counters,
                                              group: .init(sessions: slots.count, baseline: baseline, polling: polling))
        slots[index]?.counters = counters
        switch action {
        case .poll:
            beginPoll(index)
        case .pollAfter(let delay):
            step(index) { source in
                guard await source.pause(delay) else { return }
                source.beginPoll(index)
            }
        case .admit(let request):
            step(index) { await $0.admit(index, request) }
        case .heal:
            step(index) { source in
                await source.closeSession(index)
                await source.open(index)
            }
        case .exit:
            logger.info("idle classic session exits", metadata: ["runner_group": .string(group), "slot": .stringConvertible(index)])
            step(index) { source in
                await source.closeSession(index)
                source.ended(index)
            }
        case .fail(let why):
            step(index) { source in
                await source.closeSession(index)
                guard await source.backOff(index, after: why) else { return }
                await source.open(index)
            }
        }
    }

    /// A delivery: admission before acquire (a job we cannot place stays queued at GitHub and is
    /// redelivered to a session with room); the acquire consumes the agent, so the slot recycles
    /// it and opens a new session.
    private func admit(_ index: Int, _ request: JobRequest) async {
        guard await lifecycle.hasRoom(group) else {
            let reason = await lifecycle.capacities(reclaiming: false)[group]?.held?.reason ?? "ceiling"
            metrics.count("agc_jobs_admission_rejected_total", [group, reason])
            logger.info("classic job left queued: no room", metadata: ["runner_group": .string(group), "request": .stringConvertible(request.requestID)])
            beginPoll(index)
            return
        }
        guard let token = slots[index]?.token else { return beginPoll(index) }
        // The agent's blob (the worker's) from its Secret, before the acquire: a job we acquire
        // must be one we can give a pod.
        let agent: Agent
        do {
            guard let loaded = try await loadAgent(index) else { throw ClassicError.malformed("agent Secret \(secretName(index)) is gone") }
            agent = loaded
        } catch {
            logger.warning("classic job left queued: agent unreadable", metadata: ["runner_group": .string(group), "error": .string("\(error)")])
            return beginPoll(index)
        }
        let job: ClassicJob
        do {
            // Not cancelled with the step (a drain, a stop): once sent, GitHub may have acquired
            // the job, and only its answer lets this AGC run and renew it. Its job task then
            // runs through a drain; a stop cancels it like any other.
            let client = client
            job = try await Task { try await client.acquire(request, token: token) }.value
        } catch {
            logger.warning("acquirejob failed", metadata: ["runner_group": .string(group), "error": .string("\(error)")])
            await events.warning("JobAcquisitionFailed", "runner group \(group): acquirejob failed: \(error)")
            return beginPoll(index)
        }
        startJob(request: request, job: job, agent: agent)
        await scaleUp()
        // The acquire consumed the agent at GitHub: a new one, a new session, then poll on.
        await closeSession(index)
        // Closing (a drain or a stop) while the acquire was answered: the next open of this
        // slot finds the consumed agent in its Secret and recycles it then.
        guard !Task.isCancelled, !closed else { return }
        do {
            slots[index]?.agent = try await recycle(agent, index: index)
        } catch {
            slots[index]?.agent = nil
            guard await backOff(index, after: "\(error)") else { return }
        }
        await open(index)
    }

    /// The slot's broker session is deleted (a heal, an exit, a recycle); the slot no longer polls.
    private func closeSession(_ index: Int) async {
        guard let slot = slots[index], slot.session != nil, let brokerURL = slot.brokerURL, let token = slot.token else { return }
        slots[index]?.session = nil
        publishPolling()
        if !(await Self.deleteSession(client: client, clock: clock, brokerURL: brokerURL, token: token)) {
            metrics.count("agc_broker_session_leaks_total", [group])
        }
    }

    /// DELETE of a session on a task detached from the caller (which may be cancelled: SIGTERM),
    /// 3 attempts within the 10 s budget; false when it could not be deleted.
    private static func deleteSession(client: ClassicClient, clock: any ControllerClock, brokerURL: String, token: String) async -> Bool {
        await Task.detached { () -> Bool in
            for attempt in 0..<3 {
                if (try? await client.deleteSession(brokerURL: brokerURL, token: token)) != nil { return true }
                if attempt < 2 { try? await clock.sleep(for: .milliseconds(250)) }
            }
            return false
        }.value
    }

    // MARK: agents

    private func secretName(_ index: Int) -> String { "\(gateway)-agent-\(group)-\(index)" }

    /// The runner name of slot `index`: unique per gateway and group within the organisation.
    private func runnerName(_ index: Int) -> String { "\(gateway)-\(group)-\(index)" }

    /// The slot's agent from its Secret (an AGC restart), else a new registration.
    private func loadOrRegister(_ index: Int) async throws -> Agent {
        if let agent = try await loadAgent(index) { return agent }
        return try await register(index)
    }

    /// The slot's agent as its Secret holds it; nil when there is none (or it cannot be read).
    private func loadAgent(_ index: Int) async throws -> Agent? {
        if let secret = try await kube.get(KubeResource.secrets.path(namespace: namespace, name: secretName(index))),
            let data = secret["data"] as? JSONObject,
            let blob = (data["encodedJITConfig"] as? String).flatMap(Base64.decode).map({ String(decoding: $0, as: UTF8.self) }),
            let id = (data["agentId"] as? String).flatMap(Base64.decode).flatMap({ Int64(String(decoding: $0, as: UTF8.self)) }),
            let credentials = try? AgentCredentials(encodedJITConfig: blob)
        {
            return Agent(runnerID: id, name: runnerName(index), jitConfig: blob, credentials: credentials)
        }
        return nil
    }

    /// GitHub's id of the runner group, looked up once per name (a group's id never changes;
    /// a group created later is found on the next attempt, since misses are not kept).
    private func runnerGroupID(_ name: String) async throws -> Int64 {
        if let known = runnerGroupIDs[name] { return known }
        do {
            let id = try await client.runnerGroupID(named: name)
            runnerGroupIDs[name] = id
            return id
        } catch ClassicError.runnerGroupNotFound(let missing) {
            await events.warning("RunnerGroupNotFound", "runner group \(group): GitHub has no runner group named \(missing)")
            throw ClassicError.runnerGroupNotFound(missing)
        }
    }

    private func register(_ index: Int) async throws -> Agent {
        let wanted = await settings()
        let name = runnerName(index)
        let groupID = try await runnerGroupID(wanted.gitHubGroup)
        var registered: (runnerID: Int64, jitConfig: String)
        do {
            registered = try await client.register(name: name, groupID: groupID, labels: wanted.labels)
        } catch ClassicError.nameConflict {
            // A predecessor's record under our name: delete it, try once more. An online one is
            // not a predecessor's: another AGC (a blue/green peer) polls with it, so wait.
            if let stale = try await client.runner(named: name) {
                if stale.online { throw ClassicError.agentOnline(name) }
                try await deregister(stale.id)
            }
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

    // MARK: adoption

    /// Classic pods running with no job task here were acquired by a predecessor (an AGC that
    /// restarted or was upgraded) whose tasks died with it: their locks must go on being renewed,
    /// else GitHub's ~10 min lock lapses and the job fails mid-run. The job token is in the
    /// payload and the rest in `renewal`, both in the pod's Secret.
    private func adoptRunningJobs() async {
        let running = await lifecycle.runningClassicPods(group)
        unadoptable.formIntersection(running.map(\.pod))
        for (jobID, pod) in running where !renewing.contains(jobID) && !unadoptable.contains(pod) {
            guard let (request, job) = await renewalOf(pod: pod) else {
                unadoptable.insert(pod)
                logger.warning("classic pod not adopted: its Secret does not say how to renew it",
                               metadata: ["runner_group": .string(group), "pod": .string(pod)])
                continue
            }
            logger.info("classic job adopted", metadata: ["runner_group": .string(group), "job_id": .string(jobID), "pod": .string(pod)])
            startJob(request: request, job: job, agent: nil)
        }
    }

    private func renewalOf(pod: String) async -> (JobRequest, ClassicJob)? {
        guard let secret = try? await kube.get(KubeResource.secrets.path(namespace: namespace, name: pod)),
            let data = secret["data"] as? JSONObject,
            let payload = (data["payload"] as? String).flatMap(Base64.decode),
            let renewal = (data["renewal"] as? String).flatMap(Base64.decode),
            let lock = try? JSONSerialization.jsonObject(with: Data(renewal)) as? [String: Any],
            let requestID = (lock["requestId"] as? NSNumber)?.int64Value,
            let url = lock["runServiceUrl"] as? String, GitHubURLs.allowed(url),
            let job = ClassicJob.parse(payload, planHeader: lock["planId"] as? String)
        else { return nil }
        return (JobRequest(requestID: requestID, runServiceURL: url, billingOwnerID: nil, messageID: 0), job)
    }

    /// What `renewal` holds for a job acquired here.
    static func renewal(_ request: JobRequest, _ job: ClassicJob) -> [UInt8] {
        let object: [String: Any] = ["requestId": request.requestID, "runServiceUrl": request.runServiceURL, "planId": job.planID]
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])).map { [UInt8]($0) } ?? []
    }

    // MARK: one job

    /// A job task: the delivery's pod made from `agent`'s blob, or, with no agent, a running pod
    /// adopted after a restart.
    private func startJob(request: JobRequest, job: ClassicJob, agent: Agent?) {
        let ticket = UUID()
        jobs[ticket] = Task {
            await self.runJob(request: request, job: job, agent: agent)
            self.jobs[ticket] = nil
        }
    }

    /// One acquired delivery: the plan's first runs a pod, later ones wait as its siblings.
    /// Renews the lock with the job token every 60 s until the pod finished; then completes the
    /// siblings with its result (failed unless the pod succeeded). 404/410 or 5 failed renewals
    /// in a row: the lock is gone; the pod is deleted (`job_abandoned`).
    private func runJob(request: JobRequest, job: ClassicJob, agent: Agent?) async {
        if plans[job.planID] != nil, agent != nil {
            plans[job.planID]?.siblings.append((request, job))
            metrics.count("agc_fanout_siblings_total", [group])
            logger.info("fan-out delivery joins its plan", metadata: ["runner_group": .string(group), "plan": .string(job.planID),
                                                                      "request": .stringConvertible(request.requestID)])
            if let result = plans[job.planID]?.result { await completeSiblings(job.planID, result: result) }
            return
        }
        if plans[job.planID] == nil { plans[job.planID] = Plan() }
        renewing.insert(job.jobID)
        if agent != nil { podless.insert(job.jobID) }
        defer {
            renewing.remove(job.jobID)
            podless.remove(job.jobID)
        }
        await lifecycle.watchClassic(jobID: job.jobID)
        var acquired: AcquiredJob?
        if let agent {
            acquired = AcquiredJob(jobID: job.jobID, runID: job.runID, repository: job.repository, workflow: job.workflow,
                                   jobName: job.jobName, jitConfig: agent.jitConfig, payload: job.payload, acquisition: "classic",
                                   runnerName: agent.name, receivedAt: Int64(clock.wallNow().timeIntervalSince1970))
            acquired?.renewal = Self.renewal(request, job)
        }
        // The first renew right after the pod is made: a job token GitHub refuses shows at once,
        // not when the ~10 min lock runs out.
        var nextRenew = clock.now()
        var renewFailures = 0
        // An adopted job's pod exists: it was seen in the cache.
        var created = acquired == nil
        var seen = acquired == nil
        // The group's team policy is asked before the pod; the lock is renewed while it waits.
        var admitted = acquired == nil
        let offered = clock.now()
        while !Task.isCancelled {
            if !admitted, let acquired {
                switch await admit(acquired, since: offered) {
                case .run:
                    admitted = true
                case .hold(let why):
                    logger.info("classic job held", metadata: ["runner_group": .string(group), "why": .string(why)])
                case .denied:
                    await giveUp(request, job, why: "denied")
                    return
                }
            }
            if !created, admitted, acquired != nil, await lifecycle.settings(of: group) == nil {
                // The group was removed before its pod existed: no pod can be made for it now.
                logger.warning("classic job dropped: its runner group was removed before its pod", metadata: [
                    "runner_group": .string(group), "job_id": .string(job.jobID)])
                await giveUp(request, job, why: "group removed")
                return
            }
            if !created, admitted, let acquired {
                switch await lifecycle.provision(acquired, group: group) {
                case .created, .duplicate:
                    created = true
                    podless.remove(job.jobID)
                case .held(let verdict): logger.info("classic job held", metadata: ["runner_group": .string(group), "why": .string(verdict.description)])
                case .quotaRefused(let detail), .failed(let detail):
                    logger.warning("classic worker pod not created", metadata: ["runner_group": .string(group), "error": .string(detail)])
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

    /// No worker will complete the delivery: this AGC does, failed (a job that never ran must
    /// not conclude green), and the plan's siblings follow.
    private func giveUp(_ request: JobRequest, _ job: ClassicJob, why: String) async {
        await lifecycle.unwatchClassic(jobID: job.jobID)
        do {
            try await client.complete(request, job: job, result: "failed")
        } catch {
            logger.warning("unrun job not completed", metadata: ["runner_group": .string(group), "why": .string(why), "error": .string("\(error)")])
        }
        await conclude(job.planID, result: "failed")
    }

    private func admit(_ job: AcquiredJob, since: Duration) async -> TeamGate.Decision {
        guard let settings = await lifecycle.settings(of: group), !settings.allowedTeams.isEmpty else { return .run }
        return await lifecycle.teams.admit(group: settings, jobID: job.jobID, repository: job.repository, runID: job.runID, waitingSince: since)
    }

    private func tearDown(_ job: ClassicJob, reason: String) async {
        metrics.count("agc_renew_job_teardowns_total", [group, reason])
        logger.warning("classic job lock lost: worker deleted", metadata: ["runner_group": .string(group), "job_id": .string(job.jobID), "reason": .string(reason)])
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
                logger.warning("sibling completion failed", metadata: ["runner_group": .string(group), "plan": .string(planID), "error": .string("\(error)")])
            }
        }
    }
}
