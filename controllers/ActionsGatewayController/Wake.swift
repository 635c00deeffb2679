import EgressLoop
import Foundation
import GatewayManager
import GatewayOps
import KubeKit
import Logging

/// When GitHub queued the jobs the GMC woke this AGC for, until each is provisioned: the
/// queue-time metric's start from GitHub's own clock. A classic job message carries no queue
/// time at all (its source would fall back to when it acquired the job), and a scale-set one
/// may not; the webhook's `created_at` fills both.
///
/// A job is named by what both a webhook and a job message carry: repository, run id and the
/// job's display name. Bounded (the oldest entry goes first) and expiring, since most noted
/// jobs are acquired elsewhere (another gateway's group with the same labels, a cancelled run).
/// A value: its owner (`JobLifecycle`, an actor) serializes access.
public struct QueuedTimes: Sendable {
    public static let capacity = 10_000
    /// A job queued longer than this is rare; its entry gives way.
    public static let lifetime: Duration = .seconds(6 * 3600)

    private var times: [String: (queuedAt: Int64, notedAt: Duration)] = [:]
    private var order: [(key: String, notedAt: Duration)] = []
    private var head = 0

    public init() {}

    public var count: Int { times.count }

    static func key(repository: String?, runID: Int64?, jobName: String?) -> String? {
        guard let repository, let runID, let jobName else { return nil }
        return "\(repository.lowercased())\n\(runID)\n\(jobName)"
    }

    public mutating func note(repository: String?, runID: Int64?, jobName: String?, queuedAt: Int64, now: Duration) {
        guard let key = Self.key(repository: repository, runID: runID, jobName: jobName) else { return }
        expire(now: now)
        // Past the bound the oldest entries still held go; records of entries already taken
        // (or noted again since) are skipped, or the bound would not hold.
        while times[key] == nil, times.count >= Self.capacity, head < order.count {
            let oldest = order[head]
            head += 1
            if times[oldest.key]?.notedAt == oldest.notedAt { times[oldest.key] = nil }
        }
        times[key] = (queuedAt, now)
        order.append((key, now))
        if head > 1024, head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    /// The noted queue time of a job, forgotten once taken (one job, one pod).
    public mutating func take(repository: String?, runID: Int64?, jobName: String?, now: Duration) -> Int64? {
        expire(now: now)
        guard let key = Self.key(repository: repository, runID: runID, jobName: jobName) else { return nil }
        return times.removeValue(forKey: key)?.queuedAt
    }

    private mutating func expire(now: Duration) {
        while head < order.count, now - order[head].notedAt >= Self.lifetime {
            // A key noted again later keeps its newer entry.
            if times[order[head].key]?.notedAt == order[head].notedAt { times[order[head].key] = nil }
            head += 1
        }
    }
}

/// `POST /wake` on the AGC's admin port (`AGCWake`): checks a wake from the GMC and hands it
/// to the controller; answers at once (the scale-up and the note run in a task of their own).
///
/// Confined to the admin loop: the replay memory is touched only there, and `AdminServer`
/// calls `handle` on it.
public final class WakeEndpoint: @unchecked Sendable {
    private let key: WakeVerifyKey
    private let namespace: String
    private let gateway: String
    private let controller: ActionsGatewayController
    private let clock: any ControllerClock
    private let logger: Logger
    private var replays = Webhook.ReplayGuard(capacity: 20_000)


    public init(key: WakeVerifyKey, namespace: String, gateway: String, controller: ActionsGatewayController,
                clock: any ControllerClock = SystemControllerClock(), logger: Logger) {
        self.key = key
        self.namespace = namespace
        self.gateway = gateway
        self.controller = controller
        self.clock = clock
        self.logger = logger
    }

    public func handle(_ post: AdminServer.Post, respond: (AdminResponse) -> Void) {
        guard post.path == AGCWake.path else { return respond(AdminResponse(status: 404, body: "not found\n")) }
        let verdict = AGCWake.check(body: post.body, signature: post.headers[AGCWake.signatureHeader], key: key, namespace: namespace,
                                    gateway: gateway, epochSeconds: Int64(clock.wallNow().timeIntervalSince1970), replays: &replays,
                                    now: Instant(nanoseconds: clock.now().nanosecondsClamped))
        guard case .accepted(let request) = verdict else {
            controller.metrics.count("agc_wakes_total", [verdict.label])
            logger.warning("wake refused", metadata: ["outcome": .string(verdict.label)])
            return respond(AdminResponse(status: verdict.status, body: verdict.label + "\n"))
        }
        controller.metrics.count("agc_wakes_total", [verdict.label])
        // Jobs for groups this gateway does not run (renamed, or not started yet) are left out.
        let controller = controller
        let known = request.jobs.filter { controller.hasGroup($0.runnerGroup) }
        let unknown = request.jobs.filter { !controller.hasGroup($0.runnerGroup) }
        if !unknown.isEmpty {
            controller.metrics.count("agc_wake_jobs_unknown_group_total", [], by: Double(unknown.count))
            logger.warning("woken for runner groups this gateway does not run", metadata: [
                "runner_groups": .string(Set(unknown.map(\.runnerGroup)).sorted().joined(separator: ",")), "jobs": .stringConvertible(unknown.count),
            ])
        }
        for job in known {
            logger.info("woken for a queued job", metadata: [
                "runner_group": .string(job.runnerGroup), "workflow_job_id": .stringConvertible(job.jobID),
                "run_id": .string(job.runID.map(String.init) ?? ""), "queued_at": .string(job.queuedAt.map(String.init) ?? ""),
            ])
        }
        if !known.isEmpty { Task { await controller.wake(known) } }
        respond(AdminResponse(status: 202, body: "accepted \(known.count)\n"))
    }
}
