import EgressLoop
import EgressPosix
import GatewayOps
import Glibc
import Testing

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

    /// Sends `request` on a new connection and steps the loop until the server closes it.
    func exchange(_ request: String) throws -> String {
        let client = try Socket.tcp(family: AF_INET)
        _ = try client.connect(to: server.boundAddress)
        var unsent = Array(request.utf8)[...]
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            loop.runIteration(timeout: 5)
            if !unsent.isEmpty, case .processed(let n)? = try? unsent.withUnsafeBytes({ try client.write(from: $0) }) {
                unsent = unsent.dropFirst(n)
            }
            switch try buffer.withUnsafeMutableBytes({ try client.read(into: $0) }) {
            case .processed(0): return String(decoding: received, as: UTF8.self)
            case .processed(let n): received += buffer[..<n]
            case .wouldBlock: continue
            }
        }
        Issue.record("no close within the deadline; got \(received.count) bytes")
        return String(decoding: received, as: UTF8.self)
    }

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
