import Foundation
import OutboundPool
import Vocabulary

// GitHub's runner-scale-set wire types (reference/agc-protocol.md section 2.2): only the fields
// the AGC reads, every optional one optional, so a field GitHub adds or drops never fails a decode.

/// `RunnerScaleSet`: a named queue of jobs whose `runs-on` matches its labels.
public struct RunnerScaleSet: Codable, Sendable, Equatable {
    /// One label; the first is the set's own name.
    public struct Label: Codable, Sendable, Equatable {
        public var name: String
        public var type: String?
        public init(name: String, type: String? = "System") {
            self.name = name
            self.type = type
        }
    }

    public var id: Int
    public var name: String
    public var runnerGroupId: Int?
    public var labels: [Label]?
}

/// The scale set's counters as GitHub reports them; `totalAssignedJobs` includes running jobs.
public struct ScaleSetStatistics: Codable, Sendable, Equatable {
    public var totalAvailableJobs: Int?
    public var totalAcquiredJobs: Int?
    public var totalAssignedJobs: Int?
    public var totalRunningJobs: Int?
    public var totalRegisteredRunners: Int?
    public var totalBusyRunners: Int?
    public var totalIdleRunners: Int?
}

/// A message-queue session: the queue's URL and the token that reads it (never the admin token).
public struct ScaleSetSession: Codable, Sendable, Equatable {
    public var sessionId: String
    public var ownerName: String?
    public var messageQueueUrl: String
    public var messageQueueAccessToken: String
    public var statistics: ScaleSetStatistics?
}

/// One queue delivery; `body` is a JSON array of `JobMessage`, as a string.
public struct QueueMessage: Codable, Sendable, Equatable {
    public var messageId: Int64
    public var messageType: String
    public var body: String?
    public var statistics: ScaleSetStatistics?

    /// The job messages inside (none for another message type, or an empty body).
    public func jobMessages() throws -> [JobMessage] {
        guard messageType == "RunnerScaleSetJobMessages", let body, !body.isEmpty else { return [] }
        return try JSONDecoder().decode([JobMessage].self, from: Data(body.utf8))
    }
}

/// `JobAssigned`, `JobStarted`, `JobCompleted` (and `JobAvailable` on GHES).
public struct JobMessage: Codable, Sendable, Equatable {
    public var messageType: String
    /// GitHub's job UUID, stable across replays.
    public var jobId: String
    public var runnerRequestId: Int64?
    public var runnerId: Int64?
    public var runnerName: String?
    public var result: String?
    public var ownerName: String?
    public var repositoryName: String?
    public var workflowRunId: Int64?
    public var jobDisplayName: String?
    public var jobWorkflowRef: String?
    /// GitHub's timestamps (RFC 3339; the zero time `0001-01-01T00:00:00Z` when unset, which
    /// `queueTime` is in practice): see `time(_:)`.
    public var queueTime: String?
    public var scaleSetAssignTime: String?
    public var runnerAssignTime: String?
    public var finishTime: String?

    public init(messageType: String, jobId: String, runnerName: String? = nil, result: String? = nil, ownerName: String? = nil,
                repositoryName: String? = nil, workflowRunId: Int64? = nil, jobDisplayName: String? = nil, jobWorkflowRef: String? = nil) {
        self.messageType = messageType
        self.jobId = jobId
        self.runnerName = runnerName
        self.result = result
        self.ownerName = ownerName
        self.repositoryName = repositoryName
        self.workflowRunId = workflowRunId
        self.jobDisplayName = jobDisplayName
        self.jobWorkflowRef = jobWorkflowRef
    }

    /// Epoch seconds of one of GitHub's timestamps; nil when absent, unparseable or the zero time.
    public static func time(_ text: String?) -> Int64? {
        guard let text, let seconds = ISO8601.epochSeconds(text), seconds > 0 else { return nil }
        return seconds
    }

    /// When GitHub queued the job, else when it reached the scale set.
    public var queuedAt: Int64? { Self.time(queueTime) ?? Self.time(scaleSetAssignTime) }

