import Foundation
import OutboundPool
import Synchronization
import Testing
import TestSupport
import Vocabulary

@Suite(.serialized) struct OutboundPoolTests {
    @Test func http11KeepAliveThroughOurProxy() async throws {
        let server = try FakeHTTPServer()
        let proxy = try EgressProxyProcess()
        let pool = try OutboundPool(configuration: PoolConfiguration(proxy: proxy.proxyURL, caBundle: testCertificate.cert))
        let direct = try OutboundPool()
        defer {
            pool.shutdown()
            direct.shutdown()
        }
        for _ in 0..<20 {
            let response = try await pool.send(OutboundRequest(url: server.base + "/hello"))
            #expect(response.status == 200)
            #expect(response.text == "hello")
            #expect(response.httpVersion == "1.1")
        }
        let stats = try await pool.send(OutboundRequest(url: server.base + "/stats")).text
        #expect(stats.contains("\"connections\": 1"), "one kept-alive connection carried every request: \(stats)")
        #expect(try await proxy.establishedTunnels(using: direct) == 1, "the proxy counted exactly one tunnel")
        let posted = try await pool.send(OutboundRequest(method: "POST", url: server.base + "/echo", body: Array("payload".utf8)))
        #expect(posted.text == "payload")
        let poolStats = await pool.statistics()
        #expect(poolStats.requests["localhost:\(server.port) 2xx"] == 22)
        #expect(poolStats.rateLimitRemaining["localhost:\(server.port)"] == 4999)
        var writer = PrometheusWriter()
        poolStats.write(into: &writer, prefix: "agc")
        #expect(writer.text.contains("agc_github_ratelimit_remaining{host=\"localhost:\(server.port)\"} 4999"))
        let promtool = try Child("/usr/bin/promtool", ["check", "metrics"])
        promtool.stdin.fileHandleForWriting.write(Data(writer.text.utf8))
        try promtool.stdin.fileHandleForWriting.close()
        promtool.process.waitUntilExit()
        #expect(promtool.process.terminationStatus == 0, "promtool check metrics rejected the pool's series")
    }

