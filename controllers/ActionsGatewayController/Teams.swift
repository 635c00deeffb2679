import Foundation
import GatewayManager
import GitHubKit
import KubeKit
import Logging

/// Team answers (and runs' actors) for `TeamCache.ttl`, positive and negative alike, at most
/// `capacity` of each (the oldest go first): a matrix of 50 jobs from one run costs one
/// lookup of the run and one per team, and a flood of runs costs bounded memory. Pure: the
/// owner (`TeamGate`, an actor) serializes access and passes the time.
public struct TeamCache: Sendable {
    public static let ttl: Duration = .seconds(300)
    public static let capacity = 10_000

    /// An answer and when it was had.
    private struct Entry<Value: Sendable>: Sendable {
        var value: Value
        var at: Duration
    }

    private var members: [String: Entry<Bool>] = [:]
    private var memberOrder: [(key: String, at: Duration)] = []
    private var actors: [String: Entry<String?>] = [:]
    private var actorOrder: [(key: String, at: Duration)] = []

    public init() {}

    public var count: Int { members.count + actors.count }

    public mutating func member(_ user: String, of team: TeamRef, now: Duration) -> Bool? {
        let key = "\(user.lowercased())\n\(team)"
        guard let entry = members[key], now - entry.at < Self.ttl else { return nil }
        return entry.value
    }

    public mutating func remember(_ user: String, of team: TeamRef, member: Bool, now: Duration) {
        let key = "\(user.lowercased())\n\(team)"
        Self.insert(key, Entry(value: member, at: now), into: &members, order: &memberOrder, now: now)
    }

    /// The run's actor: `.some(nil)` is a remembered "nobody".
    public mutating func actor(repository: String, runID: Int64, now: Duration) -> String?? {
        guard let entry = actors["\(repository.lowercased())\n\(runID)"], now - entry.at < Self.ttl else { return nil }
        return .some(entry.value)
    }

    public mutating func remember(actor login: String?, repository: String, runID: Int64, now: Duration) {
        Self.insert("\(repository.lowercased())\n\(runID)", Entry(value: login, at: now), into: &actors, order: &actorOrder, now: now)
    }

    /// Inserts, then trims: expired entries from the front of `order`, and past `capacity` the
    /// oldest (an order record whose entry was since replaced is skipped, not counted).
    private static func insert<Value>(_ key: String, _ entry: Entry<Value>, into table: inout [String: Entry<Value>],
                                      order: inout [(key: String, at: Duration)], now: Duration) {
        table[key] = entry
        order.append((key, now))
        var head = 0
        while head < order.count, now - order[head].at >= ttl || table.count > capacity {
            if table[order[head].key]?.at == order[head].at { table[order[head].key] = nil }
            head += 1
        }
        if head > 0 { order.removeFirst(head) }
    }
}