    /// `owner/repo`, when both halves are known.
    public var repository: String? {
        guard let ownerName, let repositoryName, !ownerName.isEmpty, !repositoryName.isEmpty else { return nil }
        return "\(ownerName)/\(repositoryName)"
    }
}

/// A runner's just-in-time configuration: the only credential that reaches a worker pod.
public struct JITConfig: Codable, Sendable, Equatable {
    /// The runner record GitHub registered for it.
    public struct Runner: Codable, Sendable, Equatable {
        public var id: Int64
        public var name: String
    }

    public var runner: Runner
    public var encodedJITConfig: String
}

/// Where a gateway's runners register: an organisation, or one repository.
public struct GitHubScope: Sendable, Equatable {
    /// The `gitHubURL` itself (what `runner-registration` is told).
    public var url: String
    /// `orgs/ORG` or `repos/OWNER/REPO`, the REST path prefix.
    public var restPrefix: String

    /// - Parameter gitHubURL: `https://HOST/ORG` or `https://HOST/OWNER/REPO` (the GMC has
    ///   already validated it). Nil for anything else.
    public init?(gitHubURL: String) {
        guard let url = URL(string: gitHubURL), url.host != nil else { return nil }
        let segments = url.path.split(separator: "/").map(String.init)
        switch segments.count {
        case 1: restPrefix = "orgs/\(segments[0])"
        case 2: restPrefix = "repos/\(segments[0])/\(segments[1])"
        default: return nil
        }
        self.url = gitHubURL
    }
}

