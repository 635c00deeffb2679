import EgressPosix
import Foundation
import OutboundPool
import TestSupport
import Testing

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
    let fake: PythonFake
    var port: Int { fake.port }

    init(plain: Bool = false) throws {
        fake = try PythonFake("http_server.py", plain ? ["--plain"] : ["--cert", testCertificate.cert, "--key", testCertificate.key])
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
