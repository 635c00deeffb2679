import EgressLoop
import EgressPosix
import Vocabulary

/// One admin HTTP response. Always sent with `Connection: close`.
public struct AdminResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: String

    public init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 202: return "Accepted"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 401: return "Unauthorized"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 431: return "Request Header Fields Too Large"
        case 503: return "Service Unavailable"
        default: return "Status"
        }
    }

    /// The wire form. For HEAD the head is the same (Content-Length included, RFC 9110 9.3.2)
    /// but no body follows: a client that sent HEAD would read any body as its next response.
    func serialized(withBody: Bool = true) -> [UInt8] {
        let body = Array(self.body.utf8)
        let head = "HTTP/1.1 \(status) \(Self.reason(status))\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        return withBody ? Array(head.utf8) + body : Array(head.utf8)
    }
}

/// The plain HTTP/1.1 admin endpoint (/healthz, /readyz, /metrics, ...), served on one
/// EventLoop. One GET or HEAD per connection (HEAD answered without a body, anything else 405
/// before the router sees it); the router answers through `respond`, possibly
/// later (after gathering state from other loops), but always on this server's loop.
public final class AdminServer: LoopHandler {
    public typealias Router = (_ method: String, _ path: String, _ respond: @escaping (AdminResponse) -> Void) -> Void

    /// A POST with its body, for a server that takes them (the GMC's webhook endpoint): the
    /// path, the header fields (names lowercased, first value kept) and the raw body.
    public struct Post: Sendable {
        public var path: String
        public var headers: [String: String]
        public var body: [UInt8]
    }

    public typealias PostRouter = (_ post: Post, _ respond: @escaping (AdminResponse) -> Void) -> Void

    /// How a server that takes POSTs bounds their bodies: each at most `maxBody` bytes (larger
    /// is 413, before a byte of it is read), and all bodies being read at once at most
    /// `inFlightBudget` (past it 503), so slow senders of large bodies cannot exhaust memory.
    public struct BodyLimits: Sendable {
        public var maxBody: Int
        public var inFlightBudget: Int

        public init(maxBody: Int, inFlightBudget: Int) {
            self.maxBody = maxBody
            self.inFlightBudget = inFlightBudget
        }
    }

    /// Connections at once. Past it, the oldest connection still sending its request is
    /// dropped for the new one, so clients that connect and stay silent cannot lock the
    /// health checks out (a probe sends its request at once and is gone in milliseconds).
    /// Processes budget this many descriptors for the admin endpoint.
    public static let maxConnections = 32

    private let loop: EventLoop
    private var listener: Socket
    private var registration: Registration?
    private let router: Router
    private let postRouter: PostRouter?
    let bodyLimits: BodyLimits
    /// Body bytes promised by the Content-Length of POSTs being read now.
    var bodyBytesInFlight = 0
    public let boundAddress: SocketAddress
    /// Open connections, oldest first (at most `maxConnections`).
    private var connections: [AdminConnection] = []
    /// One descriptor held back for the moment the process runs out of them: released to
    /// accept one health check, taken again when that connection closes.
    private var spare = SpareDescriptor()

    /// Binds and starts serving. Call on `loop`'s thread. Without `post`, every POST is 405.
    public init(loop: EventLoop, address: SocketAddress, router: @escaping Router, post: PostRouter? = nil,
                bodyLimits: BodyLimits = BodyLimits(maxBody: 0, inFlightBudget: 0)) throws(IOError) {
        self.loop = loop
        self.router = router
        self.postRouter = post
        self.bodyLimits = bodyLimits
        let socket = try Socket.listening(on: address, reusePort: false, backlog: 128)
        boundAddress = try socket.localAddress()
        let fd = socket.descriptor
        listener = consume socket
        registration = try loop.register(fd, events: [.readable], handler: self)
    }

    public func handle(events: EpollEvents, tag: UInt32) {
        while true {
            guard listener.isOpen else { return }
            var peer: SocketAddress?
            let accepted: Socket?
            do {
                accepted = try listener.accept(peer: &peer)
            } catch {
                guard error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem, spare.isHeld else {
                    return  // the admin endpoint degrades, the proxy goes on
                }
                spare.release()
                continue
            }
            guard let accepted else { return }
            if connections.count >= Self.maxConnections {
                guard let silent = connections.firstIndex(where: { !$0.routed }) else {
                    continue  // every slot is answering: this one is closed at once (`accepted` goes out of scope)
                }
                connections[silent].finish()
            }
            if let connection = AdminConnection.start(socket: accepted, server: self) {
                connections.append(connection)
            } else {
                spare.restore()
            }
        }
    }