/// The scale-set client: bootstrap (registration token, then the `runner-registration` admin
/// token, re-minted lazily 60 s before its real `exp`), the Actions Service calls, and the
/// message queue. Requests are never retried here: the caller owns backoff, so every attempt
/// is visible to it (and counted by `onRequest`).
public actor ScaleSetClient {
    /// The admin connection: the Actions Service base and its JWT.
    struct Admin {
        var url: String
        var token: String
        var expiresAt: Int64
    }

    private let apiBase: String
    private let scope: GitHubScope
    private let tokens: InstallationTokens
    private let pool: OutboundPool
    private let now: @Sendable () -> Int64
    /// Called after every request with the endpoint name, the status (0 = no response) and
    /// the answer's `X-RateLimit-Remaining` when it had one (REST calls do; the queue does not).
    private let onRequest: @Sendable (String, Int, Int?) -> Void
    private var admin: Admin?
    public private(set) var adminMints = 0

    public init(apiBase: String, scope: GitHubScope, tokens: InstallationTokens, pool: OutboundPool,
                now: @escaping @Sendable () -> Int64, onRequest: @escaping @Sendable (String, Int, Int?) -> Void = { _, _, _ in }) {
        self.apiBase = apiBase
        self.scope = scope
        self.tokens = tokens
        self.pool = pool
        self.now = now
        self.onRequest = onRequest
    }

    /// Sends and counts one request; non-2xx comes back as `OutboundError(.http(code))`.
    private func send(_ endpoint: String, _ method: String, _ url: String, headers: [(name: String, value: String)],
                      body: [UInt8]? = nil, timeout: Duration = .seconds(30)) async throws -> OutboundResponse {
        var headers = headers
        headers.append(("Accept", "application/json"))
        if body != nil { headers.append(("Content-Type", "application/json")) }
        return try await GitHubRequest.send(OutboundRequest(method: method, url: url, headers: headers, body: body, timeout: timeout,
                                                            retry: false), endpoint: endpoint, pool: pool, onRequest: onRequest)
    }

    // MARK: bootstrap

    /// The admin token, minted when there is none or it is within 60 s of its `exp`.
    func adminConnection() async throws -> Admin {
        if let admin, admin.expiresAt - now() > 60 { return admin }
        let installation = try await tokens.token()
        /// `{"token", "expires_at"}` of the registration-token response.
        struct Registration: Decodable { var token: String }
        let registration = try JSONDecoder().decode(Registration.self, from: Data(try await send(
            "registration_token", "POST", "\(apiBase)/\(scope.restPrefix)/actions/runners/registration-token",
            headers: [("Authorization", "Bearer \(installation.value)"), ("X-GitHub-Api-Version", "2022-11-28")], body: []).body))
        /// `{"url", "token"}` of the runner-registration response.
        struct Connection: Decodable {
            var url: String?
            var token: String?
        }
        let body = try JSONEncoder().encode(["url": scope.url, "runner_event": "register"])
        let connection = try JSONDecoder().decode(Connection.self, from: Data(try await send(
            "runner_registration", "POST", "\(apiBase)/actions/runner-registration",
            headers: [("Authorization", "RemoteAuth \(registration.token)")], body: Array(body)).body))
        guard let url = connection.url, !url.isEmpty, let token = connection.token, !token.isEmpty else {
            throw OutboundError(kind: .other, detail: "runner-registration answered without url or token")
        }
        guard GitHubURLs.allowed(url) else { throw OutboundError(kind: .other, detail: "refused Actions Service URL \(url)") }
        // An `exp` that cannot be read counts as expired: the next call mints again.
        let fresh = Admin(url: url.hasSuffix("/") ? String(url.dropLast()) : url, token: token, expiresAt: JWTClaims.expiry(token) ?? 0)
        adminMints += 1
        admin = fresh
        return fresh
    }

    /// An Actions Service call with the admin token; a 401 re-mints once and retries (the
    /// token's `exp` can be earlier than its nominal lifetime).
    private func service(_ endpoint: String, _ method: String, _ path: String, body: [UInt8]? = nil) async throws -> OutboundResponse {
        for attempt in 0..<2 {
            let admin = try await adminConnection()
            let separator = path.contains("?") ? "&" : "?"
            do {
                return try await send(endpoint, method, admin.url + path + separator + "api-version=6.0-preview",
                                      headers: [("Authorization", "Bearer \(admin.token)")], body: body)
            } catch let error as OutboundError where error.kind == .http(401) && attempt == 0 {
                self.admin = nil
            }
        }
        throw OutboundError(kind: .http(401), detail: "the Actions Service refused a fresh admin token")
    }

    private func decode<T: Decodable>(_ type: T.Type, _ response: OutboundResponse) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(response.body))
    }

    /// `{"count", "value"}`.
    private struct ListEnvelope<T: Decodable>: Decodable {
        var count: Int?
        var value: [T]?
    }

    // MARK: the Actions Service

    /// The id of the GitHub runner group `name`; a name that does not resolve is an error,
    /// never a fallback to the default group.
    public func runnerGroupID(named name: String) async throws -> Int {
        /// One runner group.
        struct Group: Decodable {
            var id: Int
            var name: String?
        }
        let list = try decode(ListEnvelope<Group>.self, try await service(
            "runner_groups", "GET", "/_apis/runtime/runnergroups/?groupName=\(Self.escape(name))"))
        guard let group = list.value?.first(where: { $0.name == nil || $0.name == name }) else {
            throw ScaleSetError.runnerGroupNotFound(name)
        }
        return group.id
    }

    /// The scale set named `name`, created in `groupID` with `labels` when missing. The labels
    /// are read back from GitHub's answer: GHES before 3.21 keeps only the first.
    public func scaleSet(name: String, groupID: Int, labels: [String]) async throws -> RunnerScaleSet {
        let found = try decode(ListEnvelope<RunnerScaleSet>.self, try await service(
            "scale_sets", "GET", "/_apis/runtime/runnerscalesets?name=\(Self.escape(name))"))
        if let existing = found.value?.first(where: { $0.name == name }) { return existing }
        /// The create body.
        struct Create: Encodable {
            /// `runnerSetting`: every runner of the set is single-use.
            struct Setting: Encodable { var ephemeral = true }
            var name: String
            var runnerGroupId: Int
            var labels: [RunnerScaleSet.Label]
            var runnerSetting = Setting()
        }
        let body = try JSONEncoder().encode(Create(name: name, runnerGroupId: groupID,
                                                   labels: ([name] + labels.filter { $0 != name }).map { RunnerScaleSet.Label(name: $0) }))
        return try decode(RunnerScaleSet.self, try await service("scale_sets", "POST", "/_apis/runtime/runnerscalesets", body: Array(body)))
    }

    /// Opens the set's one session; `ScaleSetError.sessionConflict` while another is active.
    public func createSession(scaleSetID: Int, owner: String) async throws -> ScaleSetSession {
        do {
            let body = try JSONEncoder().encode(["ownerName": owner])
            return try decode(ScaleSetSession.self, try await service(
                "session_create", "POST", "/_apis/runtime/runnerscalesets/\(scaleSetID)/sessions", body: Array(body)))
        } catch let error as OutboundError where error.kind == .http(409) {
            throw ScaleSetError.sessionConflict
        }
    }

    /// A new queue token for the same session (after the queue answered 401).
    public func refreshSession(scaleSetID: Int, sessionID: String) async throws -> ScaleSetSession {
        try decode(ScaleSetSession.self, try await service(
            "session_refresh", "PATCH", "/_apis/runtime/runnerscalesets/\(scaleSetID)/sessions/\(sessionID)"))
    }

    public func deleteSession(scaleSetID: Int, sessionID: String) async throws {
        _ = try await service("session_delete", "DELETE", "/_apis/runtime/runnerscalesets/\(scaleSetID)/sessions/\(sessionID)")
    }

    /// A JIT config for one runner; `ScaleSetError.nameConflict` when the name is registered.
    public func generateJITConfig(scaleSetID: Int, runnerName: String) async throws -> JITConfig {
        do {
            let body = try JSONEncoder().encode(["name": runnerName, "workFolder": "_work"])
            return try decode(JITConfig.self, try await service(
                "jit_config", "POST", "/_apis/runtime/runnerscalesets/\(scaleSetID)/generatejitconfig", body: Array(body)))
        } catch let error as OutboundError where error.kind == .http(409) {
            throw ScaleSetError.nameConflict(runnerName)
        }
    }

    // MARK: REST (installation token)

    /// Deregisters the runner named exactly `name`, to free the name a 409 reported (a JIT
    /// registration left behind by a predecessor that died before its pod existed). Returns
    /// false when no runner has that name. GitHub's `name` filter is not an exact match, so
    /// the names are compared here.
    public func deregisterRunner(named name: String) async throws -> Bool {
        /// `{total_count, runners}` of the runners list.
        struct Runners: Decodable {
            /// One runner.
            struct Runner: Decodable {
                var id: Int64
                var name: String
            }
            var runners: [Runner]?
        }
        let token = try await tokens.token().value
        let headers: [(name: String, value: String)] = [("Authorization", "Bearer \(token)"), ("X-GitHub-Api-Version", "2022-11-28")]
        let base = "\(apiBase)/\(scope.restPrefix)/actions/runners"
        let list = try decode(Runners.self, try await send("runners_list", "GET", "\(base)?name=\(Self.escape(name))", headers: headers))
        guard let runner = list.runners?.first(where: { $0.name == name }) else { return false }
        do {
            _ = try await send("runner_delete", "DELETE", "\(base)/\(runner.id)", headers: headers)
        } catch let error as OutboundError where error.kind == .http(404) {
            return false  // gone meanwhile: the name is free
        } catch let error as OutboundError where error.kind == .http(422) && (error.response?.text ?? "").contains("running a job") {
            throw ScaleSetError.runnerBusy(name)
        }
        return true
    }

    // MARK: the message queue

    /// One long poll: the next message after `cursor`, or nil (202: nothing within the hold).
    /// `capacity` is the set's *total*: GitHub keeps assigned (running included) jobs at or below it.
    public func poll(_ session: ScaleSetSession, cursor: Int64, capacity: Int, timeout: Duration = .seconds(60)) async throws
        -> QueueMessage?
    {
        guard GitHubURLs.allowed(session.messageQueueUrl) else {
            throw OutboundError(kind: .other, detail: "refused message queue URL \(session.messageQueueUrl)")
        }
        let separator = session.messageQueueUrl.contains("?") ? "&" : "?"
        let response = try await send(
            "poll", "GET", "\(session.messageQueueUrl)\(separator)lastMessageId=\(cursor)",
            headers: [("Authorization", "Bearer \(session.messageQueueAccessToken)"), ("X-ScaleSetMaxCapacity", String(max(0, capacity)))],
            timeout: timeout)
        guard response.status == 200, !response.body.isEmpty else { return nil }
        return try decode(QueueMessage.self, response)
    }

    /// Acknowledges a message; one already gone (404/410) counts as deleted.
    public func deleteMessage(_ session: ScaleSetSession, messageID: Int64) async throws {
        do {
            _ = try await send("message_delete", "DELETE", "\(session.messageQueueUrl)/\(messageID)",
                               headers: [("Authorization", "Bearer \(session.messageQueueAccessToken)")])
        } catch let error as OutboundError where error.kind == .http(404) || error.kind == .http(410) {
            return
        }
    }

    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? ""
    }
}

