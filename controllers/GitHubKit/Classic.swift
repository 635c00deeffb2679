import Foundation
import OutboundPool

// The classic per-runner broker (reference/agc-protocol.md 1.4, 2.1, 3.1), v2 flow: two URL
// families never mixed: the agent's static broker URL for sessions and messages, and each
// message's own `run_service_url` for acquire, renew and complete (never cached across jobs).

/// Classic outcomes a caller handles on their own (everything else is an `OutboundError`).
public enum ClassicError: Error, Sendable, Equatable {
    /// generate-jitconfig: a runner of this name exists.
    case nameConflict(String)
    /// The token exchange: a new registration has not propagated yet (retry in ~2 s).
    case notPropagated
    /// The token exchange or session create refused the agent's credentials: recycle it.
    case credentialsRejected(Int)
    /// Session create: the runner version is below GitHub's floor (not retryable).
    case versionTooOld(String)
    /// Session create: the agent has a session already (one per agent).
    case sessionConflict
    /// A URL GitHub handed back that breaks the https-or-loopback rule.
    case refusedURL(String)
    /// The organisation has no runner group of this name.
    case runnerGroupNotFound(String)
    /// An answer we could not read.
    case malformed(String)
    /// Registration: a runner of this name is online (its agent holds a session: another
    /// AGC's, a blue/green peer's); it is not ours to delete.
    case agentOnline(String)
}

/// An open broker session.
public struct BrokerSession: Sendable, Equatable {
    public var sessionID: String
    /// The AES-256 key message bodies are sealed with (nil: plaintext bodies).
    public var key: [UInt8]?
}

/// What one long poll came to.
public enum BrokerPoll: Sendable, Equatable {
    /// 202: nothing within the hold.
    case idle
    /// 200 with an empty body: the signature of a session whose single-use agent is gone.
    case empty
    /// A `RunnerJobRequest`.
    case job(JobRequest)
    /// Another message type (ignored; polling continues).
    case other(String)
}

/// A delivery: which request, and where its run service is.
public struct JobRequest: Sendable, Equatable {
    public var requestID: Int64
    public var runServiceURL: String
    public var billingOwnerID: String?
    public var messageID: Int64
    public init(requestID: Int64, runServiceURL: String, billingOwnerID: String?, messageID: Int64) {
        self.requestID = requestID
        self.runServiceURL = runServiceURL
        self.billingOwnerID = billingOwnerID
        self.messageID = messageID
    }
}

/// The answer of `acquirejob`: the job message byte for byte (for the worker), and what the AGC reads from it.
public struct ClassicJob: Sendable, Equatable {
    public var payload: [UInt8]
    /// `x-plan-id`, else `.plan.planId`.
    public var planID: String
    /// `SystemVssConnection`'s AccessToken: the only credential renew and complete accept.
    public var jobToken: String
    /// The job's UUID (`.jobId`), one per plan across fan-out deliveries.
    public var jobID: String
    public var runID: Int64?
    public var repository: String?
    public var workflow: String?
    public var jobName: String?

    /// Reads the fields the AGC needs; nil when the plan id or the job token is missing.
    public static func parse(_ body: [UInt8], planHeader: String?) -> ClassicJob? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else { return nil }
        let plan = (object["plan"] as? [String: Any])?["planId"] as? String
        guard let planID = planHeader.flatMap({ $0.isEmpty ? nil : $0 }) ?? plan else { return nil }
        let endpoints = ((object["resources"] as? [String: Any])?["endpoints"] as? [[String: Any]]) ?? []
        let system = endpoints.first { ($0["name"] as? String)?.lowercased() == "systemvssconnection" }
        let parameters = (system?["authorization"] as? [String: Any])?["parameters"] as? [String: Any] ?? [:]
        guard let token = parameters.first(where: { $0.key.lowercased() == "accesstoken" })?.value as? String, !token.isEmpty else {
            return nil
        }
        // Run identity from contextData.github, a PipelineContextData dictionary {t: 2, d: [{k, v}]}.
        var github: [String: String] = [:]
        if let context = (object["contextData"] as? [String: Any])?["github"] as? [String: Any],
            let entries = context["d"] as? [[String: Any]]
        {
            for entry in entries {
                if let key = entry["k"] as? String, let value = entry["v"] as? String { github[key] = value }
            }
        }
        return ClassicJob(payload: body, planID: planID, jobToken: token, jobID: object["jobId"] as? String ?? planID,
                          runID: github["run_id"].flatMap { Int64($0) }, repository: github["repository"], workflow: github["workflow"],
                          jobName: object["jobDisplayName"] as? String)
    }
}

