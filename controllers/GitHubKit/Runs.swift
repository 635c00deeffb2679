import Foundation
import OutboundPool

/// What GitHub said to one call about a workflow run (reference section 2.3). Transport errors
/// and 5xx are `unavailable`: the caller may try again within its window.
public enum RunAnswer: Sendable, Equatable {
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

/// The three run endpoints recovery needs, with the installation token (`token` scheme, as
/// GitHub's REST docs show for these calls). Never retries: the re-run loop owns its pacing.
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

    private func call(_ endpoint: String, _ method: String, repository: String, runID: Int64, suffix: String, body: [UInt8]?) async -> RunAnswer {
        guard Self.validRepository(repository), runID > 0 else { return .refused(0, "not a repository and run: \(repository) \(runID)") }
        let token: String
        do {
            token = try await tokens.token().value
        } catch {
            return .unavailable("installation token: \(error)")
        }
        var headers: [(name: String, value: String)] = [
            ("Authorization", "token \(token)"), ("Accept", "application/vnd.github+json"), ("X-GitHub-Api-Version", "2022-11-28"),
        ]
        if body != nil { headers.append(("Content-Type", "application/json")) }
        let request = OutboundRequest(method: method, url: "\(apiBase)/repos/\(repository)/actions/runs/\(runID)\(suffix)", headers: headers,
                                      body: body, timeout: .seconds(30), retry: false)
        let response: OutboundResponse
        do {
            response = try await GitHubRequest.send(request, endpoint: endpoint, pool: pool, onRequest: onRequest)
        } catch {
            guard case .http(let code) = error.kind, let reply = error.response else { return .unavailable("\(error)") }
            let text = String(decoding: reply.body.prefix(500), as: UTF8.self)
            if code == 403, text.localizedCaseInsensitiveContains("already running") { return .alreadyRunning }
            if code >= 500 { return .unavailable("\(code) \(text)") }
            return .refused(code, text)
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
}
