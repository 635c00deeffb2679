import Foundation
import OutboundPool

/// What GitHub said to one call about a workflow run (reference section 2.3). Transport errors
/// and 5xx are `unavailable`: the caller may try again within its window.
public enum RunAnswer: Error, Sendable, Equatable {
    /// `rerun-failed-jobs` 201/200, `force-cancel` 2xx.
    case accepted
    /// 403 "already running": the run has not concluded yet.
    case alreadyRunning
    /// `GET` of the run: its status and conclusion.
    case run(status: String, conclusion: String?)
    /// No answer, or 5xx (the detail says which).
    case unavailable(String)
    /// Any other answer: terminal for this run.
    case refused(Int, String)
}

/// The REST calls the AGC makes with the installation token about runs (re-run, get, cancel,
/// force-cancel, the triggering actor) and team memberships, in the `token` scheme GitHub's
/// REST docs show for these calls. Never retries: each caller owns its pacing.
public struct RunsClient: Sendable {
    private let apiBase: String
    private let tokens: InstallationTokens
    private let pool: OutboundPool
    private let onRequest: @Sendable (String, Int, Int?) -> Void

    public init(apiBase: String, tokens: InstallationTokens, pool: OutboundPool,
                onRequest: @escaping @Sendable (String, Int, Int?) -> Void = { _, _, _ in }) {
        self.apiBase = apiBase
        self.tokens = tokens
        self.pool = pool
        self.onRequest = onRequest
    }

    /// `owner/repo` as GitHub names repositories: each part `^[A-Za-z0-9][A-Za-z0-9._-]*$`, so
    /// what a pod annotation says can never reach another path.
    public static func validRepository(_ repository: String) -> Bool {
        let parts = repository.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        return parts.allSatisfy { part in
            guard let first = part.unicodeScalars.first, part.utf8.count <= 100 else { return false }
            let alphanumeric = { (c: Unicode.Scalar) in c.isASCII && (CharacterSet.alphanumerics.contains(c)) }
            return alphanumeric(first) && part.unicodeScalars.allSatisfy { alphanumeric($0) || $0 == "." || $0 == "_" || $0 == "-" }
        }
    }

    public func rerunFailedJobs(repository: String, runID: Int64) async -> RunAnswer {
        await call("rerun_failed_jobs", "POST", repository: repository, runID: runID, suffix: "/rerun-failed-jobs", body: Array("{}".utf8))
    }

    public func run(repository: String, runID: Int64) async -> RunAnswer {
        await call("run_get", "GET", repository: repository, runID: runID, suffix: "", body: nil)
    }

    public func forceCancel(repository: String, runID: Int64) async -> RunAnswer {
        await call("run_force_cancel", "POST", repository: repository, runID: runID, suffix: "/force-cancel", body: nil)
    }

    /// `POST .../cancel`: GitHub cancels the run's jobs; a queued job's assignment ends with a
    /// JobCompleted on the scale set's queue.
    public func cancel(repository: String, runID: Int64) async -> RunAnswer {
        await call("run_cancel", "POST", repository: repository, runID: runID, suffix: "/cancel", body: nil)
    }

    /// Who triggered the run (`triggering_actor`, which is who re-ran it for a re-run; else
    /// `actor`): the user a team policy is about. `.success(nil)` when the run names nobody.
    public func triggeringActor(repository: String, runID: Int64) async -> Result<String?, RunAnswer> {
        let response: OutboundResponse
        switch await send("run_get", "GET", repository: repository, runID: runID, suffix: "", body: nil) {
        case .failure(let answer): return .failure(answer)
        case .success(let got): response = got
        }
        /// The two users of a workflow run.
        struct Run: Decodable {
            struct User: Decodable { var login: String? }
            var actor: User?
            var triggering_actor: User?
        }
        guard let run = try? JSONDecoder().decode(Run.self, from: Data(response.body)) else {
            return .failure(.refused(response.status, "not a workflow run"))
        }
        return .success(run.triggering_actor?.login ?? run.actor?.login)
    }

