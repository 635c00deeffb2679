import KubeKit

/// What the AGC knows of one runner group at a moment, gathered from the lifecycle (pods,
/// reservations, holds) and the group's source (session, rate limit): the input of the pure
/// status plan.
public struct GroupFacts: Sendable, Equatable {
    public var name: String
    public var acquisition: String
    public var activeSessions = 0
    public var runningJobs = 0
    /// Acquired and waiting for a running worker: reservations and Pending pods.
    public var pendingJobs = 0
    /// GitHub's own count of the group's queued jobs, when the last delivery said it.
    public var queuedAtGitHub: Int?
    /// When the group last got a worker pod (RFC 3339), if ever since this AGC started.
    public var lastJobAt: String?
    /// Why the group's capacity is held back by a quota now, if it is.
    public var quotaHold: Hold?
    /// Worker pods the scheduler refused (PodScheduled=False, Unschedulable).
    public var unschedulable = 0
    /// How long GitHub has answered this group's requests with 429 without a success between.
    public var rateLimitedFor: Duration?
    /// The last bootstrap or poll failure GitHub answered with 401/403, if the last attempt failed so.
    public var authFailure: String?
    /// classic: GitHub refused the sessions' runner version (below its floor), with its words.
    public var versionRefused: String?
    /// classic: jobs whose lock this AGC renews (a pod in progress, or one held before its pod).
    public var locksHeld = 0

    public init(name: String, acquisition: String) {
        self.name = name
        self.acquisition = acquisition
    }
}

/// A condition of the ActionsGateway before timestamps.
public struct GatewayCondition: Sendable, Equatable {
    public var type: String
    public var status: String
    public var reason: String
    public var message: String
}

/// The AGC's share of the ActionsGateway's status (spec/agc.md section 7): `runnerGroups[]` and
/// the condition types it owns. The GMC writes the same `conditions` list, and a merge patch
/// replaces lists whole, so the plan sends the full list (ours, then everyone else's untouched)
/// with the resourceVersion it read: a concurrent GMC write makes ours a 409, retried later.
public enum AGCStatus {
    /// The condition types the AGC writes; every other type belongs to the GMC.
    public static let ownedConditions: Set<String> = ["RateLimited", "GitHubAuthenticated", "WorkersUnschedulable", "WorkerQuotaExceeded", "Drained"]
    /// Sustained 429s for this long set `RateLimited`.
    public static let rateLimitedAfter: Duration = .seconds(600)

    /// The AGC's conditions from the facts. `tokenFailure`: the controller's last installation
    /// token mint failed with this (nil: it succeeded). `drain`: what the gateway's drain
    /// annotation asks for (`Drained`).
    public static func conditions(_ groups: [GroupFacts], tokenFailure: String?, drain: Drain.Request = .serve) -> [GatewayCondition] {
        func describe(_ entries: [String]) -> String { entries.joined(separator: "; ") }
        let auth = (tokenFailure.map { ["installation token: \($0)"] } ?? [])
            + groups.compactMap { group in group.authFailure.map { "group \(group.name): \($0)" } }
        // A session refused for its runner version cannot authenticate either; the reason says which.
        let versions = groups.compactMap { group in group.versionRefused.map { "group \(group.name): runner version refused: \($0)" } }
        let limited = groups.filter { ($0.rateLimitedFor ?? .zero) >= rateLimitedAfter }
        let unschedulable = groups.filter { $0.unschedulable > 0 }
        let quota = groups.filter { $0.quotaHold != nil }
        return [
            auth.isEmpty && versions.isEmpty
                ? GatewayCondition(type: "GitHubAuthenticated", status: "True", reason: "TokenMinted", message: "")
                : GatewayCondition(type: "GitHubAuthenticated", status: "False", reason: auth.isEmpty ? "RunnerVersionTooOld" : "Unauthorized",
                                   message: describe(auth + versions)),
            limited.isEmpty
                ? GatewayCondition(type: "RateLimited", status: "False", reason: "WithinLimits", message: "")
                : GatewayCondition(type: "RateLimited", status: "True", reason: "SustainedThrottling",
                                   message: describe(limited.map { "group \($0.name): 429 for \(Int(($0.rateLimitedFor ?? .zero).components.seconds)) s" })),
            unschedulable.isEmpty
                ? GatewayCondition(type: "WorkersUnschedulable", status: "False", reason: "Scheduled", message: "")
                : GatewayCondition(type: "WorkersUnschedulable", status: "True", reason: "Unschedulable",
                                   message: describe(unschedulable.map { "group \($0.name): \($0.unschedulable) pod(s) cannot be scheduled" })),
            quota.isEmpty
                ? GatewayCondition(type: "WorkerQuotaExceeded", status: "False", reason: "WithinQuota", message: "")
                : GatewayCondition(type: "WorkerQuotaExceeded", status: "True", reason: "QuotaExhausted",
                                   message: describe(quota.map { "group \($0.name): \($0.quotaHold?.description ?? "quota")" })),
            Drain.condition(drain, groups: groups),
        ]
    }

    /// The merge patch that makes the gateway's status say `groups` and `conditions`, or nil
    /// when it already does (so a steady state writes nothing). A condition keeps its
    /// `lastTransitionTime` while its status stays; conditions other writers own are kept, in
    /// their order. `now` is RFC 3339.
    public static func patch(gateway: JSONObject, groups: [GroupFacts], conditions: [GatewayCondition], now: String) -> JSONObject? {
        let status = gateway["status"] as? JSONObject ?? [:]
        let existing = (status["conditions"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        let generation = (gateway["metadata"] as? JSONObject)?["generation"] as? Int64 ?? 0
        var rendered: [any Sendable] = []
        var changed = false
        for condition in conditions {
            let previous = existing.first { $0["type"] as? String == condition.type }
            let same = previous?["status"] as? String == condition.status
            if !same || previous?["reason"] as? String != condition.reason || previous?["message"] as? String != condition.message {
                changed = true
            }
            rendered.append([
                "type": condition.type, "status": condition.status, "reason": condition.reason, "message": condition.message,
                "observedGeneration": generation,
                "lastTransitionTime": same ? (previous?["lastTransitionTime"] as? String ?? now) : now,
            ] as JSONObject)
        }
        rendered += existing.filter { !ownedConditions.contains($0["type"] as? String ?? "") } as [any Sendable]
        let lines: [any Sendable] = groups.sorted { $0.name < $1.name }.map { group -> JSONObject in
            var line: JSONObject = [
                "name": group.name, "acquisition": group.acquisition, "activeSessions": Int64(group.activeSessions),
                "runningJobs": Int64(group.runningJobs), "pendingJobs": Int64(group.pendingJobs),
            ]
            if let queued = group.queuedAtGitHub { line["queuedAtGitHub"] = Int64(queued) }
            if let last = group.lastJobAt { line["lastJobAt"] = last }
            return line
        }
        if !changed, let current = status["runnerGroups"], jsonContains(current, lines), jsonContains(lines, current) { return nil }
        var metadata: JSONObject = [:]
        if let version = (gateway["metadata"] as? JSONObject)?["resourceVersion"] as? String { metadata["resourceVersion"] = version }
        return ["metadata": metadata, "status": ["runnerGroups": lines, "conditions": rendered] as JSONObject]
    }
}
