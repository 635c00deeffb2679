import EgressPosix
import Foundation
import GitHubKit
import OutboundPool
import Synchronization
import TestSupport
import Testing
import Vocabulary

/// The fake token endpoint (Tests/fakes/github_tokens.py), killed with SIGKILL at the end.
final class FakeGitHub {
    let fake: PythonFake
    var base: String { fake.url }

    init(fixture: AppFixture, appID: String = "424242", ttl: Int = 3600) throws {
        fake = try PythonFake("github_tokens.py", ["--public-key", fixture.publicKey, "--app-id", appID, "--ttl", String(ttl)])
    }

    /// Moves the fake's clock (the test moves its own by the same amount).
    func advance(_ seconds: Int64, _ pool: OutboundPool) async throws {
        _ = try await pool.send(OutboundRequest(method: "POST", url: base + "/clock?advance=\(seconds)", body: []))
    }

    func stats(_ pool: OutboundPool) async throws -> [String: Any] {
        let body = try await pool.send(OutboundRequest(url: base + "/stats")).body
        return (try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]) ?? [:]
    }
}

/// A wall clock the test moves.
final class TestClock: Sendable {
    let seconds = Mutex(Int64(Posix.wallClockNanoseconds() / 1_000_000_000))
    func now() -> Int64 { seconds.withLock { $0 } }
    func advance(_ delta: Int64) { seconds.withLock { $0 += delta } }
    func set(_ value: Int64) { seconds.withLock { $0 = value } }
}

@Suite(.serialized) struct GitHubKitTests {
    @Test func jwtVerifiesWithAnIndependentLibraryAndOneFetchServesTwoHundredCallers() async throws {
        let fixture = try AppFixture()
        let github = try FakeGitHub(fixture: fixture)
        let pool = try OutboundPool()
        defer { pool.shutdown() }
        let credentials = try AppCredentials.load(directory: fixture.directory)
        let clock = TestClock()
        let tokens = InstallationTokens(credentials: credentials, apiBase: github.base, pool: pool, now: { clock.now() })
        let values = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<200 { group.addTask { try await tokens.token().value } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(values == ["ghs_fake1"])
        let stats = try await github.stats(pool)
        #expect(stats["issued"] as? Int == 1, "200 concurrent callers, exactly one token request: \(stats)")
        #expect(stats["refused"] as? Int == 0, "the fake verified our JWT: \(stats)")
        #expect(await tokens.fetches == 1)

        // Still cached until 5 minutes before expiry, then exactly one refresh. Our clock is
        // set from the token's own expiry: the fake stamped it with its clock, which may be a
        // second or two past ours when the machine is busy.
        let expiresAt = try await tokens.token().expiresAt
        clock.set(expiresAt - 301)
        try await github.advance(3600 - 301, pool)
        #expect(try await tokens.token().value == "ghs_fake1")
        clock.set(expiresAt - 299)
        try await github.advance(2, pool)
        let refreshed = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<50 { group.addTask { try await tokens.token().value } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(refreshed == ["ghs_fake2"])
        #expect(try await github.stats(pool)["issued"] as? Int == 2)
    }

    @Test func wrongAppIDIsRefusedByTheFake() async throws {
        let fixture = try AppFixture(appID: "1")
        let github = try FakeGitHub(fixture: fixture, appID: "2")
        let pool = try OutboundPool()
        defer { pool.shutdown() }
        let tokens = InstallationTokens(credentials: try AppCredentials.load(directory: fixture.directory), apiBase: github.base, pool: pool)
        await #expect(throws: OutboundError.self) { try await tokens.token() }
        #expect(try await github.stats(pool)["refused"] as? Int == 1)
    }

    @Test func apiBaseDerivation() {
        #expect(GitHubEndpoints.apiBase(for: "https://github.com/my-org") == "https://api.github.com")
        #expect(GitHubEndpoints.apiBase(for: "https://GitHub.com") == "https://api.github.com")
        #expect(GitHubEndpoints.apiBase(for: "https://ghe.example.com/my-org/repo") == "https://ghe.example.com/api/v3")
        #expect(GitHubEndpoints.apiBase(for: "https://acme.ghe.com/org") == "https://api.acme.ghe.com")
        #expect(GitHubEndpoints.apiBase(for: "http://github.com/org") == nil)
        #expect(GitHubEndpoints.apiBase(for: "https://") == nil)
        #expect(GitHubEndpoints.apiBase(for: "https://user@evil.example/x") == nil)
    }

    @Test func credentialsFromMountedFiles() throws {
        let fixture = try AppFixture(appID: "123", installationID: "456")
        let credentials = try AppCredentials.load(directory: fixture.directory)
        #expect(credentials.appID == "123" && credentials.installationID == "456")
        try "not a key".write(toFile: fixture.directory + "/privateKey", atomically: true, encoding: .utf8)
        #expect(throws: AppCredentials.Invalid.self) { try AppCredentials.load(directory: fixture.directory) }
        #expect(throws: AppCredentials.Invalid.self) { try AppCredentials.load(directory: "/nonexistent") }
    }

    @Test func timestampsAndBase64URL() {
        #expect(ISO8601.epochSeconds("1970-01-01T00:00:00Z") == 0)
        #expect(ISO8601.epochSeconds("2026-11-26T18:30:05Z") == 1_795_717_805)
        #expect(ISO8601.epochSeconds("2026-13-01T00:00:00Z") == nil)
        #expect(AppJWT.base64URL(Array("any carnal pleas".utf8)) == "YW55IGNhcm5hbCBwbGVhcw")
        #expect(AppJWT.base64URL([0xfb, 0xff]) == "-_8")
    }

    /// Queue messages carry fractional seconds, and the zero time where GitHub left a field unset.
    @Test func jobMessageTimesReadFractionsAndTreatTheZeroTimeAsUnset() {
        #expect(JobMessage.time("2026-11-26T18:30:05.123456Z") == 1_795_717_805)
        #expect(JobMessage.time("0001-01-01T00:00:00Z") == nil)
        #expect(JobMessage.time("soon") == nil)
        #expect(JobMessage.time(nil) == nil)
        var message = JobMessage(messageType: "JobAssigned", jobId: "j")
        message.queueTime = "0001-01-01T00:00:00Z"
        message.scaleSetAssignTime = "2026-11-26T18:30:05.5Z"
        #expect(message.queuedAt == 1_795_717_805, "queueTime unset: the scale set's assign time")
        message.queueTime = "2026-11-26T18:30:00Z"
        #expect(message.queuedAt == 1_795_717_800)
    }
}