    @Test func http2CarriesAHundredConcurrentRequestsOnOneConnection() async throws {
        let root = NSTemporaryDirectory() + "h2-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try "multiplexed\n".write(toFile: root + "/index.html", atomically: true, encoding: .utf8)
        let nghttpd = try Child("/usr/sbin/nghttpd", ["-a", "127.0.0.1", "-d", root, "0", testCertificate.key, testCertificate.cert])
        var port = 0
        #expect(try await eventually {
            port = listeningPort(pid: nghttpd.process.processIdentifier) ?? 0
            return port != 0
        })
        let proxy = try EgressProxyProcess()
        let pool = try OutboundPool(configuration: PoolConfiguration(proxy: proxy.proxyURL, caBundle: testCertificate.cert))
        let direct = try OutboundPool()
        defer {
            pool.shutdown()
            direct.shutdown()
        }
        let url = "https://localhost:\(port)/index.html"
        _ = try await pool.send(OutboundRequest(url: url))  // one connection up first, so the rest can wait for it
        let results = try await withThrowingTaskGroup(of: OutboundResponse.self) { group in
            for _ in 0..<100 { group.addTask { try await pool.send(OutboundRequest(url: url)) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 100)
        #expect(results.allSatisfy { $0.status == 200 && $0.text == "multiplexed\n" && $0.httpVersion == "2" })
        #expect(try await proxy.establishedTunnels(using: direct) == 1, "101 requests, one TCP connection, one tunnel")
    }

    /// With no explicit proxy, HTTPS_PROXY and NO_PROXY decide, as for curl. (This suite is
    /// serialized and the only one making https requests without an explicit proxy.)
    @Test func environmentProxyVariablesAreHonoured() async throws {
        let server = try FakeHTTPServer()
        let proxy = try EgressProxyProcess()
        let direct = try OutboundPool()
        defer {
            unsetenv("HTTPS_PROXY")
            unsetenv("NO_PROXY")
            direct.shutdown()
        }
        setenv("HTTPS_PROXY", proxy.proxyURL, 1)
        setenv("NO_PROXY", "", 1)
        let viaEnvironment = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        #expect(try await viaEnvironment.send(OutboundRequest(url: server.base + "/hello")).text == "hello")
        viaEnvironment.shutdown()
        #expect(try await proxy.establishedTunnels(using: direct) == 1, "HTTPS_PROXY sent the request through the proxy")
        setenv("NO_PROXY", "localhost", 1)
        let bypassing = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        #expect(try await bypassing.send(OutboundRequest(url: server.base + "/hello")).text == "hello")
        bypassing.shutdown()
        #expect(try await proxy.establishedTunnels(using: direct) == 1, "NO_PROXY=localhost went direct")
    }

    @Test func cancellationRemovesTheTransferAtOnce() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let task = Task { try await pool.send(OutboundRequest(url: server.base + "/hang", timeout: .seconds(60))) }
        #expect(try await eventually { await pool.statistics().activeTransfers == 1 })
        task.cancel()
        do {
            _ = try await task.value
            Issue.record("a cancelled request returned")
        } catch let error as OutboundError {
            #expect(error.kind == .cancelled)
        }
        #expect(await pool.statistics().activeTransfers == 0)
    }

    /// `begin`: the completion is called exactly once, with the answer, or with `.cancelled`
    /// after `cancel` (a cancel after the answer changes nothing).
    @Test func beginCompletesOnceAndCancelRemovesTheTransfer() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let results = Mutex<[Result<OutboundResponse, OutboundError>]>([])
        let answered = pool.begin(OutboundRequest(url: server.base + "/hello")) { result in results.withLock { $0.append(result) } }
        #expect(try await eventually { results.withLock { $0.count } == 1 })
        answered.cancel()
        let held = pool.begin(OutboundRequest(url: server.base + "/hang", timeout: .seconds(60))) { result in
            results.withLock { $0.append(result) }
        }
        #expect(try await eventually { await pool.statistics().activeTransfers == 1 })
        held.cancel()
        #expect(try await eventually { results.withLock { $0.count } == 2 })
        #expect(await pool.statistics().activeTransfers == 0)
        let seen = results.withLock { $0 }
        #expect((try? seen[0].get())?.status == 200)
        if case .failure(let error) = seen[1] { #expect(error.kind == .cancelled) } else { Issue.record("the held call was answered") }
        // A cancel issued before the pool's loop made the transfer still cancels it.
        let early = pool.begin(OutboundRequest(url: server.base + "/hang", timeout: .seconds(60))) { result in
            results.withLock { $0.append(result) }
        }
        early.cancel()
        #expect(try await eventually { results.withLock { $0.count } == 3 })
        if case .failure(let error) = results.withLock({ $0[2] }) { #expect(error.kind == .cancelled) } else { Issue.record("answered") }
        #expect(await pool.statistics().activeTransfers == 0)
    }

    @Test func timeoutIsTyped() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        do {
            _ = try await pool.send(OutboundRequest(url: server.base + "/hang", timeout: .milliseconds(300), retry: false))
            Issue.record("no timeout")
        } catch {
            #expect(error.kind == .timeout, "\(error)")
        }
    }

    @Test func serverClosingMidBodyIsAConnectionError() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        do {
            _ = try await pool.send(OutboundRequest(url: server.base + "/truncated", retry: false))
            Issue.record("a truncated body was accepted")
        } catch {
            #expect(error.kind == .connect, "\(error)")
        }
    }

    @Test func errorsAreTypedWithCurlDetail() async throws {
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let closed = try FakeHTTPServer()
        let port = closed.port
        _ = consume closed  // stops the server; its port is now closed
        do {
            _ = try await pool.send(OutboundRequest(url: "https://localhost:\(port)/", retry: false))
            Issue.record("connected to a closed port")
        } catch {
            #expect(error.kind == .connect, "\(error)")
        }
        let untrusted = try FakeHTTPServer()
        let plainPool = try OutboundPool()  // system CAs do not know our test certificate
        defer { plainPool.shutdown() }
        do {
            _ = try await plainPool.send(OutboundRequest(url: untrusted.base + "/hello", retry: false))
            Issue.record("accepted an untrusted certificate")
        } catch {
            #expect(error.kind == .tls, "\(error)")
            #expect(!error.detail.isEmpty)
        }
        do {
            _ = try await pool.send(OutboundRequest(url: untrusted.base + "/missing", retry: false))
        } catch {
            #expect(error.kind == .http(404))
            #expect(error.response?.text == "not found")
        }
    }

    @Test func retriesHonourRetryAfterAndSkipNonIdempotentRequests() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let started = ContinuousClock.now
        let limited = try await pool.send(OutboundRequest(url: server.base + "/once/429?key=a"))
        #expect(limited.text == "recovered")
        #expect(ContinuousClock.now - started >= .seconds(1), "Retry-After: 1 was honoured")
        let unavailable = try await pool.send(OutboundRequest(url: server.base + "/once/503?key=b"))
        #expect(unavailable.text == "recovered")
        do {
            _ = try await pool.send(OutboundRequest(method: "POST", url: server.base + "/once/503?key=c", body: []))
            Issue.record("a POST was retried")
        } catch {
            #expect(error.kind == .http(503))
        }
        let forced = try await pool.send(OutboundRequest(method: "POST", url: server.base + "/once/503?key=d", body: [], retry: true))
        #expect(forced.text == "recovered")
    }

    @Test func streamsTenThousandLinesInOrderWithBoundedMemory() async throws {
        let server = try FakeHTTPServer()
        let pool = try OutboundPool(configuration: PoolConfiguration(caBundle: testCertificate.cert))
        defer { pool.shutdown() }
        let stream = pool.stream(OutboundRequest(url: server.base + "/lines?n=10000"), highWater: 64 * 1024)
        var iterator = stream.makeAsyncIterator()
        var received = try await iterator.next() ?? []
        // The consumer stops reading: curl must pause with at most ~highWater queued.
        #expect(try await eventually { stream.observed.paused })
        #expect(stream.observed.maxBytes <= 64 * 1024 + 16 * 1024, "queued \(stream.observed.maxBytes) bytes")
        while let chunk = try await iterator.next() { received += chunk }
        let lines = String(decoding: received, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 10_000)
        for (index, line) in lines.enumerated() where !line.contains("\"index\": \(index),") {
            Issue.record("line \(index) out of order: \(line)")
            break
        }
        var count = 0
        for try await line in pool.stream(OutboundRequest(url: server.base + "/lines?n=2500")).lines {
            #expect(line.contains("\"index\": \(count),"))
            count += 1
        }
        #expect(count == 2500)
    }
}

