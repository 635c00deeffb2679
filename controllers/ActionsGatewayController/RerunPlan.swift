import GitHubKit

/// The re-run budget and the re-runs in flight of one gateway: what ConfigMap
/// `<gateway>-retries` holds (key `retries.json`), so neither a budget nor a pending re-run is
/// lost when the AGC restarts (GAG keeps both in memory). Every change is a pure function here;
/// `Recovery` reads, applies one and writes back under the resourceVersion it read.
public struct RetryLedger: Codable, Equatable, Sendable {
    /// One workflow run's budget: re-runs spent, when last touched (epoch seconds), and the
    /// uids of the pods whose disruption was already counted (at most one recovery per pod).
    public struct Run: Codable, Equatable, Sendable {
        public var spent: Int
        public var at: Int64
        public var pods: [String]
    }

    /// A re-run not finished yet (one per run: a second disruption of the same run while one
    /// is pending joins it, since `rerun-failed-jobs` re-runs every failed job of the run).
    public struct Pending: Codable, Equatable, Sendable {
        public var runID: Int64
        public var repository: String
        public var cause: DisruptionCause
        public var group: String
        public var pods: [String]
        /// Next call at (epoch seconds).
        public var due: Int64
        /// The window's end: the first call plus 15 min.
        public var deadline: Int64
        public var attempts: Int
        /// The last run read failed (transport or 5xx): if the window closes, the failure
        /// reason is `conclusion_unknown`.
        public var statusUnknown: Bool
        /// Classic, never started: force-cancel first (done when true).
        public var cancelled: Bool?
        /// Classic, never started: re-run only once a later pod of the group is scheduled;
        /// the epoch second after which such a pod must have been created.
        public var waitScheduledAfter: Int64?
    }

    public var runs: [String: Run] = [:]
    public var pending: [String: Pending] = [:]

    public init() {}

    /// The pacing of reference section 4.3: 5 s before the first call, then every 30 s while
    /// GitHub answers "already running", for up to 15 min.
    public static let delay: Int64 = 5
    public static let interval: Int64 = 30
    public static let window: Int64 = 900
    /// Classic never-started runs wait up to 30 min for capacity to come back.
    public static let scheduledWait: Int64 = 1800
    /// A budget entry untouched this long is dropped (a run is not re-run a day later).
    public static let ttl: Int64 = 86_400

    /// What taking in a disruption came to.
    public enum Admission: Equatable, Sendable {
        /// This pod's disruption was counted before (a resync, or a restart).
        case alreadyHandled
        /// No run to re-run (the pod never learned its run id, or an invalid repository).
        case identityUnknown
        /// The budget is spent: no re-run.
        case exhausted(spent: Int)
        /// A re-run of this run is pending already: this pod joins it.
        case joined
        /// A re-run is scheduled.
        case scheduled
    }

    /// Takes in one disruption: at most one recovery per pod uid, one budget per run across
    /// causes (a reclaim spends none), one pending re-run per run.
    /// - Parameter start: when the 5 s delay starts (default `now`): the caller's clock
    ///   rounded up, so the delay is never cut short by a second's fraction.
    public mutating func admit(_ disruption: Disruption, budget: Int, now: Int64, start: Int64? = nil) -> Admission {
        guard let runID = disruption.runID, runID > 0, let repository = disruption.repository, RunsClient.validRepository(repository)
        else { return .identityUnknown }
        let key = String(runID)
        var run = runs[key] ?? Run(spent: 0, at: now, pods: [])
        if run.pods.contains(disruption.uid) { return .alreadyHandled }
        run.pods.append(disruption.uid)
        run.at = now
        defer { runs[key] = run }
        if var entry = pending[key] {
            entry.pods.append(disruption.pod)
            pending[key] = entry
            return .joined
        }
        if disruption.cause.spendsBudget {
            guard run.spent < budget else { return .exhausted(spent: run.spent) }
            run.spent += 1
        }
        let abandonedClassic = disruption.cause == .abandoned && disruption.acquisition == "classic"
        let due = max(now, start ?? now) + Self.delay
        pending[key] = Pending(
            runID: runID, repository: repository, cause: disruption.cause, group: disruption.group, pods: [disruption.pod],
            due: due, deadline: due + (abandonedClassic ? Self.scheduledWait : Self.window), attempts: 0, statusUnknown: false,
            cancelled: abandonedClassic ? false : nil, waitScheduledAfter: abandonedClassic ? now : nil)
        return .scheduled
    }