    fileprivate func closed(_ connection: AdminConnection) {
        connections.removeAll { $0 === connection }
        spare.restore()
    }

    fileprivate var eventLoop: EventLoop { loop }
    fileprivate var routes: Router { router }
    fileprivate var postRoutes: PostRouter? { postRouter }

    /// Stops accepting. Call on the loop's thread.
    public func close() {
        if let registration { loop.deregister(registration) }
        registration = nil
        listener.close()
    }
}

/// One admin request: read the head (8 KiB at most, 10 s at most) and, for a POST, its body
/// (Content-Length only, within the server's `BodyLimits`), route, write, close.
final class AdminConnection: LoopHandler, TimerTarget {
    private var socket: Socket
    private let loop: EventLoop
    private let router: AdminServer.Router
    private weak var server: AdminServer?
    private var registration: Registration?
    private var timer: TimerHandle?
    private var request: [UInt8] = []
    private var output: [UInt8] = []
    private var written = 0
    /// The request head is in: the connection is answering (or has answered).
    private(set) var routed = false
    private var isHead = false
    /// A POST whose body is still arriving: its head's end and its Content-Length (counted in
    /// the server's `bodyBytesInFlight` until the connection ends).
    private var pendingPost: (path: String, headers: [String: String], headEnd: Int, length: Int)?

    /// Nil when the socket cannot be registered (it is closed then).
    fileprivate static func start(socket: consuming Socket, server: AdminServer) -> AdminConnection? {
        let fd = socket.descriptor
        let connection = AdminConnection(socket: socket, server: server)
        do {
            connection.registration = try server.eventLoop.register(fd, events: [.readable, .writable, .readHangup], handler: connection)
        } catch {
            connection.server = nil
            connection.finish()
            return nil
        }
        connection.timer = server.eventLoop.schedule(after: .seconds(10), target: connection)
        return connection
    }

    private init(socket: consuming Socket, server: AdminServer) {
        self.socket = socket
        self.loop = server.eventLoop
        self.router = server.routes
        self.server = server
    }

    func handle(events: EpollEvents, tag: UInt32) {
        if !routed || pendingPost != nil { readRequest() }
        if !output.isEmpty { flush() }
    }

    func timerFired(_ token: UInt64) {
        timer = nil
        if routed { finish() } else { respond(AdminResponse(status: 408, body: "request timeout\n")) }
    }

    private func readRequest() {
        var chunk = [UInt8](repeating: 0, count: pendingPost == nil ? 2048 : 65536)
        while !routed || pendingPost != nil {
            let result: IOResult<Int>
            guard socket.isOpen else { return }
            do {
                result = try chunk.withUnsafeMutableBytes { raw throws(IOError) in try socket.read(into: raw) }
            } catch {
                finish()
                return
            }
            switch result {
            case .wouldBlock: return
            case .processed(0):
                finish()
                return
            case .processed(let count):
                request.append(contentsOf: chunk[0..<count])
                if let post = pendingPost {
                    if request.count >= post.headEnd + post.length { deliver(post) }
                    continue
                }
                if request.count > 8192 && Self.headEnd(request) == nil {
                    respond(AdminResponse(status: 431, body: "request header too large\n"))
                    return
                }
                if let end = Self.headEnd(request) { route(head: request[..<end]) }
            }
        }
    }