/// One request to GitHub, reported to `onRequest` with its endpoint name, its status (0 = no
/// response) and the answer's `X-RateLimit-Remaining` when it had one: every GitHub client
/// counts its calls this one way (`agc_github_requests_total`, `agc_github_ratelimit_remaining`).
public enum GitHubRequest {
    public static func send(_ request: OutboundRequest, endpoint: String, pool: OutboundPool,
                            onRequest: @Sendable (String, Int, Int?) -> Void) async throws(OutboundError) -> OutboundResponse {
        let result: Result<OutboundResponse, OutboundError>
        do {
            result = .success(try await pool.send(request))
        } catch {
            result = .failure(error)
        }
        record(result, endpoint: endpoint, onRequest: onRequest)
        return try result.get()
    }

    /// Counts one answer by endpoint and status (0: no HTTP answer) with the rate-limit budget left.
    public static func record(_ result: Result<OutboundResponse, OutboundError>, endpoint: String,
                              onRequest: @Sendable (String, Int, Int?) -> Void) {
        switch result {
        case .success(let response):
            onRequest(endpoint, response.status, response.header("x-ratelimit-remaining").flatMap { Int($0) })
        case .failure(let error):
            let remaining = error.response?.header("x-ratelimit-remaining").flatMap { Int($0) }
            if case .http(let code) = error.kind { onRequest(endpoint, code, remaining) } else { onRequest(endpoint, 0, nil) }
        }
    }
}

