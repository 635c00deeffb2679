import EgressPosix
import Foundation
import OutboundPool
import Vocabulary

/// Where a GitHub instance's REST API lives: github.com uses api.github.com, GitHub
/// Enterprise Server serves it under /api/v3 of its own host.
public enum GitHubEndpoints {
    /// - Parameter gitHubURL: the `gitHubURL` of an ActionsGateway (https://github.com/ORG,
    ///   https://ghe.example.com/ORG, ...). Nil unless it is an https URL with a host.
    public static func apiBase(for gitHubURL: String) -> String? {
        guard gitHubURL.hasPrefix("https://") else { return nil }
        let rest = gitHubURL.dropFirst("https://".count)
        let host = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }.lowercased()
        guard !host.isEmpty, !host.contains("@") else { return nil }
        if host == "github.com" || host == "www.github.com" { return "https://api.github.com" }
        if host.hasSuffix(".ghe.com") { return "https://api.\(host)" }  // GitHub Enterprise Cloud with data residency
        return "https://\(host)/api/v3"
    }
}

/// The credential Secret, mounted as files: `appId`, `installationId`, `privateKey`.
public struct AppCredentials: Sendable {
    public let appID: String
    public let installationID: String
    public let key: AppSigningKey

    /// A credential Secret that is missing a file or holds a bad value.
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Reads the three files from a mounted directory; whitespace around the ids is ignored.
    public static func load(directory: String) throws(Invalid) -> AppCredentials {
        func read(_ name: String) throws(Invalid) -> String {
            guard let bytes = Posix.readSmallFile(directory + "/" + name, limit: 64 * 1024) else {
                throw Invalid(description: "missing \(name) in \(directory)")
            }
            return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let appID = try read("appId")
        let installationID = try read("installationId")
        guard !appID.isEmpty, installationID.allSatisfy(\.isNumber), !installationID.isEmpty else {
            throw Invalid(description: "appId must be set and installationId numeric")
        }
        do {
            return AppCredentials(appID: appID, installationID: installationID, key: try AppSigningKey(pemFile: directory + "/privateKey"))
        } catch {
            throw Invalid(description: "privateKey: \(error)")
        }
    }
}

/// Installation access tokens: fetched with the App JWT, cached, refreshed 5 minutes before
/// they expire, and never fetched twice at once however many callers ask (single flight).
public actor InstallationTokens {
    /// An installation access token and when it expires.
    public struct Token: Sendable, Equatable {
        public let value: String
        /// Epoch seconds.
        public let expiresAt: Int64
    }

    private let credentials: AppCredentials
    private let apiBase: String
    private let pool: OutboundPool
    private let now: @Sendable () -> Int64
    private var cached: Token?
    private var inFlight: Task<Token, any Error>?
    /// Requests made to GitHub's token endpoint (for metrics and tests).
    public private(set) var fetches = 0
    public static let refreshMargin: Int64 = 300

    public init(credentials: AppCredentials, apiBase: String, pool: OutboundPool,
                now: @escaping @Sendable () -> Int64 = { Int64(Posix.wallClockNanoseconds() / 1_000_000_000) })
    {
        self.credentials = credentials
        self.apiBase = apiBase
        self.pool = pool
        self.now = now
    }

    /// A token valid for at least the refresh margin.
    public func token() async throws -> Token {
        if let cached, cached.expiresAt - now() > Self.refreshMargin { return cached }
        if let inFlight { return try await inFlight.value }
        let task = Task { try await self.fetch() }
        inFlight = task
        defer { inFlight = nil }
        let token = try await task.value
        cached = token
        return token
    }

    private func fetch() async throws -> Token {
        fetches += 1
        guard let jwt = AppJWT.make(appID: credentials.appID, key: credentials.key, now: now()) else {
            throw OutboundError(kind: .other, detail: "cannot sign the app JWT")
        }
        let request = OutboundRequest(
            method: "POST", url: "\(apiBase)/app/installations/\(credentials.installationID)/access_tokens",
            headers: [("Authorization", "Bearer \(jwt)"), ("Accept", "application/vnd.github+json"),
                      ("X-GitHub-Api-Version", "2022-11-28")],
            body: [], retry: true)
        let response = try await pool.send(request)
        /// The fields of GitHub's access-token response we use.
        struct Body: Decodable {
            let token: String
            let expires_at: String
        }
        let body = try JSONDecoder().decode(Body.self, from: Data(response.body))
        guard let expiresAt = ISO8601.epochSeconds(body.expires_at) else {
            throw OutboundError(kind: .other, detail: "unparseable expires_at \(body.expires_at)")
        }
        return Token(value: body.token, expiresAt: expiresAt)
    }
}
