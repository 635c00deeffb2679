import Foundation
import KubeKit
import Logging
import OutboundPool
import Synchronization

/// Sends the wakes the webhook router decided (`AGCWake`): one signed `POST /wake` to the
/// routed gateway's AGC, through its Service, off the router's loop.
///
/// Best effort, by design: a wake only hastens what the AGC does anyway (a classic group's
/// sessions find queued jobs by their own long polls, and a job's queue time falls back to
/// when the AGC acquired it), so a wake is sent once with a short deadline, never retried,
/// and dropped when too many are in flight; every wake is counted by its outcome. Safe from
/// any thread.
public final class AGCWaker: Sendable {
    /// The `outcome` labels of `gmc_agc_wakes_total`.
    public static let outcomes = ["sent", "refused", "failed", "dropped"]
    /// Wakes in flight at once; past it a wake is dropped (a flood of deliveries must not
    /// become a flood of held connections).
    public static let maxInFlight = 256
    public static let timeout: Duration = .seconds(3)
    /// The AGC's admin endpoint through the Service the GMC renders for it (`<gateway>-agc`).
    public static let defaultURLTemplate = "http://{gateway}-agc.{namespace}.svc:\(DesiredState.agcAdminPort)"

    private let key: WakeSigningKey
    private let pool: OutboundPool
    private let urlTemplate: String
    private let clock: any ControllerClock
    private let metrics: ControllerMetrics
    private let logger: Logger
    private let inFlight = Mutex(0)

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

    /// The request for a routed job (pure, for tests).
    public static func request(_ route: Webhook.Route, delivery: String, epochSeconds: Int64) -> AGCWake.Request {
        AGCWake.Request(namespace: route.namespace, gateway: route.gateway, runnerGroup: route.runnerGroup, jobID: route.jobID,
                        runID: route.runID, repository: route.repository, jobName: route.jobName,
                        queuedAt: AGCWake.epochSeconds(route.queuedAt), issuedAt: epochSeconds, nonce: "\(delivery)/\(route.jobID)")
    }

    /// Returns at once; the wake is sent by a task of its own.
    public func wake(_ route: Webhook.Route, delivery: String) {
        let admitted = inFlight.withLock { count -> Bool in
            guard count < Self.maxInFlight else { return false }
            count += 1
            return true
        }
        guard admitted else {
            metrics.countWake("dropped")
            return
        }
        let request = Self.request(route, delivery: delivery, epochSeconds: Int64(clock.wallNow().timeIntervalSince1970))
        let body = AGCWake.body(request)
        guard let signature = key.sign(body) else {
            inFlight.withLock { $0 -= 1 }
            metrics.countWake("failed")
            return
        }
        let outbound = OutboundRequest(
            method: "POST", url: Self.url(urlTemplate, namespace: route.namespace, gateway: route.gateway) + AGCWake.path,
            headers: [("Content-Type", "application/json"), (AGCWake.signatureHeader, AGCWake.signatureHeaderValue(signature))],
            body: body, timeout: Self.timeout, retry: false, maxAttempts: 1)
        Task { [self] in
            defer { inFlight.withLock { $0 -= 1 } }
            let outcome: String
            var detail = ""
            do throws(OutboundError) {
                let response = try await pool.send(outbound)
                outcome = response.status == 202 ? "sent" : "refused"
                if outcome == "refused" { detail = "status \(response.status)" }
            } catch {
                // The pool answers a 4xx/5xx as an error carrying the response.
                outcome = error.response == nil ? "failed" : "refused"
                detail = error.response.map { "status \($0.status)" } ?? error.detail
            }
            metrics.countWake(outcome)
            var metadata: Logger.Metadata = [
                "namespace": .string(route.namespace), "gateway": .string(route.gateway), "runner_group": .string(route.runnerGroup),
                "workflow_job_id": .stringConvertible(route.jobID), "outcome": .string(outcome),
            ]
            if outcome == "sent" {
                logger.debug("agc woken", metadata: metadata)
            } else {
                metadata["error"] = .string(detail)
                logger.warning("agc not woken", metadata: metadata)
            }
        }
    }
}
