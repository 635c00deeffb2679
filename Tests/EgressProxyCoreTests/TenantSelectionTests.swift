import EgressLoop
import EgressPosix
import Testing

@testable import EgressProxyCore

/// A byte collection that records every index read, to show a comparison reads the same
/// positions in the same order whatever the input (the timing test, on the function).
final class ReadLog { var indices: [Int] = [] }

struct CountingBytes: Collection {
    let bytes: [UInt8]
    let log: ReadLog
    var startIndex: Int { 0 }
    var endIndex: Int { bytes.count }
    func index(after index: Int) -> Int { index + 1 }
    subscript(position: Int) -> UInt8 {
        log.indices.append(position)
        return bytes[position]
    }
}

func basic(_ user: String, _ secret: String) -> String {
    "Basic " + base64(Array("\(user):\(secret)".utf8))
}

func base64(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    var out = ""
    var index = 0
    while index < bytes.count {
        let chunk = Array(bytes[index..<min(index + 3, bytes.count)])
        let value = chunk.enumerated().reduce(0) { $0 | Int($1.element) << (16 - 8 * $1.offset) }
        for position in 0..<4 {
            out.append(position <= chunk.count ? alphabet[(value >> (18 - 6 * position)) & 63] : "=")
        }
        index += 3
    }
    return out
}

@Suite struct TenantSelectionTests {
    static let yaml = """
        tenants:
          - name: team-a
            credentials: {sha256: \(SHA256Digest.hex(SHA256Digest.hash(Array("alpha-secret".utf8))))}
            allow: [{host: a.example}]
          - name: team-b
            credentials: {sha256: \(SHA256Digest.hex(SHA256Digest.hash(Array("bravo-secret".utf8))))}
            allow: [{host: b.example}]
          - name: nodes
            sources: [10.42.0.0/16]
            allow: [{host: n.example}]
        """

    func policy(_ yaml: String = yaml) throws -> PolicySnapshot {
        try PolicySnapshot.make(config: try ProxyConfig.parse(yaml: yaml).get())
    }

    func selected(_ snapshot: PolicySnapshot, _ ip: String, _ header: String?) -> String {
        switch snapshot.select(client: IPAddress(ip)!, authorization: header) {
        case .tenant(let tenant): return tenant.name
        case .authFailed(let reason): return "407:\(reason)"
        }
    }

    @Test func selectionOrder() throws {
        let snapshot = try policy()
        #expect(selected(snapshot, "192.0.2.1", basic("team-a", "alpha-secret")) == "team-a")
        #expect(selected(snapshot, "192.0.2.1", basic("team-b", "bravo-secret")) == "team-b")
        #expect(selected(snapshot, "192.0.2.1", basic("team-a", "bravo-secret")) == "407:bad_credentials")
        #expect(selected(snapshot, "192.0.2.1", basic("team-a", "alpha-secreT")) == "407:bad_credentials")
        #expect(selected(snapshot, "192.0.2.1", basic("team-c", "alpha-secret")) == "407:bad_credentials")
        #expect(selected(snapshot, "192.0.2.1", basic("nodes", "")) == "407:bad_credentials", "no credentials configured")
        #expect(selected(snapshot, "192.0.2.1", "Basic !!!") == "407:bad_credentials")
        #expect(selected(snapshot, "192.0.2.1", "Bearer abc") == "407:bad_credentials")
        #expect(selected(snapshot, "192.0.2.1", nil) == "407:credentials_required")
        #expect(selected(snapshot, "10.42.7.7", nil) == "nodes")
        #expect(selected(snapshot, "::ffff:10.42.7.7", nil) == "nodes")
        #expect(selected(snapshot, "10.42.7.7", basic("team-a", "alpha-secret")) == "team-a", "credentials win over sources")
        #expect(selected(snapshot, "10.42.7.7", basic("team-a", "wrong")) == "nodes", "wrong credentials grant no more than the address")
    }

    @Test func singleAnonymousTenant() throws {
        let snapshot = try policy("tenants:\n  - name: only\n    allow: [{host: x.example}]\n")
        #expect(selected(snapshot, "192.0.2.1", nil) == "only")
        let locked = try policy("tenants:\n  - name: only\n    credentials: {sha256: \(String(repeating: "a", count: 64))}\n")
        #expect(selected(locked, "192.0.2.1", nil) == "407:credentials_required")
    }

