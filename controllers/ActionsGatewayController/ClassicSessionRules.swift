import GitHubKit
import OutboundPool

/// What a classic session does after each long poll (reference 2.1's heal rules, spec/agc.md
/// section 3), decided without I/O: the source feeds it the poll's outcome and the group's
/// shape and carries out the action, so every rule is tested with no server and no clock.
public enum ClassicSessionRules {
    /// How a poll ended, as the rules see it.
    public enum Outcome: Equatable, Sendable {
        /// 202 (nothing within the hold) or a message type we ignore.
        case idle
        /// 200 with no body: the signature of a session whose single-use agent is gone.
        case empty
        case job(JobRequest)
        /// 401, 403, 404 or 410: the session (or its token) is no longer valid.
        case refused
        /// 429, with the server's Retry-After in seconds if it sent one.
        case throttled(retryAfterSeconds: Int?)
        /// Our own deadline passed before GitHub answered.
        case timedOut
        case cancelled
        /// Anything else: a 5xx, a connection error, a message we cannot read.
        case failed(String)
    }

    /// What the session does next.
    public enum Action: Equatable, Sendable {
        case poll
        case pollAfter(Duration)
        /// A delivery: admission, then acquire (the source's part: it needs the quota).
        case admit(JobRequest)
        /// Delete the session, then a fresh token and session on the same agent (an agent
        /// GitHub rejects is recycled while opening).
        case heal
        /// Delete the session and end the slot (idle above the baseline).
        case exit
        /// Delete the session, back off, open again.
        case fail(String)
    }

    /// What a session carries from one poll to the next.
    public struct Counters: Equatable, Sendable {
        /// Polls in a row that brought nothing.
        public var idle = 0
        /// 200-empty answers in a row.
        public var empties = 0
        public init() {}
    }

    /// The group around the session when it decides.
    public struct Group: Equatable, Sendable {
        /// Slots open (polling or between polls).
        public var sessions: Int
        /// `max(minListeners, 1)`: the group never drops below it, and never loses its last poller.
        public var baseline: Int
        /// Slots with an open broker session.
        public var polling: Int
        public init(sessions: Int, baseline: Int, polling: Int) {
            self.sessions = sessions
            self.baseline = baseline
            self.polling = polling
        }
    }

    /// Empty polls in a row after which a session above the baseline exits.
    public static let idleThreshold = 50
    /// 200-empty answers in a row after which the session is rebuilt.
    public static let emptyThreshold = 3
    /// The pause between 200-empty answers (GitHub answers them at once).
    public static let emptyPause: Duration = .milliseconds(100)

    public static func next(_ outcome: Outcome, counters: inout Counters, group: Group) -> Action {
        switch outcome {
        case .idle:
            counters.idle += 1
            counters.empties = 0
            let aboveBaseline = group.sessions > group.baseline && group.polling > 1
            return counters.idle >= idleThreshold && aboveBaseline ? .exit : .poll
        case .empty:
            counters.empties += 1
            return counters.empties >= emptyThreshold ? .heal : .pollAfter(emptyPause)
        case .job(let request):
            counters = Counters()
            return .admit(request)
        case .refused:
            return .heal
        case .throttled(let seconds):
            return .pollAfter(.seconds(min(max(seconds ?? 30, 1), 300)))
        case .timedOut:
            return .poll  // a client-side deadline is retried at once
        case .cancelled:
            return .exit
        case .failed(let why):
            return .fail(why)
        }
    }

    /// Maps a poll's result onto the rules' vocabulary.
    public static func outcome(_ result: Result<BrokerPoll, any Error>) -> Outcome {
        switch result {
        case .success(.idle), .success(.other): return .idle
        case .success(.empty): return .empty
        case .success(.job(let request)): return .job(request)
        case .failure(let error as OutboundError):
            switch error.kind {
            case .http(401), .http(403), .http(404), .http(410): return .refused
            case .http(429): return .throttled(retryAfterSeconds: error.response?.retryAfterSeconds)
            case .timeout: return .timedOut
            case .cancelled: return .cancelled
            default: return .failed("\(error)")
            }
        case .failure(let error): return .failed("\(error)")
        }
    }
}