/// Scale-set outcomes a caller handles on their own (everything else is an `OutboundError`).
public enum ScaleSetError: Error, Sendable, Equatable {
    case runnerGroupNotFound(String)
    /// Another session is active on the set (a predecessor still draining).
    case sessionConflict
    /// A runner of this name is already registered.
    case nameConflict(String)
    /// The runner of this name is running a job (GitHub refuses to delete it): the job is
    /// being run, by another AGC (a blue/green peer, or a predecessor's pod).
    case runnerBusy(String)
}

/// URLs GitHub hands back (the Actions Service, the queue) obey the same rule as configured
/// ones: https, or plain http to a loopback address (test servers).
public enum GitHubURLs {
    public static func allowed(_ text: String) -> Bool {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), let host = url.host else { return false }
        if scheme == "https" { return !host.isEmpty }
        return scheme == "http" && (host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]")
    }
}

/// Reads claims from a JWT without verifying it (GitHub's admin token: only its `exp` matters to us).
public enum JWTClaims {
    /// The `exp` claim in epoch seconds; nil when the token or the claim cannot be read.
    public static func expiry(_ token: String) -> Int64? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return nil }
        var text = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        text += String(repeating: "=", count: (4 - text.count % 4) % 4)
        guard let data = Data(base64Encoded: text),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return nil }
        if let number = object["exp"] as? NSNumber { return number.int64Value }
        return nil
    }
}