    static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 3..<bytes.count
        where bytes[index] == 10 && bytes[index - 1] == 13 && bytes[index - 2] == 10 && bytes[index - 3] == 13 {
            return index + 1
        }
        return nil
    }

    private func route(head: ArraySlice<UInt8>) {
        routed = true
        let firstLine = head.split(separator: 13, maxSplits: 1).first ?? []
        let parts = firstLine.split(separator: 32)
        guard parts.count == 3, parts[2].starts(with: Array("HTTP/1.".utf8)) else {
            respond(AdminResponse(status: 400, body: "bad request\n"))
            return
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        isHead = method == "HEAD"
        if method == "POST", server?.postRoutes != nil {
            return startPost(head: head, target: String(decoding: parts[1], as: UTF8.self))
        }
        // Every admin endpoint is read-only; refusing other methods here keeps each router simple.
        guard method == "GET" || isHead else {
            respond(AdminResponse(status: 405, body: "method not allowed\n"))
            return
        }
        var path = String(decoding: parts[1], as: UTF8.self)
        if let query = path.firstIndex(of: "?") { path = String(path[..<query]) }
        router(method, path) { [weak self] response in self?.respond(response) }
    }

    /// Reads a POST's header fields and admits its body: Content-Length required (chunked is
    /// 411), within the per-body cap (else 413 at once) and the in-flight budget (else 503).
    private func startPost(head: ArraySlice<UInt8>, target: String) {
        guard let server else { return finish() }
        var headers: [String: String] = [:]
        for line in head.split(separator: 10).dropFirst() {
            let text = String(decoding: line, as: UTF8.self)
            guard let colon = text.firstIndex(of: ":") else { continue }
            let name = text[..<colon].lowercased()
            if headers[name] == nil { headers[name] = text[text.index(after: colon)...].trimmed(of: " \t\r") }
        }
        if headers["transfer-encoding"] != nil { return respond(AdminResponse(status: 411, body: "Content-Length required\n")) }
        guard let text = headers["content-length"], let length = Int(text), length >= 0 else {
            return respond(AdminResponse(status: 411, body: "Content-Length required\n"))
        }
        guard length <= server.bodyLimits.maxBody else { return respond(AdminResponse(status: 413, body: "payload too large\n")) }
        guard server.bodyBytesInFlight + length <= server.bodyLimits.inFlightBudget else {
            return respond(AdminResponse(status: 503, body: "too many bodies in flight\n"))
        }
        server.bodyBytesInFlight += length
        var path = target
        if let query = path.firstIndex(of: "?") { path = String(path[..<query]) }
        let post = (path: path, headers: headers, headEnd: head.count, length: length)
        pendingPost = post
        request.reserveCapacity(head.count + length)
        if request.count >= post.headEnd + post.length { deliver(post) }
    }

    private func deliver(_ post: (path: String, headers: [String: String], headEnd: Int, length: Int)) {
        releaseBody()
        let body = Array(request[post.headEnd..<(post.headEnd + post.length)])
        request = []
        guard let postRouter = server?.postRoutes else { return finish() }
        postRouter(AdminServer.Post(path: post.path, headers: post.headers, body: body)) { [weak self] response in self?.respond(response) }
    }

    private func releaseBody() {
        guard let post = pendingPost else { return }
        pendingPost = nil
        server?.bodyBytesInFlight -= post.length
    }

    private func respond(_ response: AdminResponse) {
        routed = true
        guard output.isEmpty else { return }
        output = response.serialized(withBody: !isHead)
        flush()
    }

    private func flush() {
        while written < output.count {
            let result: IOResult<Int>
            guard socket.isOpen else { return }
            do {
                result = try output.withUnsafeBytes { raw throws(IOError) in
                    try socket.write(from: UnsafeRawBufferPointer(rebasing: raw[written...]))
                }
            } catch {
                finish()
                return
            }
            switch result {
            case .wouldBlock: return
            case .processed(let count): written += count
            }
        }
        finish()
    }

    /// Closes (idempotent) and leaves the server's list.
    func finish() {
        releaseBody()
        guard socket.isOpen else { return }
        if let timer { loop.cancel(timer) }
        timer = nil
        if let registration { loop.deregister(registration) }
        registration = nil
        try? socket.shutdownWrite()
        socket.close()
        server?.closed(self)
    }
}

/// Delivers blocked signals (SIGTERM, SIGINT, SIGHUP) as readiness on a loop.
public final class SignalWatcher: LoopHandler {
    private let signalFd: SignalFd
    private let onSignal: (CInt) -> Void
    private var registration: Registration?

    /// The signals must already be blocked (`Signals.block`, first thing in main).
    public init(loop: EventLoop, signals: [CInt], onSignal: @escaping (CInt) -> Void) throws(IOError) {
        signalFd = try SignalFd(signals: signals)
        self.onSignal = onSignal
        registration = try loop.register(signalFd.descriptor, events: [.readable], handler: self)
    }

    public func handle(events: EpollEvents, tag: UInt32) {
        while let signal = signalFd.next() { onSignal(signal) }
    }
}