/// The team policy of runner groups (`allowedTeams`, issue 18 item 2): before a worker pod is
/// made, the run's triggering actor must be an active member of one of the group's teams.
/// Answers are cached (`TeamCache`); a denial cancels the run once, with an audit line, a
/// Warning Event naming the user, the group and the teams, and `agc_jobs_denied_total`.
///
/// When GitHub cannot answer, the group's `allowedTeamsOnError` decides: `allow` runs the job,
/// `deny` (the default) holds it, and after `unavailableDeadline` without an answer denies it
/// (reason `verification_unavailable`): a job never runs on a guess.
public actor TeamGate {
    /// What a source does with the job.
    public enum Decision: Equatable, Sendable {
        case run
        /// Ask again after a while: GitHub did not answer (fail-closed).
        case hold(String)
        /// The run was refused (and cancelled): no pod, not offered again.
        case denied
    }

    /// How the gate reaches GitHub; swapped by tests (no server) and set when the gateway's
    /// API base is known.
    public struct Lookups: Sendable {
        public var actor: @Sendable (_ repository: String, _ runID: Int64) async -> Result<String?, RunAnswer>
        public var membership: @Sendable (_ team: TeamRef, _ user: String) async -> MembershipAnswer
        public var cancel: @Sendable (_ repository: String, _ runID: Int64) async -> RunAnswer

        public init(actor: @escaping @Sendable (String, Int64) async -> Result<String?, RunAnswer>,
                    membership: @escaping @Sendable (TeamRef, String) async -> MembershipAnswer,
                    cancel: @escaping @Sendable (String, Int64) async -> RunAnswer) {
            self.actor = actor
            self.membership = membership
            self.cancel = cancel
        }
    }

    public static let unavailableDeadline: Duration = .seconds(600)

    private var cache = TeamCache()
    /// A group's lookups (its requests are counted under its name).
    private var lookups: (@Sendable (String) -> Lookups)?
    /// Runs this gate denied (and cancelled), so their other jobs and replays are denied
    /// without a second cancel, Event or audit line.
    private var deniedRuns: [String: Duration] = [:]
    private let metrics: AGCMetrics
    private let events: EventRecorder
    private let clock: any ControllerClock
    private let logger: Logger

    public init(metrics: AGCMetrics, events: EventRecorder, clock: any ControllerClock, logger: Logger) {
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.logger = logger
    }

    public func setLookups(_ make: @escaping @Sendable (String) -> Lookups) { lookups = make }

    /// - Parameter waitingSince: when the source first offered this job (the fail-closed deadline's start).
    public func admit(group: DefaultedGateway.Group, jobID: String, repository: String?, runID: Int64?, waitingSince: Duration) async
        -> Decision
    {
        let teams = group.allowedTeams
        guard !teams.isEmpty else { return .run }
        let now = clock.now()
        guard let repository, let runID, let lookups = lookups?(group.name) else {
            return await deny(group: group, jobID: jobID, repository: repository, runID: runID, user: nil, reason: "unknown_actor")
        }
        if deniedRuns["\(repository.lowercased())\n\(runID)"] != nil {
            metrics.count("agc_jobs_denied_total", [group.name, "run_denied"])
            return .denied
        }
        var problem: String?
        let user: String?
        if let cached = cache.actor(repository: repository, runID: runID, now: now) {
            user = cached
        } else {
            switch await lookups.actor(repository, runID) {
            case .success(let login):
                cache.remember(actor: login, repository: repository, runID: runID, now: clock.now())
                user = login
            case .failure(let answer):
                user = nil
                problem = "the run's actor: \(answer)"
            }
        }
        if problem == nil {
            guard let user else { return await deny(group: group, jobID: jobID, repository: repository, runID: runID, user: nil, reason: "unknown_actor") }
            for team in teams {
                if let member = cache.member(user, of: team, now: clock.now()) {
                    if member { return .run }
                    continue
                }
                switch await lookups.membership(team, user) {
                case .active:
                    cache.remember(user, of: team, member: true, now: clock.now())
                    return .run
                case .notMember:
                    cache.remember(user, of: team, member: false, now: clock.now())
                case .unavailable(let detail):
                    problem = "\(team): \(detail)"
                }
            }
            if problem == nil {
                return await deny(group: group, jobID: jobID, repository: repository, runID: runID, user: user, reason: "not_member")
            }
        }
        let detail = problem ?? ""
        metrics.count("agc_team_checks_unavailable_total", [group.name])
        if group.allowedTeamsFailOpen {
            logger.warning("team membership unknown: the job runs (allowedTeamsOnError: allow)", metadata: [
                "runner_group": .string(group.name), "job_id": .string(jobID), "run_id": .string(String(runID)), "error": .string(detail),
            ])
            return .run
        }
        if clock.now() - waitingSince >= Self.unavailableDeadline {
            return await deny(group: group, jobID: jobID, repository: repository, runID: runID, user: user, reason: "verification_unavailable")
        }
        logger.warning("team membership unknown: the job waits", metadata: [
            "runner_group": .string(group.name), "job_id": .string(jobID), "run_id": .string(String(runID)), "error": .string(detail),
        ])
        return .hold("team membership unknown: \(detail)")
    }

    private func deny(group: DefaultedGateway.Group, jobID: String, repository: String?, runID: Int64?, user: String?, reason: String) async
        -> Decision
    {
        metrics.count("agc_jobs_denied_total", [group.name, reason])
        let teams = group.allowedTeams.map(\.description).joined(separator: ",")
        var cancelled = "no run to cancel"
        if let repository, let runID, let lookups = lookups?(group.name) {
            let now = clock.now()
            deniedRuns = deniedRuns.filter { now - $0.value < TeamCache.ttl * 12 }
            if deniedRuns.count < TeamCache.capacity { deniedRuns["\(repository.lowercased())\n\(runID)"] = now }
            switch await lookups.cancel(repository, runID) {
            case .accepted: cancelled = "cancelled"
            case let other: cancelled = "cancel failed: \(other)"
            }
        }
        // The audit line: who, what, why (one per denied run).
        logger.warning("job denied by team policy", metadata: [
            "runner_group": .string(group.name), "job_id": .string(jobID), "run_id": .string(runID.map(String.init) ?? ""),
            "repository": .string(repository ?? ""), "user": .string(user ?? ""), "teams": .string(teams), "reason": .string(reason),
            "run": .string(cancelled),
        ])
        await events.warning("JobDenied", "runner group \(group.name): run \(runID.map(String.init) ?? "?") of \(repository ?? "?") "
                             + "by \(user ?? "an unknown user") denied (\(reason)): allowedTeams \(teams); \(cancelled)")
        return .denied
    }
}
