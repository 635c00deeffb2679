import Foundation
import EgressPosix
import GatewayManager
import GitHubKit
import KubeKit
import Logging
import OutboundPool
import Synchronization

/// The AGC of one gateway on the shared controller runtime: its ActionsGateway (one key,
/// `gateway`), its worker pods (one key per pod, the lifecycle's timers as requeues) and the
/// namespace's ResourceQuotas (read by admission). A gateway change starts the sources of new
/// groups and stops those of removed groups (their running jobs finish on their own).
public final class ActionsGatewayController: Sendable {
    /// What the process was told (flags and environment).
    public struct Options: Sendable {
        public var namespace: String
        public var gateway: String
        public var apiBase: String?
        public var workerImage: String
        public var httpsProxy: String?
        public var httpProxy: String?
        public var noProxy: String?
        /// The node pools file the GMC renders (`<gateway>-node-pools`, mounted).
        public var nodePoolsFile: String?

        public init(namespace: String, gateway: String, apiBase: String?, workerImage: String, httpsProxy: String?, httpProxy: String?,
                    noProxy: String?, nodePoolsFile: String? = nil) {
            self.nodePoolsFile = nodePoolsFile
            self.namespace = namespace
            self.gateway = gateway
            self.apiBase = apiBase
            self.workerImage = workerImage
            self.httpsProxy = httpsProxy
            self.httpProxy = httpProxy
            self.noProxy = noProxy
        }
    }

    /// Sources running, by group, with the settings they were started with.
    private struct Running {
        /// `gitHubURL` too: a gateway moved to another GitHub restarts its sources there.
        var sources: [String: (task: Task<Void, Never>, source: any JobSource, scaleSetName: String, acquisition: String, gitHubURL: String)] = [:]
        var settings: [String: DefaultedGateway.Group] = [:]
        var ready = false
        /// What the gateway's drain annotation asks for, as last read; every source follows it.
        var drain = Drain.Request.serve
        /// Classic sources of groups that went (removed, or the gateway became invalid), kept
        /// drained while they renew their running jobs' locks (no other source would: a stopped
        /// one lets them lapse and the jobs fail mid-run), and cancelled once they hold none.
        var retiring: [Retiring] = []
    }

    /// A retiring classic source; `id` tells it from a later one of the same group.
    private struct Retiring {
        var id = UUID()
        var group: String
        var task: Task<Void, Never>
        var source: any JobSource
    }

    private let options: Options
    private let kube: KubeClient
    private let pool: OutboundPool
    private let credentials: AppCredentials
    public let metrics: AGCMetrics
    private let clock: any ControllerClock
    private let logger: Logger
    private let runner: ControllerRunner
    private let gateways: Lister<UntypedObject>
    private let pods: Lister<Pod>
    public let lifecycle: JobLifecycle
    /// Warning Events on the ActionsGateway (`kubectl describe actionsgateway` shows them).
    private let events: EventRecorder
    private let running = Mutex(Running())
    /// The token cache, for the API base it was made for: a gateway whose gitHubURL moves gets fresh tokens.
    private let tokens: Mutex<(apiBase: String, tokens: InstallationTokens)?> = Mutex(nil)
    /// The last installation-token mint's failure (nil: it succeeded), for `GitHubAuthenticated`.
    private let tokenFailure: Mutex<String?> = Mutex(nil)
    /// How often status is written at most (spec: once per 5 s per gateway).
    public static let statusInterval: Duration = .seconds(5)