    /// Drops budgets nobody touched for `ttl` (never one with a re-run pending).
    public mutating func expire(now: Int64) {
        runs = runs.filter { key, run in pending[key] != nil || now - run.at < Self.ttl }
    }
}

/// One step of a pending re-run, decided from the entry, the time and GitHub's last answer.
/// Pure, so the whole 403 window and its end are tested on plain numbers.
public enum RerunPlan {
    /// What to call next.
    public enum Call: Equatable, Sendable {
        /// `GET` the run (cause `deletion`: a run concluded `cancelled` is not re-run).
        case readRun
        case rerun
        case forceCancel
        /// Classic never-started: wait until a later pod of the group is scheduled.
        case awaitScheduled
    }

    /// How a re-run ended (`agc_reruns_total{outcome}`; `failed` carries the reason).
    public enum Outcome: Equatable, Sendable {
        case accepted
        case withheld(String)
        case failed(String)

        public var label: String {
            switch self {
            case .accepted: "accepted"
            case .withheld: "withheld"
            case .failed: "failed"
            }
        }
    }

    public enum Next: Equatable, Sendable {
        case call(Call)
        /// Try again at this epoch second.
        case retry(at: Int64)
        case finish(Outcome)
    }

    /// The first call due for `entry` (its `due` has come).
    public static func first(_ entry: RetryLedger.Pending) -> Call {
        if entry.cancelled == false { return .forceCancel }
        if entry.waitScheduledAfter != nil { return .awaitScheduled }
        return entry.cause == .deletion ? .readRun : .rerun
    }

    /// After `call` got `answer` at `now`: the next step, and the entry as it must be saved.
    public static func next(_ entry: inout RetryLedger.Pending, after call: Call, answer: RunAnswer, now: Int64) -> Next {
        entry.attempts += call == .rerun ? 1 : 0
        func later() -> Next {
            let at = now + RetryLedger.interval
            guard at <= entry.deadline else {
                if entry.waitScheduledAfter != nil { return .finish(.failed("capacity_never_returned")) }
                return .finish(.failed(entry.statusUnknown ? "conclusion_unknown" : "run_never_concluded"))
            }
            entry.due = at
            return .retry(at: at)
        }
        switch (call, answer) {
        case (.readRun, .run(let status, let conclusion)):
            entry.statusUnknown = false
            if status == "completed" && conclusion == "cancelled" { return .finish(.withheld("run_cancelled")) }
            return .call(.rerun)
        case (.readRun, .unavailable):
            entry.statusUnknown = true
            return later()
        case (.rerun, .accepted):
            return .finish(.accepted)
        case (.rerun, .alreadyRunning), (.rerun, .unavailable):
            // Not concluded yet, or no answer: both are worth another try inside the window
            // (GAG gives up on a transport error; a blip should not cost a job).
            return later()
        case (.forceCancel, .accepted):
            entry.cancelled = true
            return .call(.awaitScheduled)
        case (.forceCancel, .unavailable):
            return later()
        case (.awaitScheduled, .accepted):
            // A later pod of the group was scheduled: capacity is back.
            entry.waitScheduledAfter = nil
            entry.deadline = now + RetryLedger.window
            return .call(.rerun)
        case (.awaitScheduled, _):
            return later()
        default:
            return .finish(.failed("api_error"))
        }
    }
}