/// The TCP port a process listens on (from `ss`), for servers that cannot print it.
func listeningPort(pid: Int32) -> Int? {
    let ss = Process()
    ss.executableURL = URL(fileURLWithPath: "/usr/bin/ss")
    ss.arguments = ["-Htlnp"]
    let pipe = Pipe()
    ss.standardOutput = pipe
    try? ss.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    ss.waitUntilExit()
    for line in output.split(separator: "\n") where line.contains("pid=\(pid),") {
        let local = line.split(separator: " ", omittingEmptySubsequences: true)[3]
        return Int(local.split(separator: ":").last ?? "")
    }
    return nil
}

@Suite(.serialized) struct OutboundPoolMemoryTests {
    /// 1,000 long-polls held open at once through our proxy (the AGC holds that many). Asserts
    /// they were all in flight together; prints the process RSS per request for the notes.
    @Test func thousandLongPollsHeldThroughTheProxy() async throws {
        let server = try FakeHTTPServer()
        let proxy = try EgressProxyProcess()
        var configuration = PoolConfiguration(proxy: proxy.proxyURL, caBundle: testCertificate.cert)
        configuration.maxConnectionsPerHost = 1000  // HTTP/1.1 server: one connection per long-poll
        let pool = try OutboundPool(configuration: configuration)
        let direct = try OutboundPool()
        defer {
            pool.shutdown()
            direct.shutdown()
        }
        _ = try await pool.send(OutboundRequest(url: server.base + "/hello"))
        let before = residentKiB()
        let url = server.base + "/hang"
        let polls = (0..<1000).map { _ in
            Task { try await pool.send(OutboundRequest(url: url, timeout: .seconds(120), retry: false)) }
        }
        #expect(try await eventually(timeout: .seconds(60)) { await pool.statistics().activeTransfers == 1000 })
        #expect(try await eventually(timeout: .seconds(60)) { try await proxy.establishedTunnels(using: direct) >= 1000 })
        let holding = residentKiB()
        print("outbound-pool: 1000 long-polls held; RSS \(before) KiB -> \(holding) KiB, \((holding - before) * 1024 / 1000) bytes per request")
        for poll in polls { poll.cancel() }
        for poll in polls { _ = try? await poll.value }
        #expect(await pool.statistics().activeTransfers == 0)
    }
}

func residentKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
    return 0
}
