import GatewayOps
import KubeKit
import Synchronization
import Vocabulary

/// The AGC's metrics (spec/agc.md section 7; prefix `agc_`, `runner_group` on every per-group
/// series), shared by the sources, the lifecycle and the admin endpoint.
public final class AGCMetrics: Sendable {
    /// Counters and gauges by family and label set, under the mutex.
    private struct State {
        var counters: [String: [[String]: Double]] = [:]
        var gauges: [String: [[String]: Double]] = [:]
        var histograms: [String: [[String]: Histogram]] = [:]
    }

    /// Label names per family (fixed by the contract).
    struct Family: Sendable {
        var name: String
        var kind: PrometheusWriter.Kind
        var labels: [String]
        var help: String
        init(_ name: String, _ kind: PrometheusWriter.Kind, _ labels: [String], _ help: String) {
            self.name = name
            self.kind = kind
            self.labels = labels
            self.help = help
        }
    }

    /// Job and pod times run from seconds (a warm node) to hours (a long build).
    static let secondsBounds: [Double] = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600]

    static let families: [Family] = [
        Family("agc_jobs_acquired_total", .counter, ["runner_group"], "Jobs GitHub handed to this AGC."),
        Family("agc_jobs_admission_rejected_total", .counter, ["runner_group", "reason"], "Jobs held back by the ceiling or the quota."),
        Family("agc_quota_retries_total", .counter, ["runner_group"], "Worker pod creates the API server refused with exceeded quota."),
        Family("agc_quota_retries_exhausted_total", .counter, ["runner_group"],
               "Jobs whose pod the API server refused on every quota retry (5 x 30 s); still held."),
        Family("agc_jobs_completed_total", .counter, ["runner_group", "result"], "Jobs concluded, by GitHub's result."),
        Family("agc_github_requests_total", .counter, ["runner_group", "endpoint", "code"], "Requests to GitHub by endpoint and status (0 = no response)."),
        Family("agc_token_refreshes_total", .counter, ["result"], "Installation and admin token mints."),
        Family("agc_worker_pods_reaped_total", .counter, ["runner_group", "reason"], "Worker pods the AGC deleted, by why."),
        Family("agc_disruptions_total", .counter, ["runner_group", "cause"], "Worker pods Kubernetes took away, by cause."),
        Family("agc_reruns_total", .counter, ["runner_group", "cause", "outcome"],
               "Automatic re-runs of disrupted jobs: accepted by GitHub, budget exhausted, failed, or withheld (run cancelled)."),
        Family("agc_quota_reclaims_total", .counter, ["runner_group"], "Lower-tier workers deleted to make quota room for a floor-tier job."),
        Family("agc_sessions", .gauge, ["runner_group", "state"], "Queue sessions (scale set) or virtual sessions (classic)."),
        Family("agc_worker_pods", .gauge, ["runner_group", "phase", "tier"], "Worker pods by phase and tier."),
        Family("agc_advertised_capacity", .gauge, ["runner_group"], "The total capacity the group's last poll advertised."),
        Family("agc_capacity_withheld", .gauge, ["runner_group", "reason"], "1 while the ceiling or the quota holds the group's capacity back."),
        Family("agc_github_ratelimit_remaining", .gauge, ["runner_group"], "X-RateLimit-Remaining of the group's last GitHub REST answer."),
        Family("agc_accelerator_seconds_total", .counter, ["runner_group", "resource"],
               "Extended resources (e.g. nvidia.com/gpu) held by running workers, in resource-seconds."),
        Family("agc_jobs_denied_total", .counter, ["runner_group", "reason"],
               "Jobs refused by the group's allowedTeams (not_member, unknown_actor, verification_unavailable, run_denied); their runs are cancelled."),
        Family("agc_team_checks_unavailable_total", .counter, ["runner_group"], "Team checks GitHub did not answer (allowedTeamsOnError decides)."),
        Family("agc_jobs_running_elsewhere_total", .counter, ["runner_group"],
               "Assigned jobs whose runner another AGC runs (a blue/green peer): held, never given a second pod."),
        Family("agc_draining", .gauge, [], "1 while the gateway's drain annotation holds this AGC's groups off GitHub's queues (blue/green cut-over)."),
        Family("agc_wakes_total", .counter, ["outcome"], "Wakes from the GMC's webhook router, by outcome (accepted, bad_signature, stale, replayed, ...)."),
        Family("agc_wake_jobs_unknown_group_total", .counter, [], "Jobs in accepted wakes for runner groups this gateway does not run."),
        Family("agc_job_queue_seconds", .histogram, ["runner_group"], "From GitHub queueing the job (else assigning it) to its worker pod's creation."),
        Family("agc_pod_start_seconds", .histogram, ["runner_group"], "From a worker pod's creation to its runner container running."),
        Family("agc_job_duration_seconds", .histogram, ["runner_group"], "From GitHub assigning the job's runner to its finish (GitHub's times), else from the runner container's start."),
    ]

    public let runner = RunnerMetrics(prefix: "agc_")
    private let state = Mutex(State())

    public init() {}

    public func count(_ family: String, _ labels: [String], by amount: Double = 1) {
        state.withLock { $0.counters[family, default: [:]][labels, default: 0] += amount }
    }

    public func gauge(_ family: String, _ labels: [String], _ value: Double) {
        state.withLock { $0.gauges[family, default: [:]][labels] = value }
    }

    /// Replaces a gauge family whole (per-phase pod counts: phases that emptied disappear).
    public func replaceGauge(_ family: String, _ values: [[String]: Double]) {
        state.withLock { $0.gauges[family] = values }
    }

    public func observe(_ family: String, _ labels: [String], _ value: Double) {
        state.withLock { $0.histograms[family, default: [:]][labels, default: Histogram(bounds: Self.secondsBounds)].observe(max(0, value)) }
    }

    /// A counter's value, for tests and `/jobs`.
    public func value(_ family: String, _ labels: [String]) -> Double {
        state.withLock { $0.counters[family]?[labels] ?? $0.gauges[family]?[labels] ?? 0 }
    }

    public func render() -> String {
        let snapshot = state.withLock { $0 }
        var out = PrometheusWriter()
        runner.write(into: &out)
        for family in Self.families {
            out.family(family.name, family.kind, help: family.help)
            if family.kind == .histogram {
                for (labels, histogram) in (snapshot.histograms[family.name] ?? [:]).sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
                    out.histogram(family.name, labels: Array(zip(family.labels, labels)).map { (key: $0.0, value: $0.1) }, histogram)
                }
                continue
            }
            let series = family.kind == .counter ? snapshot.counters[family.name] : snapshot.gauges[family.name]
            for (labels, value) in (series ?? [:]).sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
                out.sample(family.name, labels: Array(zip(family.labels, labels)), value)
            }
        }
        BuildInfo.write(prefix: "agc", into: &out)
        ProcessMetrics.write(into: &out)
        return out.text
    }
}
