import GitHubKit
import KubeKit
import Vocabulary

/// Why a worker's job did not run to its end, as spec/agc.md section 5 tells them apart from
/// the pod alone (reference section 4.1). The raw value is the `cause` label of
/// `agc_disruptions_total` and `agc_reruns_total`.
public enum DisruptionCause: String, Sendable, Codable, CaseIterable {
    case eviction
    case preemption
    case oom
    case nodeLost = "node_lost"
    case drain
    case deletion
    case abandoned
    /// Our own reclaim of a lower tier's quota for a floor job: re-run, outside the budget.
    case quotaReclaimed = "quota_reclaimed"

    /// Whether a re-run of this cause spends the run's budget.
    public var spendsBudget: Bool { self != .quotaReclaimed }
}

/// The recovery facts of one worker pod: who it was, which job it ran, and why it ended.
public struct Disruption: Sendable, Equatable, Codable {
    public var cause: DisruptionCause
    public var pod: String
    public var uid: String
    public var group: String
    public var jobID: String?
    /// GitHub's workflow run (annotation `run-id`); nil or 0 when the pod never learned it.
    public var runID: Int64?
    public var repository: String?
    /// `scaleSet` or `classic` (annotation `acquisition`).
    public var acquisition: String

    /// What the pod shows, or nil when nothing is to be recovered (the job ran to its end, or
    /// is still running, or the AGC deleted it for a reason of its own).
    /// - Parameters:
    ///   - gone: the pod was deleted from the API (a DELETED event: `pod` is its last state).
    ///   - retryOOMKilled: the group's setting (an OOMKilled runner is re-run only then).
    /// Order matters where several apply: our own deletion mark first, then the scheduler's and
    /// the control plane's DisruptionTarget reasons (which say why a later deletion or failure
    /// happened), the kubelet's eviction, an OOM kill, and last a plain deletion.
    public static func classify(_ pod: Pod, gone: Bool, retryOOMKilled: Bool) -> Disruption? {
        guard let cause = cause(pod, gone: gone, retryOOMKilled: retryOOMKilled), let name = pod.metadata.name,
            let uid = pod.metadata.uid, let group = pod.metadata.labels?[WorkerLabels.group]
        else { return nil }
        let annotations = pod.metadata.annotations ?? [:]
        return Disruption(
            cause: cause, pod: name, uid: uid, group: group,
            jobID: annotations[WorkerLabels.jobID] ?? pod.metadata.labels?[WorkerLabels.jobID],
            runID: annotations[WorkerLabels.runID].flatMap { Int64($0) }, repository: annotations[WorkerLabels.repository],
            acquisition: annotations[WorkerLabels.acquisition] ?? "scaleSet")
    }

    static func cause(_ pod: Pod, gone: Bool, retryOOMKilled: Bool) -> DisruptionCause? {
        if let reason = pod.metadata.annotations?[WorkerLabels.deletionReason] {
            return reason == DeletionReason.quotaReclaimed ? .quotaReclaimed : nil
        }
        let target = pod.status?.conditions?.first { $0.type == "DisruptionTarget" && $0.status == "True" }?.reason
        switch target {
        case "PreemptionByScheduler": return .preemption
        case "DeletionByTaintManager", "DeletionByPodGC": return .nodeLost
        case "EvictionByEvictionAPI", "TerminationByKubelet": return .drain
        default: break
        }
        let containers = pod.status?.containerStatuses ?? []
        let started = containers.contains { $0.state?.running != nil || $0.state?.terminated != nil }
        if pod.status?.phase == "Failed" && pod.status?.reason == "Evicted" { return .eviction }
        if retryOOMKilled, pod.isTerminal || gone, containers.contains(where: { $0.state?.terminated?.reason == "OOMKilled" }) {
            return .oom
        }
        let deleting = gone || pod.metadata.deletionTimestamp != nil
        guard deleting else { return nil }
        guard started else { return .abandoned }
        // Gone with a container still running (a forced deletion: no exit record will come),
        // or with one that finished only after the deletion was asked for (deletionTimestamp
        // less the grace period): the deletion ended the job. While the grace period runs,
        // the kubelet's exit record is awaited. A pod that had already finished and was
        // deleted afterwards is not a disruption.
        if containers.contains(where: { $0.state?.running != nil }) { return gone ? .deletion : nil }
        guard let deletedAt = pod.metadata.deletionTimestamp.flatMap(ISO8601.epochSeconds) else { return nil }
        let requested = deletedAt - (pod.metadata.deletionGracePeriodSeconds ?? 0)
        let finished = containers.compactMap { $0.state?.terminated?.finishedAt.flatMap(ISO8601.epochSeconds) }.max()
        guard let finished, requested <= finished else { return nil }
        // A runner that exited 0 after a deletion still finished its job (a graceful stop
        // between jobs); only a job cut short is re-run.
        if pod.status?.phase == "Succeeded" { return nil }
        return .deletion
    }
}

/// The values of `deletion-reason` the AGC stamps before it deletes a worker.
public enum DeletionReason {
    public static let quotaReclaimed = "quota-reclaimed"
    /// A classic job whose lock GitHub no longer renews.
    public static let jobAbandoned = "job_abandoned"
}