/// The classic client of one gateway: agent registration with the installation token, the
/// OAuth exchange, sessions, the long poll, and the run service. Never retries by itself: the
/// source owns backoff, so every attempt is visible to it and counted by `onRequest`.
public struct ClassicClient: Sendable {
    private let apiBase: String
    private let scope: GitHubScope
    private let tokens: InstallationTokens
    private let pool: OutboundPool
    private let onRequest: @Sendable (String, Int, Int?) -> Void
    /// The runner version sessions announce (reference: pinned 2.335.1; floor 2.329.0).
    public static let runnerVersion = "2.335.1"
    /// Per-call deadline of control-plane calls (session, acquire, renew, complete).
    public static let controlTimeout: Duration = .seconds(30)
    /// The long poll: GitHub holds it ~50 s; 5 s more before we call it lost.
    public static let pollTimeout: Duration = .seconds(55)
    /// A poll's answer is a few hundred bytes: curl's smallest buffer (the default 16 KiB per
    /// held poll would be most of an idle session's memory).
    public static let pollBufferSize = 1024

    public init(apiBase: String, scope: GitHubScope, tokens: InstallationTokens, pool: OutboundPool,
                onRequest: @escaping @Sendable (String, Int, Int?) -> Void) {
        self.apiBase = apiBase
        self.scope = scope
        self.tokens = tokens
        self.pool = pool
        self.onRequest = onRequest
    }

    private func send(_ endpoint: String, _ method: String, _ url: String, headers: [(name: String, value: String)], body: [UInt8]? = nil,
                      timeout: Duration = controlTimeout) async throws -> OutboundResponse {
        let request = try request(method, url, headers: headers, body: body, timeout: timeout)
        return try await GitHubRequest.send(request, endpoint: endpoint, pool: pool, onRequest: onRequest)
    }

    /// What every call here sends: the https-or-loopback rule on the URL, JSON, no retries.
    private func request(_ method: String, _ url: String, headers: [(name: String, value: String)], body: [UInt8]? = nil,
                         timeout: Duration, bufferSize: Int? = nil) throws -> OutboundRequest {
        guard GitHubURLs.allowed(url) else { throw ClassicError.refusedURL(url) }
        var all = headers + [("Accept", "application/json")]
        if body != nil, !all.contains(where: { $0.name == "Content-Type" }) { all.append(("Content-Type", "application/json")) }
        var request = OutboundRequest(method: method, url: url, headers: all, body: body, timeout: timeout, retry: false, maxAttempts: 1)
        request.receiveBufferSize = bufferSize
        return request
    }

