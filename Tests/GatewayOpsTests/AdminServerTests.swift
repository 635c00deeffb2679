import EgressLoop
import EgressPosix
import Glibc
import Testing

@testable import GatewayOps

/// Sends `bytes` on a new connection to `server` and steps `loop` until the server closes it
/// (a reset counts as the close: a server refusing a body it has not read may reset).
func exchangeRequest(_ bytes: [UInt8], with server: AdminServer, on loop: EventLoop) throws -> String {
    let client = try Socket.tcp(family: AF_INET)
    _ = try client.connect(to: server.boundAddress)
    var unsent = bytes[...]
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        loop.runIteration(timeout: 5)
        if !unsent.isEmpty, case .processed(let n)? = try? unsent.withUnsafeBytes({ try client.write(from: $0) }) {
            unsent = unsent.dropFirst(n)
        }
        switch try? buffer.withUnsafeMutableBytes({ try client.read(into: $0) }) {
        case .processed(0)?, nil: return String(decoding: received, as: UTF8.self)
        case .processed(let n)?: received += buffer[..<n]
        case .wouldBlock?: continue
        }
    }
    Issue.record("no close within the deadline; got \(received.count) bytes")
    return String(decoding: received, as: UTF8.self)
}

/// The admin endpoint on a loop the test steps itself (`runIteration`), with plain sockets
/// as clients on 127.0.0.1: what a probe or a scraper reads back.
@Suite struct AdminServerTests {
    final class Served {
        var paths: [String] = []
    }

    let loop: EventLoop
    let served = Served()
    let server: AdminServer

    init() throws {
        loop = try EventLoop(name: "admin-test")
        let served = self.served
        server = try AdminServer(loop: loop, address: try #require(SocketAddress(parsing: "127.0.0.1:0"))) { _, path, respond in
            served.paths.append(path)
            switch path {
            case "/healthz": respond(AdminResponse(status: 200, body: "ok\n"))
            default: respond(AdminResponse(status: 404, body: "not found\n"))
            }
        }
    }

    func exchange(_ request: String) throws -> String { try exchangeRequest(Array(request.utf8), with: server, on: loop) }

    @Test func getIsRoutedAndAnsweredWithLengthAndClose() throws {
        let reply = try exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(reply.contains("Content-Length: 3\r\n") && reply.contains("Connection: close\r\n"))
        #expect(reply.hasSuffix("\r\n\r\nok\n"))
        #expect(served.paths == ["/healthz"])
    }

    @Test func headHasTheSameHeadAndNoBody() throws {
        let reply = try exchange("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 200 OK\r\n") && reply.contains("Content-Length: 3\r\n"))
        #expect(reply.hasSuffix("\r\n\r\n"), "a body after HEAD would be read as the next response")
    }

    @Test func otherMethodsAre405BeforeTheRouterSeesThem() throws {
        let reply = try exchange("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 405 "))
        #expect(served.paths.isEmpty)
    }

    @Test func silentClientsCannotLockAProbeOut() throws {
        /// Keeps a socket open in an array (arrays hold copyable values only).
        final class Held {
            let socket: Socket
            init(_ socket: consuming Socket) { self.socket = socket }
        }
        var silent: [Held] = []
        for _ in 0..<(AdminServer.maxConnections + 5) {
            let socket = try Socket.tcp(family: AF_INET)
            _ = try socket.connect(to: server.boundAddress)
            silent.append(Held(socket))
            loop.runIteration(timeout: 1)
        }
        let reply = try exchange("GET /healthz HTTP/1.1\r\n\r\n")
        #expect(reply.hasPrefix("HTTP/1.1 200 OK\r\n"), "the oldest silent connection made room")
        _ = silent
    }
}

/// POST bodies on a server that takes them (the GMC's webhook endpoint): delivered whole, and
/// bounded before they are read.
@Suite struct AdminServerPostTests {
    final class Seen { var posts: [AdminServer.Post] = [] }

    let loop: EventLoop
    let seen = Seen()
    let server: AdminServer

    init() throws {
        loop = try EventLoop(name: "post-test")
        let seen = self.seen
        server = try AdminServer(
            loop: loop, address: try #require(SocketAddress(parsing: "127.0.0.1:0")),
            router: { _, _, respond in respond(AdminResponse(status: 404, body: "")) },
            post: { post, respond in
                seen.posts.append(post)
                respond(AdminResponse(status: 202, body: "took \(post.body.count)\n"))
            },
            bodyLimits: .init(maxBody: 100_000, inFlightBudget: 150_000))
    }

    func exchange(_ bytes: [UInt8]) throws -> String { try exchangeRequest(bytes, with: server, on: loop) }

    func post(_ body: [UInt8], headers: String = "") -> [UInt8] {
        Array("POST /webhook?x=1 HTTP/1.1\r\nHost: h\r\nX-GitHub-Event: ping\r\nContent-Length: \(body.count)\r\n\(headers)\r\n".utf8) + body
    }

    @Test func aBodyArrivingInPiecesIsDeliveredWholeWithItsHeaders() throws {
        let body = (0..<60_000).map { UInt8(truncatingIfNeeded: $0) }
        let reply = try exchange(post(body))
        #expect(reply.hasPrefix("HTTP/1.1 202 Accepted\r\n") && reply.hasSuffix("took 60000\n"))
        #expect(seen.posts.count == 1 && seen.posts.first?.body == body)
        #expect(seen.posts.first?.path == "/webhook" && seen.posts.first?.headers["x-github-event"] == "ping", "names lowercased")
    }

    @Test func anOversizedBodyIsRefusedFromItsHeadAlone() throws {
        let head = Array("POST /webhook HTTP/1.1\r\nContent-Length: 100001\r\n\r\n".utf8)
        #expect(try exchange(head).hasPrefix("HTTP/1.1 413 "))
        #expect(seen.posts.isEmpty)
    }

    @Test func chunkedAndUnframedBodiesNeedALength() throws {
        #expect(try exchange(Array("POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 411 "))
        #expect(try exchange(Array("POST /webhook HTTP/1.1\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 411 "))
        #expect(seen.posts.isEmpty)
    }

    @Test func bodiesBeingReadAtOnceStayWithinTheBudget() throws {
        // A sender that promises 90 kB and stalls holds 90 kB of the 150 kB budget ...
        final class Held {
            let socket: Socket
            init(_ socket: consuming Socket) { self.socket = socket }
        }
        let staller = Held(try Socket.tcp(family: AF_INET))
        _ = try staller.socket.connect(to: server.boundAddress)
        let promise = Array("POST /webhook HTTP/1.1\r\nContent-Length: 90000\r\n\r\n".utf8)
        let deadline = ContinuousClock.now + .seconds(5)
        var sent = false
        while !sent, ContinuousClock.now < deadline {
            loop.runIteration(timeout: 5)
            if case .processed? = try? promise.withUnsafeBytes({ try staller.socket.write(from: $0) }) { sent = true }
        }
        // Until the server has read the promise (polled with a deadline, not a fixed wait).
        while server.bodyBytesInFlight != 90_000, ContinuousClock.now < deadline { loop.runIteration(timeout: 5) }
        #expect(server.bodyBytesInFlight == 90_000, "the stalled body is counted")
        // ... so another 90 kB body is refused, and a small one still goes through.
        #expect(try exchange(post(Array(repeating: 1, count: 90_000))).hasPrefix("HTTP/1.1 503 "))
        #expect(try exchange(post(Array(repeating: 1, count: 1_000))).hasPrefix("HTTP/1.1 202 "))
    }
}
