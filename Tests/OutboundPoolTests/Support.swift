import EgressPosix
import Foundation
import OutboundPool
import Testing

/// The repository root (for Tests/fakes and the egress-proxy binary).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A child process the test owns; killed when the value goes away.
final class Child: @unchecked Sendable {
    let process = Process()
    let stdout = Pipe()
    let stderr = Pipe()
    let stdin = Pipe()

    init(_ executable: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = stdin
        try process.run()
    }

    /// Reads stdout (or stderr) line by line until `match` returns a value.
    func firstLine<T>(fromStderr: Bool = false, _ match: (String) -> T?) -> T? {
        let handle = (fromStderr ? stderr : stdout).fileHandleForReading
        var pending = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { return nil }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...newline)
                if let value = match(line) { return value }
            }
        }
    }

    /// SIGKILL, because a child spawned from a Swift concurrency thread inherits that thread's
    /// blocked signals (SIGTERM among them) and would ignore `terminate()`.
    deinit {
        try? stdin.fileHandleForWriting.close()
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

func jsonField(_ line: String, _ key: String) -> String? {
    guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
    if let value = object[key] as? String { return value }
    if let value = object[key] as? Int { return String(value) }
    return nil
}

/// A self-signed certificate for localhost and 127.0.0.1, made once per test process.
let testCertificate: (cert: String, key: String) = {
    let directory = NSTemporaryDirectory() + "outbound-tls-\(getpid())"
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let cert = directory + "/cert.pem"
    let key = directory + "/key.pem"
    let openssl = Process()
    openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    openssl.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    openssl.standardError = FileHandle.nullDevice
    openssl.standardOutput = FileHandle.nullDevice
    try? openssl.run()
    openssl.waitUntilExit()
    return (cert, key)
}()

/// The Python test server of Tests/fakes, over TLS.
final class FakeHTTPServer {
    let child: Child
    let port: Int

    init(plain: Bool = false) throws {
        var arguments = [repositoryRoot.path + "/Tests/fakes/http_server.py"]
        arguments += plain ? ["--plain"] : ["--cert", testCertificate.cert, "--key", testCertificate.key]
        child = try Child("/usr/bin/env", ["python3"] + arguments)
        guard let port = child.firstLine({ jsonField($0, "port").flatMap(Int.init) }) else {
            throw TestFailure("fake server did not start")
        }
        self.port = port
    }

    var base: String { "https://localhost:\(port)" }
}

/// Our own egress-proxy, allowing loopback destinations, on port 0.
final class EgressProxyProcess {
    let child: Child
    let proxyURL: String
    let adminURL: String

    init() throws {
        let config = NSTemporaryDirectory() + "outbound-proxy-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try """
            listen: 127.0.0.1:0
            admin: 127.0.0.1:0
            tenants:
              - name: pool
                allow: [{host: localhost, ports: ["*"]}, {cidr: 127.0.0.0/8, ports: ["*"]}]
                allowPrivate: [127.0.0.0/8, "::1/128"]
            """.write(toFile: config, atomically: true, encoding: .utf8)
        child = try Child(repositoryRoot.path + "/.build/debug/egress-proxy", ["--config", config, "--loops", "1"])
        guard let started = child.firstLine(fromStderr: true, { line -> (String, String)? in
            guard let listen = jsonField(line, "listen"), let admin = jsonField(line, "admin") else { return nil }
            return (listen, admin)
        }) else { throw TestFailure("egress-proxy did not start") }
        proxyURL = "http://\(started.0)"
        adminURL = "http://\(started.1)"
        // Keep draining stderr (audit lines) so the proxy never blocks on a full pipe.
        let handle = child.stderr.fileHandleForReading
        Thread.detachNewThread { while !handle.availableData.isEmpty {} }
    }

    /// egress_proxy_tunnels_total{result="established"} for the tenant, from /metrics.
    func establishedTunnels(using pool: OutboundPool) async throws -> Int {
        let metrics = try await pool.send(OutboundRequest(url: adminURL + "/metrics")).text
        for line in metrics.split(separator: "\n") where line.hasPrefix("egress_proxy_tunnels_total{tenant=\"pool\",result=\"established\"}") {
            return Int(line.split(separator: " ").last.map(String.init) ?? "") ?? -1
        }
        return -1
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Polls `condition` until true or the deadline passes (no fixed sleeps).
func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return false
}