    private func json(_ object: [String: Any]) -> [UInt8] {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])).map { [UInt8]($0) } ?? []
    }

    private func installation() async throws -> [(name: String, value: String)] {
        [("Authorization", "Bearer \(try await tokens.token().value)"), ("X-GitHub-Api-Version", "2022-11-28")]
    }

    // MARK: agents

    /// The id of the organisation's runner group `name` (REST, 100 a page, 50 pages at most);
    /// a repository's runners have only the Default group, id 1.
    public func runnerGroupID(named name: String) async throws -> Int64 {
        guard scope.restPrefix.hasPrefix("orgs/") else { return 1 }
        for page in 1...50 {
            let response = try await send("list_runner_groups", "GET",
                                          "\(apiBase)/\(scope.restPrefix)/actions/runner-groups?per_page=100&page=\(page)",
                                          headers: try await installation())
            guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
                let groups = object["runner_groups"] as? [[String: Any]]
            else { throw ClassicError.malformed("runner groups") }
            if let match = groups.first(where: { $0["name"] as? String == name }), let id = (match["id"] as? NSNumber)?.int64Value {
                return id
            }
            if groups.count < 100 { break }
        }
        throw ClassicError.runnerGroupNotFound(name)
    }

    /// Registers a JIT agent; returns its runner id and the encoded blob.
    public func register(name: String, groupID: Int64, labels: [String]) async throws -> (runnerID: Int64, jitConfig: String) {
        let body = json(["name": name, "runner_group_id": groupID, "labels": labels, "work_folder": "_work"])
        let response: OutboundResponse
        do {
            response = try await send("generate_jitconfig", "POST", "\(apiBase)/\(scope.restPrefix)/actions/runners/generate-jitconfig",
                                      headers: try await installation(), body: body)
        } catch let error as OutboundError where error.kind == .http(409) {
            throw ClassicError.nameConflict(name)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
            let blob = object["encoded_jit_config"] as? String,
            let id = ((object["runner"] as? [String: Any])?["id"] as? NSNumber)?.int64Value
        else { throw ClassicError.malformed("generate-jitconfig answer") }
        return (id, blob)
    }

    /// The id of the runner named exactly `name` (GitHub's filter is not an exact match).
    public func runnerID(named name: String) async throws -> Int64? { try await runner(named: name)?.id }

    /// The runner registered under exactly `name`: its id, and whether GitHub shows it online
    /// (an agent with a live session: someone's, maybe another cluster's AGC).
    public func runner(named name: String) async throws -> (id: Int64, online: Bool)? {
        let escaped = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
        let response = try await send("runners_list", "GET", "\(apiBase)/\(scope.restPrefix)/actions/runners?name=\(escaped)",
                                      headers: try await installation())
        let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]
        let runners = object?["runners"] as? [[String: Any]] ?? []
        guard let found = runners.first(where: { $0["name"] as? String == name }), let id = (found["id"] as? NSNumber)?.int64Value else { return nil }
        return (id, found["status"] as? String == "online")
    }

    /// Deregisters a runner. False when it was gone already. A 422 "currently running" is
    /// thrown for the caller to retry (GitHub is still removing a consumed record).
    @discardableResult
    public func deregister(runnerID: Int64) async throws -> Bool {
        do {
            _ = try await send("runner_delete", "DELETE", "\(apiBase)/\(scope.restPrefix)/actions/runners/\(runnerID)", headers: try await installation())
            return true
        } catch let error as OutboundError where error.kind == .http(404) {
            return false
        }
    }

    // MARK: broker

    /// The RFC 7523 exchange: a broker bearer token for the agent.
    public func brokerToken(_ credentials: AgentCredentials, now: Int64) async throws -> String {
        guard let assertion = ClientAssertion.make(credentials: credentials, now: now) else { throw ClassicError.malformed("assertion signing") }
        var form = URLComponents()
        form.queryItems = [URLQueryItem(name: "grant_type", value: "client_credentials"),
                           URLQueryItem(name: "client_assertion_type", value: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                           URLQueryItem(name: "client_assertion", value: assertion)]
        let body = Array((form.percentEncodedQuery ?? "").utf8)
        do {
            let response = try await send("oauth_token", "POST", credentials.authorizationURL,
                                          headers: [("Content-Type", "application/x-www-form-urlencoded")], body: body)
            guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
                let token = object["access_token"] as? String, !token.isEmpty
            else { throw ClassicError.malformed("token answer") }
            return token
        } catch let error as OutboundError {
            guard case .http(let code) = error.kind, [400, 401, 403, 404].contains(code) else { throw error }
            let text = (error.response?.text ?? "").lowercased()
            if (code == 400 || code == 404), text.contains("registration"), text.contains("not found") { throw ClassicError.notPropagated }
            throw ClassicError.credentialsRejected(code)
        }
    }

    public func createSession(_ credentials: AgentCredentials, token: String, owner: String) async throws -> BrokerSession {
        let body = json(["ownerName": owner, "useFipsEncryption": false,
                         "agent": ["id": credentials.agentID, "name": credentials.agentName, "version": Self.runnerVersion] as [String: Any]])
        let response: OutboundResponse
        do {
            response = try await send("broker_session_create", "POST", "\(credentials.brokerURL)/session",
                                      headers: [("Authorization", "Bearer \(token)")], body: body)
        } catch let error as OutboundError {
            let text = (error.response?.text ?? "").lowercased()
            switch error.kind {
            case .http(400) where text.contains("version") || text.contains("too old") || text.contains("minimum"):
                throw ClassicError.versionTooOld(String((error.response?.text ?? "").prefix(300)))
            case .http(401), .http(403): throw ClassicError.credentialsRejected(error.response?.status ?? 401)
            case .http(409): throw ClassicError.sessionConflict
            default: throw error
            }
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
            let id = object["sessionId"] as? String
        else { throw ClassicError.malformed("session answer") }
        var key: [UInt8]?
        if let encryption = object["encryptionKey"] as? [String: Any], let value = (encryption["value"] as? String).flatMap(Base64.decode) {
            if encryption["encrypted"] as? Bool == true {
                guard let unwrapped = credentials.key.unwrap(value) else { throw ClassicError.malformed("session key does not unwrap") }
                key = unwrapped
            } else {
                key = value
            }
        }
        return BrokerSession(sessionID: id, key: key)
    }

    /// DELETE of the session the bearer names (no id in the URL).
    public func deleteSession(brokerURL: String, token: String) async throws {
        do {
            _ = try await send("broker_session_delete", "DELETE", "\(brokerURL)/session", headers: [("Authorization", "Bearer \(token)")])
        } catch let error as OutboundError where error.kind == .http(404) {}
    }

    /// Starts the long poll (55 s response-header deadline) and calls `completion` once, in a
    /// task of its own (the answer is parsed and decrypted there, never on the pool's loop).
    /// Nothing waits meanwhile: a held poll costs its transfer and no task.
    /// `OutboundError(.cancelled)` after `cancel`.
    public func beginPoll(brokerURL: String, token: String, session: BrokerSession,
                          completion: @escaping @Sendable (Result<BrokerPoll, any Error>) async -> Void) -> OutboundCall? {
        let query = "sessionId=\(session.sessionID)&status=online&runnerVersion=\(Self.runnerVersion)&os=Linux&architecture=X64&disableUpdate=false"
        var request: OutboundRequest
        do {
            request = try self.request("GET", "\(brokerURL)/message?\(query)", headers: [("Authorization", "Bearer \(token)")],
                                       timeout: Self.pollTimeout, bufferSize: Self.pollBufferSize)
            // On GitHub (HTTP/2) the poll is a stream of a shared connection, not a curl transfer.
            request.longPoll = true
        } catch {
            Task { await completion(.failure(error)) }
            return nil
        }
        let onRequest = onRequest
        let key = session.key
        return pool.begin(request) { result in
            GitHubRequest.record(result, endpoint: "broker_poll", onRequest: onRequest)
            Task { await completion(result.mapError { $0 as any Error }.flatMap { response in Result { try Self.message(response, key: key) } }) }
        }
    }

    /// A poll's answer: 202 idle, 200 empty, or a message (decrypted with the session key).
    static func message(_ response: OutboundResponse, key: [UInt8]?) throws -> BrokerPoll {
        if response.status == 202 { return .idle }
        guard !response.body.isEmpty else { return .empty }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
            let type = object["messageType"] as? String
        else { throw ClassicError.malformed("message") }
        guard type == "RunnerJobRequest" else { return .other(type) }
        let sealed = object["body"] as? String ?? ""
        // Decrypt when the session gave a key; a body that does not decrypt is tried as plaintext.
        let plain = key.flatMap { BrokerCipher.decrypt(sealed, key: $0) } ?? Array(sealed.utf8)
        guard let body = try? JSONSerialization.jsonObject(with: Data(plain)) as? [String: Any],
            let request = (body["runner_request_id"] as? NSNumber)?.int64Value ?? (body["runner_request_id"] as? String).flatMap({ Int64($0) }),
            let url = body["run_service_url"] as? String
        else { throw ClassicError.malformed("job request body") }
        return .job(JobRequest(requestID: request, runServiceURL: url.hasSuffix("/") ? String(url.dropLast()) : url,
                               billingOwnerID: body["billing_owner_id"] as? String,
                               messageID: (object["messageId"] as? NSNumber)?.int64Value ?? 0))
    }

    // MARK: run service

    /// `acquirejob` with the session's bearer, on the delivery's own run service URL.
    public func acquire(_ request: JobRequest, token: String) async throws -> ClassicJob {
        var body: [String: Any] = ["jobMessageId": request.requestID, "runnerOS": "Linux"]
        if let billing = request.billingOwnerID { body["billingOwnerId"] = billing }
        let response = try await send("acquirejob", "POST", "\(request.runServiceURL)/acquirejob", headers: [("Authorization", "Bearer \(token)")],
                                      body: json(body))
        guard let job = ClassicJob.parse(response.body, planHeader: response.header("x-plan-id")) else {
            throw ClassicError.malformed("acquirejob answer lacks a plan id or a job token")
        }
        return job
    }

    /// `renewjob` with the job token (the session token is refused there). Throws 404/410 for "gone".
    public func renew(_ request: JobRequest, job: ClassicJob) async throws {
        _ = try await send("renewjob", "POST", "\(request.runServiceURL)/renewjob", headers: [("Authorization", "Bearer \(job.jobToken)")],
                           body: json(["planId": job.planID, "jobId": request.requestID]))
    }

    /// `completejob` for a delivery (only ever a sibling's: never our own unrun one). 404/410 is benign.
    public func complete(_ request: JobRequest, job: ClassicJob, result: String) async throws {
        do {
            _ = try await send("completejob", "POST", "\(request.runServiceURL)/completejob", headers: [("Authorization", "Bearer \(job.jobToken)")],
                               body: json(["planId": job.planID, "jobId": request.requestID, "result": result]))
        } catch let error as OutboundError where error.kind == .http(404) || error.kind == .http(410) {}
    }
}