    public init(options: Options, kube: KubeClient, pool: OutboundPool, credentials: AppCredentials, metrics: AGCMetrics,
                clock: any ControllerClock = SystemControllerClock(), logger: Logger) {
        self.options = options
        self.kube = kube
        self.pool = pool
        self.credentials = credentials
        self.metrics = metrics
        self.clock = clock
        self.logger = logger
        let runner = ControllerRunner(metrics: metrics.runner, workers: 4, resync: .seconds(60), clock: clock)
        self.runner = runner
        let target = "\(options.namespace)/\(options.gateway)"
        gateways = runner.watch(UntypedObject.self, resource: .actionsGateways, client: kube, namespace: options.namespace, primary: true) {
            $0.key == target ? ["gateway"] : []
        }
        // A deleted pod's last state is kept for its reconcile, which runs once the cache no
        // longer has it: it may show that the deletion ended a job.
        let gone = Mutex<Recovery?>(nil)
        pods = runner.watch(Pod.self, client: kube, namespace: options.namespace,
                            labelSelector: "\(WorkerLabels.gateway)=\(options.gateway),\(WorkerLabels.component)=worker",
                            indexLabel: WorkerLabels.group, primary: true) { change in
            if case .deleted(_, let last?) = change { gone.withLock { $0 }?.noteGone(last) }
            return [change.key]
        }
        let quotas = runner.watch(ResourceQuota.self, client: kube, namespace: options.namespace) { _ in [] }
        events = EventRecorder(client: kube, component: "agc",
                               involved: .init(apiVersion: "\(DesiredState.group)/v1alpha1", kind: "ActionsGateway", name: options.gateway,
                                               namespace: options.namespace, uid: nil),
                               clock: clock, logger: logger)
        lifecycle = JobLifecycle(namespace: options.namespace, gateway: options.gateway, client: kube, pods: pods, quotas: quotas,
                                 metrics: metrics, events: events, clock: clock, logger: logger)
        gone.withLock { $0 = lifecycle.recovery }
    }

    /// Whether a source runs for `group` (a wake for another group is answered 404).
    public func hasGroup(_ group: String) -> Bool { running.withLock { $0.sources[group] != nil } }

    /// A wake from the GMC for jobs GitHub queued: each one's queue time is noted for the pod
    /// it may get, and its group's source is told (a classic group opens one more session per
    /// job at once, up to its `maxListeners`).
    public func wake(_ jobs: [AGCWake.Job]) async {
        for job in jobs {
            if let queuedAt = job.queuedAt {
                await lifecycle.noteQueued(repository: job.repository, runID: job.runID, jobName: job.jobName, queuedAt: queuedAt)
            }
            let source = running.withLock { $0.sources[job.runnerGroup]?.source }
            await source?.wake()
        }
    }

    /// `/readyz`: the gateway was read, a token minted and every group's source started.
    public var isReady: Bool { running.withLock { $0.ready } }