    @Test func secretFileIsHashedAndMissingFileIsAnError() throws {
        let path = "/tmp/egress-secret-\(Posix.processID())"
        try #require(writeFile(path, "file-secret\n"))
        let snapshot = try policy("tenants:\n  - name: f\n    credentials: {secretFile: \(path)}\n")
        #expect(selected(snapshot, "192.0.2.1", basic("f", "file-secret")) == "f", "one trailing newline is not part of the secret")
        #expect(selected(snapshot, "192.0.2.1", basic("f", "file-secret\n")) == "407:bad_credentials")
        let missing = try ProxyConfig.parse(yaml: "tenants:\n  - name: f\n    credentials: {secretFile: /nonexistent/x}\n").get()
        #expect(throws: ConfigError.self) { try PolicySnapshot.make(config: missing) }
    }

    @Test func comparisonReadsEveryByteWhereverTheInputsDiffer() {
        let secret = SHA256Digest.hash(Array("alpha-secret".utf8))
        var traces: [[Int]] = []
        for position in [nil, 0, 15, 31] as [Int?] {
            var candidate = secret
            if let position { candidate[position] ^= 0x01 }
            let leftLog = ReadLog()
            let rightLog = ReadLog()
            let equal = ConstantTime.equals(CountingBytes(bytes: candidate, log: leftLog), CountingBytes(bytes: secret, log: rightLog))
            #expect(equal == (position == nil))
            #expect(leftLog.indices == Array(0..<32))
            #expect(rightLog.indices == Array(0..<32))
            traces.append(leftLog.indices + rightLog.indices)
        }
        #expect(Set(traces.map { $0.description }).count == 1, "identical access pattern for every mismatch position")
    }

    @Test func base64IsStrict() {
        #expect(Base64.decode("dXNlcjpwYXNz") == Array("user:pass".utf8))
        #expect(Base64.decode("YQ==") == Array("a".utf8))
        #expect(Base64.decode("YWI=") == Array("ab".utf8))
        #expect(Base64.decode("YQ") == nil)
        #expect(Base64.decode("Y===") == nil)
        #expect(Base64.decode("YQ==YQ==") == nil)
        #expect(Base64.decode("YR==") == nil, "non-zero padding bits")
        #expect(Base64.decode("dXNl cjpw") == nil)
        #expect(BasicCredentials.parse("basic " + base64(Array("n:s:t".utf8)))?.name == "n")
        #expect(BasicCredentials.parse("Basic " + base64(Array("n:s:t".utf8)))?.secretDigest == SHA256Digest.hash(Array("s:t".utf8)))
        #expect(BasicCredentials.parse("Basic " + base64(Array("nocolon".utf8))) == nil)
    }

    @Test func sha256KnownAnswer() {
        #expect(SHA256Digest.hex(SHA256Digest.hash(Array("test".utf8))) == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        #expect(SHA256Digest.fromHex(SHA256Digest.hex(SHA256Digest.hash(Array("x".utf8)))) == SHA256Digest.hash(Array("x".utf8)))
    }

    @Test func tokenBucket() {
        let clock = ManualClock()
        var bucket = TokenBucket(perSecond: 2, burst: 3)
        #expect(bucket.take(now: clock.now()) == nil)
        #expect(bucket.take(now: clock.now()) == nil)
        #expect(bucket.take(now: clock.now()) == nil)
        let wait = bucket.take(now: clock.now())
        #expect(wait != nil && wait! <= .milliseconds(500) && wait! > .milliseconds(490))
        clock.advance(by: .milliseconds(250))
        #expect(bucket.take(now: clock.now()) != nil)
        clock.advance(by: .milliseconds(300))
        #expect(bucket.take(now: clock.now()) == nil, "refilled at 2/s")
        clock.advance(by: .seconds(100))
        for _ in 0..<3 { #expect(bucket.take(now: clock.now()) == nil) }
        #expect(bucket.take(now: clock.now()) != nil, "never more than the burst")
    }

    @Test func tenantSlotsAreSharedAndBounded() throws {
        let registry = TenantRegistry()
        let first = try PolicySnapshot.make(config: try ProxyConfig.parse(yaml: "tenants:\n  - name: t\n    maxTunnels: 2\n").get(), registry: registry)
        let runtime = first.tenants[0].runtime
        #expect(runtime.acquire(limit: 2))
        #expect(runtime.acquire(limit: 2))
        #expect(!runtime.acquire(limit: 2))
        runtime.release()
        #expect(runtime.acquire(limit: 2))
        // A reload keeps the count (same runtime object by name).
        let second = try PolicySnapshot.make(config: try ProxyConfig.parse(yaml: "tenants:\n  - name: t\n").get(), registry: registry)
        #expect(second.tenants[0].runtime === runtime)
        #expect(runtime.activeTunnels == 2)
    }
}

func writeFile(_ path: String, _ text: String) -> Bool {
    FileWriter.write(path, Array(text.utf8))
}
