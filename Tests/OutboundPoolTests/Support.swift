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

    /// `allowLoopback: false`: a tenant allowed nothing, so every CONNECT gets 403.
    init(allowLoopback: Bool = true) throws {
        let allow = allowLoopback ? "[{host: localhost, ports: [\"*\"]}, {cidr: 127.0.0.0/8, ports: [\"*\"]}]" : "[{host: example.invalid, ports: [443]}]"
        let config = NSTemporaryDirectory() + "outbound-proxy-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try """
            listen: 127.0.0.1:0
            admin: 127.0.0.1:0
            tenants:
              - name: pool
                allow: \(allow)
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

/// nghttpx (Debian's nghttp2-proxy) serving TLS and HTTP/2, 100 streams per connection as
/// GitHub does, in front of the plain HTTP/1.1 test server: the origin a long poll meets on
/// GitHub. Stopped (by PID, it is ours) when released.
final class HTTP2Front {
    let backend: FakeHTTPServer
    let child: Child
    let port: Int

    init() throws {
        backend = try FakeHTTPServer(plain: true)
        port = try freeLoopbackPort()
        child = try Child("/usr/sbin/nghttpx", [
            "--frontend=127.0.0.1,\(port)", "--backend=127.0.0.1,\(backend.port);;proto=http/1.1", "--workers=1",
            "--backend-connections-per-host=2000", "--frontend-http2-max-concurrent-streams=100", "--no-ocsp",
            "--conf=/dev/null", "--errorlog-file=/dev/null", "--accesslog-file=/dev/null",
            testCertificate.key, testCertificate.cert,
        ])
        let port = self.port
        let pid = child.process.processIdentifier
        let deadline = ContinuousClock.now + .seconds(20)
        while listeningPort(pid: pid) != port {
            guard ContinuousClock.now < deadline, child.process.isRunning else { throw TestFailure("nghttpx did not listen on \(port)") }
            usleep(20_000)
        }
    }

    var base: String { "https://localhost:\(port)" }

    /// Stops nghttpx now (SIGKILL: connections drop without GOAWAY, as on a network failure).
    func kill() {
        if child.process.isRunning { Glibc.kill(child.process.processIdentifier, SIGKILL) }
        child.process.waitUntilExit()
    }
}

/// A loopback port nothing listens on right now (for servers that cannot take port 0).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw TestFailure("bind failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}
