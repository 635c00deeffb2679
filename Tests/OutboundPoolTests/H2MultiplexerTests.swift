import Foundation
import OutboundPool
import Synchronization
import TestSupport
import Testing

/// Collects `begin` results; completions arrive on the pool's loop.
final class Results: Sendable {
    private let results = Mutex<[Result<OutboundResponse, OutboundError>]>([])

    func add(_ result: Result<OutboundResponse, OutboundError>) { results.withLock { $0.append(result) } }
    var all: [Result<OutboundResponse, OutboundError>] { results.withLock { $0 } }
    var count: Int { results.withLock { $0.count } }
}

func longPoll(_ url: String, timeout: Duration = .seconds(30)) -> OutboundRequest {
    var request = OutboundRequest(url: url, headers: [("Authorization", "Bearer session-token")], timeout: timeout, retry: false, maxAttempts: 1)
    request.longPoll = true
    return request
}

/// The pool's own HTTP/2 client for held long polls (`OutboundRequest.longPoll`), against
/// nghttpx as the HTTP/2 origin and our egress proxy in between; assertions are on what the
/// proxy and the origin saw where they can tell. Part of the serialized `OutboundPoolTests`:
/// these pools read HTTPS_PROXY too, which `environmentProxyVariablesAreHonoured` sets for a
/// moment, so they must never run beside it.
extension OutboundPoolTests {
    /// 250 held polls through the proxy: 100 streams a connection (the server's limit), so
    /// three tunnels, every answer HTTP/2 and complete.
    @Test func heldPollsShareConnectionsThroughTheProxy() async throws {
        let front = try HTTP2Front()
        let proxy = try EgressProxyProcess()
        let pool = try OutboundPool(configuration: PoolConfiguration(proxy: proxy.proxyURL, caBundle: testCertificate.cert))
        let direct = try OutboundPool()
        defer {
            pool.shutdown()
            direct.shutdown()
        }
        let results = Results()
        let calls = (0..<250).map { _ in pool.begin(longPoll(front.base + "/slow?ms=1500")) { results.add($0) } }
        #expect(try await eventually { await pool.statistics().activeTransfers == 250 })
        #expect(try await eventually(timeout: .seconds(30)) { results.count == 250 })
        for result in results.all {
            guard case .success(let response) = result else {
                Issue.record("a held poll failed: \(result)")
                continue
            }
            #expect(response.status == 200 && response.text == "slow" && response.httpVersion == "2")
        }
        #expect(try await proxy.establishedTunnels(using: direct) == 3, "250 streams, 100 a connection: three tunnels")
        let stats = await pool.statistics()
        #expect(stats.requests["localhost:\(front.port) 2xx"] == 250)
        #expect(stats.multiplexedRequests == 250, "no poll went to curl")
        #expect(stats.activeTransfers == 0)
        _ = calls
    }

    /// A poll past its deadline ends as `.timeout`; a cancelled one as `.cancelled`, at once;
    /// the connection carries on for the next poll.
    @Test func deadlinesAndCancelEndStreamsNotTheConnection() async throws {
        let front = try HTTP2Front()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let timedOut = Results()
        let cancelled = Results()
        _ = pool.begin(longPoll(front.base + "/hang", timeout: .seconds(2))) { timedOut.add($0) }
        let held = pool.begin(longPoll(front.base + "/hang")) { cancelled.add($0) }
        #expect(try await eventually { await pool.statistics().activeTransfers == 2 })
        held.cancel()
        #expect(try await eventually { cancelled.count == 1 })
        if case .failure(let error) = cancelled.all.first { #expect(error.kind == .cancelled) } else { Issue.record("cancel answered") }
        #expect(try await eventually(timeout: .seconds(6)) { timedOut.count == 1 })
        if case .failure(let error) = timedOut.all.first { #expect(error.kind == .timeout) } else { Issue.record("/hang answered") }
        let after = Results()
        _ = pool.begin(longPoll(front.base + "/hello")) { after.add($0) }
        #expect(try await eventually { after.count == 1 })
        #expect((try? after.all.first?.get())?.text == "hello")
        let stats = await pool.statistics()
        #expect(stats.activeTransfers == 0)
        #expect(stats.openSockets == 1 && stats.multiplexedConnections == 1, "one connection carried all three streams")
        #expect(stats.multiplexedRequests == 3)
        held.cancel()  // after the end: harmless
        #expect(cancelled.count == 1)
    }

    /// An origin whose ALPN picks HTTP/1.1 (the Python test server) is curl's: the poll is
    /// answered over HTTP/1.1, and so is the next one.
    @Test func anHTTP1OriginIsLeftToCurl() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let results = Results()
        for _ in 0..<2 { _ = pool.begin(longPoll(server.base + "/hello")) { results.add($0) } }
        #expect(try await eventually { results.count == 2 })
        for result in results.all { #expect((try? result.get())?.httpVersion == "1.1") }
        #expect(await pool.statistics().multiplexedRequests == 0)
        #expect((try? results.all.first?.get())?.text == "hello")
    }

    /// The origin dies without a GOAWAY: every held stream fails as a connection error at
    /// once (no one waits out its 30 s deadline).
    @Test func aLostConnectionFailsEveryHeldStream() async throws {
        let front = try HTTP2Front()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let results = Results()
        for _ in 0..<20 { _ = pool.begin(longPoll(front.base + "/hang")) { results.add($0) } }
        #expect(try await eventually { await pool.statistics().activeTransfers == 20 })
        front.kill()
        #expect(try await eventually(timeout: .seconds(5)) { results.count == 20 })
        for result in results.all {
            if case .failure(let error) = result { #expect(error.kind == .connect) } else { Issue.record("answered after the kill") }
        }
        #expect(await pool.statistics().multiplexedRequests == 20)
        #expect(await pool.statistics().openSockets == 0)
    }

    /// TLS is verified: without the test CA the handshake fails as `.tls`, naming the cause.
    @Test func anUntrustedCertificateIsATLSError() async throws {
        let front = try HTTP2Front()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: "/etc/ssl/certs/ca-certificates.crt"))
        defer { pool.shutdown() }
        let results = Results()
        _ = pool.begin(longPoll(front.base + "/hello")) { results.add($0) }
        #expect(try await eventually { results.count == 1 })
        guard case .failure(let error) = results.all.first else {
            Issue.record("an untrusted server was accepted")
            return
        }
        #expect(error.kind == .tls)
        #expect(error.detail.contains("certificate"), "\(error.detail)")
    }

    /// A proxy that refuses the CONNECT (our egress proxy, for a port its policy denies) is a
    /// `.proxy` error carrying its status line.
    @Test func aRefusedConnectIsAProxyError() async throws {
        let proxy = try EgressProxyProcess(allowLoopback: false)
        let pool = try OutboundPool(configuration: PoolConfiguration(proxy: proxy.proxyURL, caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let results = Results()
        _ = pool.begin(longPoll("https://localhost:9/x")) { results.add($0) }
        #expect(try await eventually { results.count == 1 })
        guard case .failure(let error) = results.all.first else {
            Issue.record("a refused CONNECT answered")
            return
        }
        #expect(error.kind == .proxy)
        #expect(error.detail.contains("403"), "\(error.detail)")
    }
}