    private func call(_ endpoint: String, _ method: String, repository: String, runID: Int64, suffix: String, body: [UInt8]?) async -> RunAnswer {
        let response: OutboundResponse
        switch await send(endpoint, method, repository: repository, runID: runID, suffix: suffix, body: body) {
        case .failure(let answer): return answer
        case .success(let got): response = got
        }
        guard method == "GET" else { return .accepted }
        /// `{status, conclusion}` of a workflow run.
        struct Run: Decodable {
            var status: String?
            var conclusion: String?
        }
        guard let run = try? JSONDecoder().decode(Run.self, from: Data(response.body)), let status = run.status else {
            return .refused(response.status, "not a workflow run")
        }
        return .run(status: status, conclusion: run.conclusion)
    }

    /// One call with the installation token; any answer but a 2xx as the `RunAnswer` it means.
    private func send(_ endpoint: String, _ method: String, repository: String, runID: Int64, suffix: String, body: [UInt8]?) async
        -> Result<OutboundResponse, RunAnswer>
    {
        guard Self.validRepository(repository), runID > 0 else { return .failure(.refused(0, "not a repository and run: \(repository) \(runID)")) }
        let token: String
        do {
            token = try await tokens.token().value
        } catch {
            return .failure(.unavailable("installation token: \(error)"))
        }
        var headers: [(name: String, value: String)] = [
            ("Authorization", "token \(token)"), ("Accept", "application/vnd.github+json"), ("X-GitHub-Api-Version", "2022-11-28"),
        ]
        if body != nil { headers.append(("Content-Type", "application/json")) }
        let request = OutboundRequest(method: method, url: "\(apiBase)/repos/\(repository)/actions/runs/\(runID)\(suffix)", headers: headers,
                                      body: body, timeout: .seconds(30), retry: false)
        do {
            return .success(try await GitHubRequest.send(request, endpoint: endpoint, pool: pool, onRequest: onRequest))
        } catch {
            guard case .http(let code) = error.kind, let reply = error.response else { return .failure(.unavailable("\(error)")) }
            let text = String(decoding: reply.body.prefix(500), as: UTF8.self)
            if code == 403, text.localizedCaseInsensitiveContains("already running") { return .failure(.alreadyRunning) }
            if code >= 500 || code == 429 { return .failure(.unavailable("\(code) \(text)")) }
            return .failure(.refused(code, text))
        }
    }
}

/// What GitHub said of one user's membership of one team.
public enum MembershipAnswer: Sendable, Equatable {
    /// `state: active`.
    case active
    /// Not a member (404), or a membership not yet accepted (`state: pending`).
    case notMember
    /// No answer, 5xx, 429, or a refusal such as 403 (the App lacks Members read): GitHub did not say.
    case unavailable(String)
}

/// `GET /orgs/{org}/teams/{team_slug}/memberships/{username}`, on the same installation
/// token and counting as the run calls (the App needs the organisation's Members read
/// permission). Never retries.
extension RunsClient {
    /// A GitHub login: letters, digits and single hyphens, at most 39 (so it names one path).
    public static func validLogin(_ login: String) -> Bool {
        (1...39).contains(login.utf8.count) && login.first != "-"
            && login.utf8.allSatisfy { (0x61...0x7a).contains($0) || (0x41...0x5a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2d }
    }

    /// `organization` and `slug` as `TeamRef` checked them.
    public func membership(organization: String, slug: String, user: String) async -> MembershipAnswer {
        guard Self.validLogin(user) else { return .notMember }
        let token: String
        do {
            token = try await tokens.token().value
        } catch {
            return .unavailable("installation token: \(error)")
        }
        let request = OutboundRequest(
            url: "\(apiBase)/orgs/\(organization)/teams/\(slug)/memberships/\(user)",
            headers: [("Authorization", "token \(token)"), ("Accept", "application/vnd.github+json"), ("X-GitHub-Api-Version", "2022-11-28")],
            timeout: .seconds(15), retry: false)
        let response: OutboundResponse
        do {
            response = try await GitHubRequest.send(request, endpoint: "team_membership", pool: pool, onRequest: onRequest)
        } catch {
            if case .http(404) = error.kind { return .notMember }
            if case .http(let code) = error.kind, let reply = error.response {
                return .unavailable("\(code) \(String(decoding: reply.body.prefix(300), as: UTF8.self))")
            }
            return .unavailable("\(error)")
        }
        /// `{state, role}` of a team membership.
        struct Membership: Decodable { var state: String? }
        guard let membership = try? JSONDecoder().decode(Membership.self, from: Data(response.body)) else {
            return .unavailable("not a team membership")
        }
        return membership.state == "active" ? .active : .notMember
    }
}