    /// Runs until cancelled; then stops every source (each closes its session).
    public func run() async {
        let status = Task { await statusLoop() }
        let recovery = Task { [lifecycle] in await lifecycle.recovery.run() }
        await runner.run { [self] key in
            key == "gateway" ? await configure() : await lifecycle.reconcilePod(key)
        }
        status.cancel()
        recovery.cancel()
        await status.value
        await recovery.value
        let tasks = running.withLock { state in state.sources.values.map(\.task) + state.retiring.map(\.task) }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    /// Reads the gateway and brings the sources in line with its groups.
    private func configure() async -> ReconcileResult {
        guard pods.hasSynced else { return .requeue(after: .milliseconds(100)) }  // replays must see every pod first
        guard let object = gateways.get(namespace: options.namespace, name: options.gateway)?.json else {
            await stopAll(reason: "gateway deleted")
            return .success
        }
        let uid = (object["metadata"] as? JSONObject)?["uid"] as? String
        await events.setUID(uid)
        let validated: DefaultedGateway
        switch AGCGatewayView.validate(json: (try? KubeClient.encode(object)) ?? []) {
        case .success(let value):
            validated = value
        case .failure(let rejection):
            logger.warning("gateway refused", metadata: ["gateway": .string(options.gateway), "error": .string("\(rejection)")])
            let template = rejection.problems.filter { $0.field.contains("podTemplate") }
            if !template.isEmpty {
                await events.warning("TemplateRefused", "no worker pod is created from this template: "
                                     + template.map(\.description).joined(separator: "; "))
            }
            await stopAll(reason: "invalid gateway")
            return .success
        }
        if Self.refusedByGMC(object) {
            await stopAll(reason: "the GMC refused this gateway (Degraded=True, InvalidSpec)")
            return .success
        }
        await follow(Drain.request(object))
        // Read at each reconcile: the mounted ConfigMap follows the platform's pools.
        var pools: [NodePool] = []
        if let file = options.nodePoolsFile {
            switch NodePools.load(path: file) {
            case .success(let loaded): pools = loaded
            case .failure(let rejection): logger.warning("node pools not read", metadata: ["file": .string(file), "error": .string("\(rejection)")])
            }
        }
        let contexts = validated.groups.map { group in
            var context = WorkerPodContext(
                gateway: options.gateway, namespace: options.namespace, gatewayUID: uid, group: group,
                template: AGCGatewayView.podTemplate(object, group: group.name),
                workerImage: options.workerImage, httpsProxy: options.httpsProxy, httpProxy: options.httpProxy, noProxy: options.noProxy)
            if let name = group.nodePool {
                context.nodePool = pools.first { $0.name == name }
                if context.nodePool == nil { context.missingNodePool = name }
            }
            return context
        }
        await lifecycle.configure(contexts)
        guard let apiBase = options.apiBase ?? GitHubEndpoints.apiBase(for: validated.gitHubURL),
            let scope = GitHubScope(gitHubURL: validated.gitHubURL)
        else {
            logger.error("no GitHub API base for the gateway's gitHubURL", metadata: ["url": .string(validated.gitHubURL)])
            return .terminal
        }
        let tokens = installationTokens(apiBase: apiBase)
        do {
            _ = try await tokens.token()
            metrics.count("agc_token_refreshes_total", ["success"])
            tokenFailure.withLock { $0 = nil }
        } catch {
            metrics.count("agc_token_refreshes_total", ["error"])
            tokenFailure.withLock { $0 = "\(error)" }
            logger.warning("installation token failed", metadata: ["error": .string("\(error)")])
            return .retryable
        }
        let metrics = metrics
        let pool = pool
        await lifecycle.recovery.setRuns { group in
            RunsClient(apiBase: apiBase, tokens: tokens, pool: pool) { endpoint, code, remaining in
                metrics.count("agc_github_requests_total", [group, endpoint, String(code)])
                if let remaining { metrics.gauge("agc_github_ratelimit_remaining", [group], Double(remaining)) }
            }
        }
        await lifecycle.teams.setLookups { group in
            let counted: @Sendable (String, Int, Int?) -> Void = { endpoint, code, remaining in
                metrics.count("agc_github_requests_total", [group, endpoint, String(code)])
                if let remaining { metrics.gauge("agc_github_ratelimit_remaining", [group], Double(remaining)) }
            }
            let runs = RunsClient(apiBase: apiBase, tokens: tokens, pool: pool, onRequest: counted)
            return TeamGate.Lookups(
                actor: { await runs.triggeringActor(repository: $0, runID: $1) },
                membership: { await runs.membership(organization: $0.organization, slug: $0.slug, user: $1) },
                cancel: { await runs.cancel(repository: $0, runID: $1) })
        }
        await reconcileSources(validated.groups, gitHubURL: validated.gitHubURL, apiBase: apiBase, scope: scope, tokens: tokens)
        return .success
    }

    // MARK: status

    /// Writes the AGC's share of the gateway's status every `statusInterval` while it differs
    /// from what the cache shows (observe: caches and sources; plan: `AGCStatus`, pure; apply:
    /// one merge patch under the resourceVersion read, so a concurrent GMC write is a 409 and
    /// the next tick plans again from the newer object).
    private func statusLoop() async {
        var ticks = 0
        while !Task.isCancelled {
            await lifecycle.accountAccelerators()
            await lifecycle.updatePodGauges()
            await endRetired()
            await writeStatus()
            ticks += 1
            // Once a minute: free memory from bursts (sessions opening, job waves) goes back to the kernel.
            if ticks % 12 == 0 { Posix.releaseFreeMemory() }
            guard (try? await clock.sleep(for: Self.statusInterval)) != nil else { return }
        }
    }

    func writeStatus() async {
        guard isReady, let object = gateways.get(namespace: options.namespace, name: options.gateway)?.json else { return }
        let sources = running.withLock { state in state.sources.mapValues(\.source) }
        var facts = await lifecycle.facts()
        for index in facts.indices {
            if let source = sources[facts[index].name] { await source.health(into: &facts[index]) }
        }
        // Retiring groups are in no status line, but their locks keep a drain from being done.
        var retiring: [GroupFacts] = []
        for entry in running.withLock({ $0.retiring }) {
            var health = GroupFacts(name: entry.group, acquisition: "classic")
            await entry.source.health(into: &health)
            var locks = GroupFacts(name: entry.group, acquisition: "classic")
            locks.locksHeld = health.locksHeld
            retiring.append(locks)
        }
        let conditions = AGCStatus.conditions(facts + retiring, tokenFailure: tokenFailure.withLock { $0 }, drain: running.withLock { $0.drain })
        let now = ISO8601DateFormatter().string(from: clock.wallNow())
        guard let patch = AGCStatus.patch(gateway: object, groups: facts, conditions: conditions, now: now) else { return }
        let path = KubeResource.actionsGateways.path(namespace: options.namespace, name: options.gateway) + "/status"
        do {
            _ = try await kube.mergePatch(path, patch)
            let summary = conditions.filter { $0.status == "True" && $0.type != "GitHubAuthenticated" }.map(\.type)
            logger.info("status written", metadata: ["gateway": .string(options.gateway), "conditions": .string(summary.joined(separator: ","))])
        } catch let error as OutboundError where error.kind == .http(409) {
            return  // the GMC wrote meanwhile: plan again from its object next tick
        } catch {
            logger.warning("status write failed", metadata: ["gateway": .string(options.gateway), "error": .string("\(error)")])
        }
    }

    private func installationTokens(apiBase: String) -> InstallationTokens {
        tokens.withLock { cache in
            if let cache, cache.apiBase == apiBase { return cache.tokens }
            // The controller's clock, so a test that drives time drives token expiry too.
            let made = InstallationTokens(credentials: credentials, apiBase: apiBase, pool: pool, now: wallSeconds)
            cache = (apiBase, made)
            return made
        }
    }

    /// Epoch seconds on the injected clock (GitHub's token expiries are wall-clock times).
    private var wallSeconds: @Sendable () -> Int64 {
        { [clock] in Int64(clock.wallNow().timeIntervalSince1970) }
    }

    static func refusedByGMC(_ object: JSONObject) -> Bool {
        let conditions = ((object["status"] as? JSONObject)?["conditions"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        return conditions.contains { $0["type"] as? String == "Degraded" && $0["status"] as? String == "True" && $0["reason"] as? String == "InvalidSpec" }
    }

    /// A classic source whose group goes retires, unless a classic source of the same name
    /// starts in its place: that one adopts the running jobs (from their pods' Secrets), so
    /// the old one can stop at once.
    private func reconcileSources(_ groups: [DefaultedGateway.Group], gitHubURL: String, apiBase: String, scope: GitHubScope,
                                  tokens: InstallationTokens) async {
        let wanted = Dictionary(groups.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let (stopped, retired, toStart) = running.withLock { state -> ([Task<Void, Never>], [Retiring], [DefaultedGateway.Group]) in
            state.settings = wanted
            var stopped: [Task<Void, Never>] = []
            var retired: [Retiring] = []
            for (name, entry) in state.sources where wanted[name] == nil || wanted[name]?.scaleSetName != entry.scaleSetName
                || wanted[name]?.acquisition != entry.acquisition || entry.gitHubURL != gitHubURL {
                if entry.acquisition == "classic" && wanted[name]?.acquisition != "classic" {
                    retired.append(Retiring(group: name, task: entry.task, source: entry.source))
                } else {
                    stopped.append(entry.task)
                }
                state.sources[name] = nil
            }
            let toStart = groups.filter { state.sources[$0.name] == nil }
            for group in toStart where group.acquisition == "classic" {
                stopped += state.retiring.filter { $0.group == group.name }.map(\.task)
                state.retiring.removeAll { $0.group == group.name }
            }
            state.retiring += retired
            return (stopped, retired, toStart)
        }
        for task in stopped { task.cancel() }
        await retire(retired)
        for group in toStart {
            let name = group.name
            let metrics = metrics
            let onRequest: @Sendable (String, Int, Int?) -> Void = { endpoint, code, remaining in
                metrics.count("agc_github_requests_total", [name, endpoint, String(code)])
                if let remaining { metrics.gauge("agc_github_ratelimit_remaining", [name], Double(remaining)) }
            }
            let source: any JobSource
            if group.acquisition == "classic" {
                let client = ClassicClient(apiBase: apiBase, scope: scope, tokens: tokens, pool: pool, onRequest: onRequest)
                source = ClassicSource(
                    group: name, gateway: options.gateway, namespace: options.namespace, client: client, kube: kube, lifecycle: lifecycle,
                    metrics: metrics, events: events, clock: clock, logger: logger
                ) { [self] in
                    let settings = running.withLock { $0.settings[name] }
                    return ClassicSource.Settings(gitHubGroup: settings?.gitHubRunnerGroup ?? "Default", labels: settings?.runnerLabels ?? [],
                                                  minListeners: settings?.minListeners ?? 1, maxListeners: settings?.maxListeners ?? 1)
                }
            } else {
                let client = ScaleSetClient(apiBase: apiBase, scope: scope, tokens: tokens, pool: pool, now: wallSeconds, onRequest: onRequest)
                source = ScaleSetSource(
                    group: name, owner: "\(options.namespace)/\(options.gateway)", client: client, lifecycle: lifecycle, metrics: metrics,
                    events: events, clock: clock, logger: logger
                ) { [self] in
                    let settings = running.withLock { $0.settings[name] }
                    return (settings?.scaleSetName ?? name, settings?.gitHubRunnerGroup ?? "Default", settings?.runnerLabels ?? [])
                }
            }
            let draining = running.withLock { $0.drain.draining }
            // Told before it runs: a source started during a drain never opens a session.
            let task = Task {
                await source.setDraining(draining)
                await source.run()
            }
            running.withLock { $0.sources[name] = (task, source, group.scaleSetName, group.acquisition, gitHubURL) }
            logger.info("source started", metadata: ["runner_group": .string(name), "acquisition": .string(group.acquisition)])
        }
        running.withLock { $0.ready = true }
    }

    /// Applies the drain annotation to every running source (new ones read it as they start),
    /// saying each change once: a log line, `agc_draining`, and a Warning Event for a value
    /// that means nothing.
    private func follow(_ request: Drain.Request) async {
        let (previous, sources) = running.withLock { state in
            let previous = state.drain
            state.drain = request
            return (previous, state.sources.values.map(\.source))
        }
        for source in sources { await source.setDraining(request.draining) }
        metrics.gauge("agc_draining", [], request.draining ? 1 : 0)
        guard request != previous else { return }
        switch request {
        case .drain:
            logger.info("drain requested: sessions given up, running jobs kept", metadata: ["gateway": .string(options.gateway)])
        case .serve:
            logger.info("serving: drain lifted", metadata: ["gateway": .string(options.gateway)])
        case .invalid(let value):
            logger.warning("drain annotation not understood: serving", metadata: ["gateway": .string(options.gateway), "value": .string(value)])
            await events.warning("DrainAnnotationInvalid", "\(Drain.annotation) is \"\(value)\": only \"true\" drains; serving")
        }
    }

    /// Every source stops; classic ones retire (a tenant's bad edit must not fail the jobs running).
    private func stopAll(reason: String) async {
        await lifecycle.markConfigured()
        let (tasks, retired) = running.withLock { state -> ([Task<Void, Never>], [Retiring]) in
            let tasks = state.sources.values.filter { $0.acquisition != "classic" }.map(\.task)
            let retired = state.sources.filter { $0.value.acquisition == "classic" }.map { Retiring(group: $0.key, task: $0.value.task, source: $0.value.source) }
            state.sources = [:]
            state.retiring += retired
            state.ready = false
            return (tasks, retired)
        }
        if !tasks.isEmpty || !retired.isEmpty { logger.info("sources stopped", metadata: ["why": .string(reason)]) }
        for task in tasks { task.cancel() }
        await retire(retired)
    }

    /// Drains classic sources whose group went: no session, their running jobs renewed until they end.
    private func retire(_ retired: [Retiring]) async {
        for entry in retired {
            await entry.source.setDraining(true)
            logger.info("classic group retiring: its running jobs are renewed until they end", metadata: ["runner_group": .string(entry.group)])
        }
    }

    /// Cancels the retiring sources that hold no job any more (each status tick).
    private func endRetired() async {
        for entry in running.withLock({ $0.retiring }) where await !entry.source.holdsJobs() {
            let ended = running.withLock { state in
                guard state.retiring.contains(where: { $0.id == entry.id }) else { return false }
                state.retiring.removeAll { $0.id == entry.id }
                return true
            }
            guard ended else { continue }  // a source of the same group started meanwhile and ended it
            entry.task.cancel()
            logger.info("classic group retired", metadata: ["runner_group": .string(entry.group)])
        }
    }
}
