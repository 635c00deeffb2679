import Foundation
import KubeKit
import Logging
import OutboundPool
import Synchronization

/// Sends the wakes the webhook router decided (`AGCWake`): signed `POST /wake`s to the routed
/// gateway's AGC, through its Service, off the router's loop.
///
/// One wake in flight per gateway: jobs routed while it is out wait, and go together in the
/// next (up to `AGCWake.maxJobs`), so a burst of queued jobs for one gateway is a few
/// requests, paced by how fast that AGC answers, and one slow AGC holds back no other.
///
/// Best effort, by design: a wake only hastens what the AGC does anyway (a classic group's
/// sessions find queued jobs by their own long polls, and a job's queue time falls back to
/// when the AGC acquired it), so a wake is sent once with a short deadline and never
/// retried; jobs past the queue bounds are dropped. Every job is counted by its outcome.
/// Safe from any thread.
public final class AGCWaker: Sendable {
    /// The `outcome` labels of `gmc_agc_wakes_total` (per job).
    public static let outcomes = ["sent", "refused", "failed", "dropped"]
    /// Jobs waiting for one gateway's wake, and for all gateways: past them a job is dropped
    /// (bounded memory whatever GitHub sends).
    public static let maxQueuedPerGateway = 1_024
    public static let maxQueued = 16_384
    public static let timeout: Duration = .seconds(3)
    /// The AGC's admin endpoint through the Service the GMC renders for it (`<gateway>-agc`).
    public static let defaultURLTemplate = "http://{gateway}-agc.{namespace}.svc:\(DesiredState.agcAdminPort)"

    /// Per gateway (`namespace/gateway`): the jobs waiting, and whether a wake is out.
    private struct Queues {
        var waiting: [String: (sending: Bool, jobs: [AGCWake.Job])] = [:]
        var total = 0
    }

    private let key: WakeSigningKey
    private let pool: OutboundPool
    private let urlTemplate: String
    private let clock: any ControllerClock
    private let metrics: ControllerMetrics
    private let logger: Logger
    private let queues = Mutex(Queues())

    /// - Parameter urlTemplate: checked by `validate(template:)`.
    public init(key: WakeSigningKey, pool: OutboundPool, urlTemplate: String, clock: any ControllerClock, metrics: ControllerMetrics,
                logger: Logger) {
        self.key = key
        self.pool = pool
        self.urlTemplate = urlTemplate
        self.clock = clock
        self.metrics = metrics
        self.logger = logger
    }

    /// Nil when the template is usable: an http(s) URL where only `{namespace}` and `{gateway}`
    /// are substituted (names are Kubernetes names, so what is substituted cannot change the
    /// URL's shape). Without either, every wake goes to one AGC (a single-gateway cluster, a test).
    public static func validate(template: String) -> String? {
        let probe = url(template, namespace: "ns", gateway: "gw")
        guard !probe.contains("{"), !probe.contains("}") else { return "only {namespace} and {gateway} may be substituted" }
        guard let parts = URLComponents(string: probe), let scheme = parts.scheme, ["http", "https"].contains(scheme), parts.host != nil,
            parts.path.isEmpty || parts.path == "/", parts.query == nil
        else { return "must be http(s)://HOST[:PORT] with no path or query" }
        return nil
    }

    static func url(_ template: String, namespace: String, gateway: String) -> String {
        template.replacingOccurrences(of: "{namespace}", with: namespace).replacingOccurrences(of: "{gateway}", with: gateway)
    }

    /// What a wake says of a routed job (pure, for tests).
    public static func job(_ route: Webhook.Route) -> AGCWake.Job {
        AGCWake.Job(runnerGroup: route.runnerGroup, jobID: route.jobID, runID: route.runID, repository: route.repository,
                    jobName: route.jobName, queuedAt: AGCWake.epochSeconds(route.queuedAt))
    }

    /// Returns at once: the job joins its gateway's queue, and a task sends it (with any that
    /// join meanwhile) unless one already does.
    public func wake(_ route: Webhook.Route) {
        let gateway = "\(route.namespace)/\(route.gateway)"
        let start = queues.withLock { queues -> Bool? in
            var entry = queues.waiting[gateway] ?? (false, [])
            guard entry.jobs.count < Self.maxQueuedPerGateway, queues.total < Self.maxQueued else { return nil }
            entry.jobs.append(Self.job(route))
            queues.total += 1
            let start = !entry.sending
            entry.sending = true
            queues.waiting[gateway] = entry
            return start
        }
        switch start {
        case nil: metrics.countWake("dropped")
        case true?: Task { [self] in await drain(gateway, namespace: route.namespace, name: route.gateway) }
        case false?: break
        }
    }

    /// Sends the gateway's waiting jobs, a wake at a time, until none wait.
    private func drain(_ gateway: String, namespace: String, name: String) async {
        while true {
            let jobs = queues.withLock { queues -> [AGCWake.Job] in
                guard var entry = queues.waiting[gateway], !entry.jobs.isEmpty else {
                    queues.waiting[gateway] = nil
                    return []
                }
                let batch = Array(entry.jobs.prefix(AGCWake.maxJobs))
                entry.jobs.removeFirst(batch.count)
                queues.total -= batch.count
                queues.waiting[gateway] = entry
                return batch
            }
            if jobs.isEmpty { return }
            await send(jobs, namespace: namespace, gateway: name)
        }
    }

    private func send(_ jobs: [AGCWake.Job], namespace: String, gateway: String) async {
        let request = AGCWake.Request(namespace: namespace, gateway: gateway, issuedAt: Int64(clock.wallNow().timeIntervalSince1970),
                                      nonce: UUID().uuidString, jobs: jobs)
        let body = AGCWake.body(request)
        var outcome = "failed"
        var detail = "cannot sign"
        if let signature = key.sign(body) {
            let outbound = OutboundRequest(
                method: "POST", url: Self.url(urlTemplate, namespace: namespace, gateway: gateway) + AGCWake.path,
                headers: [("Content-Type", "application/json"), (AGCWake.signatureHeader, AGCWake.signatureHeaderValue(signature))],
                body: body, timeout: Self.timeout, retry: false, maxAttempts: 1)
            do throws(OutboundError) {
                let response = try await pool.send(outbound)
                outcome = response.status == 202 ? "sent" : "refused"
                detail = "status \(response.status)"
            } catch {
                // The pool answers a 4xx/5xx as an error carrying the response.
                outcome = error.response == nil ? "failed" : "refused"
                detail = error.response.map { "status \($0.status)" } ?? error.detail
            }
        }
        metrics.countWake(outcome, jobs: jobs.count)
        var metadata: Logger.Metadata = [
            "namespace": .string(namespace), "gateway": .string(gateway), "jobs": .stringConvertible(jobs.count), "outcome": .string(outcome),
        ]
        if outcome == "sent" {
            logger.debug("agc woken", metadata: metadata)
        } else {
            metadata["error"] = .string(detail)
            logger.warning("agc not woken", metadata: metadata)
        }
    }
}
