import CNghttp2
import EgressLoop
import EgressPosix
import Glibc

/// The pool's own HTTP/2 client for held long polls (`OutboundRequest.longPoll`), on
/// libnghttp2 and libssl. Why not curl for these: a libcurl transfer costs ~9.5 KiB for as
/// long as it is held (the easy handle alone is 5.4 KiB, its buffers 1 KiB at least), and an
/// AGC holds one per classic session for ~50 s at a time; here a held stream costs its
/// `H2Stream` and nghttp2's stream state, and connections (TLS, buffers) are shared by up to
/// 100 streams each.
///
/// It takes only what it can carry: GET without a body, https, no client certificate, an
/// http:// proxy or none. Anything else, and any origin whose ALPN picks HTTP/1.1, goes to
/// curl (`CurlDriver`), which keeps every other request of the pool.
///
/// Confined to the pool's loop, like `CurlDriver`, which owns it.
final class H2Multiplexer: TimerTarget {
    let loop: EventLoop
    let configuration: PoolConfiguration
    let maxStreams: Int
    /// nghttp2's callback table and options, shared by every session (nghttp2 copies neither).
    let callbacks: OpaquePointer
    let options: OpaquePointer
    /// Scratch for socket reads and for TLS plaintext: one of each per loop, never held across turns.
    let socketScratch: UnsafeMutableRawBufferPointer
    let plainScratch: UnsafeMutableRawBufferPointer
    private let environment: [String: String]
    /// Calls curl for what this client does not carry, and records finished streams.
    private let fallback: (OutboundRequest, OutboundCall, @escaping @Sendable (Result<OutboundResponse, OutboundError>) -> Void) -> Void
    private let record: (String, Instant, Result<OutboundResponse, OutboundError>) -> Void
    private var context: Result<TLSClientContext, OutboundError>?
    private var resolver: FairWorkerPool?
    private var connections: [H2Origin: [H2Connection]] = [:]
    private var http1Origins: Set<H2Origin> = []
    private var sweep: TimerHandle?
    private var streamCount = 0

    /// An idle connection (no stream) closes after this long.
    static let idleTimeout: Duration = .seconds(30)
    /// Deadlines and idle connections are checked this often while anything is open.
    static let sweepInterval: Duration = .seconds(1)

    init(loop: EventLoop, configuration: PoolConfiguration,
         fallback: @escaping (OutboundRequest, OutboundCall, @escaping @Sendable (Result<OutboundResponse, OutboundError>) -> Void) -> Void,
         record: @escaping (String, Instant, Result<OutboundResponse, OutboundError>) -> Void) {
        self.loop = loop
        self.configuration = configuration
        maxStreams = max(1, configuration.maxStreamsPerConnection)
        self.fallback = fallback
        self.record = record
        guard let callbacks = makeH2Callbacks() else { preconditionFailure("nghttp2_session_callbacks_new failed (out of memory)") }
        self.callbacks = callbacks
        var made: OpaquePointer?
        guard nghttp2_option_new(&made) == 0, let made else { preconditionFailure("nghttp2_option_new failed (out of memory)") }
        // Until the server's SETTINGS arrive, assume GitHub's 100 rather than nghttp2's unlimited.
        nghttp2_option_set_peer_max_concurrent_streams(made, UInt32(maxStreams))
        options = made
        socketScratch = .allocate(byteCount: 16 * 1024, alignment: 16)
        plainScratch = .allocate(byteCount: 16 * 1024, alignment: 16)
        var environment: [String: String] = [:]
        for name in ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"] {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        self.environment = environment
    }

    deinit {
        nghttp2_session_callbacks_del(callbacks)
        nghttp2_option_del(options)
        socketScratch.deallocate()
        plainScratch.deallocate()
    }

    /// Streams open or waiting, and connections open (for the pool's statistics).
    var activeStreams: Int { streamCount }
    var openConnections: Int { connections.values.reduce(0) { $0 + $1.count } }

    var tlsContext: TLSClientContext? {
        if context == nil { context = TLSClientContext.make(caBundle: configuration.caBundle) }
        return try? context?.get()
    }

    // MARK: taking requests

    /// Where `request` would go, or nil when curl should carry it.
    func route(_ request: OutboundRequest) -> (origin: H2Origin, path: String, proxy: H2Proxy?)? {
        guard request.longPoll, request.body == nil, request.method == "GET", configuration.clientCertificate == nil,
            let (origin, path) = H2Route.split(request.url), !http1Origins.contains(origin), tlsContext != nil,
            case .success(let proxy) = H2Route.proxy(for: origin, configured: configuration.proxy, environment: environment)
        else { return nil }
        return (origin, path, proxy)
    }

    /// Starts `request` if this client carries it; false leaves it to the caller (curl).
    func start(_ request: OutboundRequest, call: OutboundCall,
               completion: @escaping @Sendable (Result<OutboundResponse, OutboundError>) -> Void) -> Bool {
        guard let (origin, path, proxy) = route(request) else { return false }
        let stream = H2Stream(request: request, origin: origin, path: path, call: call, now: loop.now(), completion: completion)
        if call.attach(stream) {
            _ = stream.takeCompletion().map { $0(.failure(OutboundError(kind: .cancelled, detail: "cancelled"))) }
            return true
        }
        streamCount += 1
        place(stream, proxy: proxy)
        armSweep()
        return true
    }

    private func place(_ stream: H2Stream, proxy: H2Proxy?) {
        var list = connections[stream.origin] ?? []
        let slots = list.map { H2Route.Slot(load: $0.load, capacity: $0.capacity, accepting: $0.accepting) }
        let connection: H2Connection
        switch H2Route.place(on: slots, maxConnections: max(1, configuration.maxConnectionsPerHost)) {
        case .join(let index):
            connection = list[index]
        case .open:
            connection = H2Connection(origin: stream.origin, proxy: proxy, mux: self, now: loop.now())
            list.append(connection)
            connections[stream.origin] = list
            connection.enqueue(stream)
            connection.start()
            return
        }
        connection.enqueue(stream)
    }

    /// `OutboundCall.cancel`, on the loop.
    func cancel(_ stream: H2Stream) {
        guard !stream.isFinished else { return }
        if let connection = stream.connection {
            connection.cancel(stream, error: OutboundError(kind: .cancelled, detail: "cancelled"))
        } else {
            finish(stream, .failure(OutboundError(kind: .cancelled, detail: "cancelled")))
        }
    }

    /// Delivers a stream's result exactly once and counts it like a curl transfer.
    func finish(_ stream: H2Stream, _ result: Result<OutboundResponse, OutboundError>) {
        guard let completion = stream.takeCompletion() else { return }
        streamCount -= 1
        stream.connection = nil
        stream.request = nil
        record(stream.origin.authority, stream.started, result)
        completion(result)
    }

    // MARK: connections

    /// getaddrinfo on a worker thread (two, made on first use), the answer back on the loop.
    func resolve(host: String, port: UInt16, for connection: H2Connection) {
        if resolver == nil {
            resolver = try? FairWorkerPool(name: "outbound-dns", limits: .init(threads: 2, perKeyInFlight: 1, perKeyQueued: 64))
        }
        let bound = LoopBound(connection, on: loop)
        let loop = self.loop
        let submitted = resolver?.submit(key: host, ticket: WorkTicket()) {
            let outcome = Result { () throws(Posix.ResolveError) in try Posix.resolve(host: host, port: port) }
            loop.execute { bound.value.resolved(outcome) }
        } ?? false
        if !submitted { connection.fail(OutboundError(kind: .dns, detail: "too many lookups of \(host) waiting")) }
    }

    /// ALPN chose HTTP/1.1: the origin is curl's for the life of the pool, starting with the
    /// streams that were waiting for this connection.
    func originSpeaksHTTP1(_ origin: H2Origin, handing streams: [H2Stream]) {
        http1Origins.insert(origin)
        for stream in streams {
            guard let request = stream.request, let completion = stream.takeCompletion() else { continue }
            streamCount -= 1
            stream.connection = nil
            fallback(request, stream.call, completion)
        }
    }

    /// A connection closed (its streams are already finished or handed on).
    func connectionClosed(_ connection: H2Connection) {
        guard var list = connections[connection.origin] else { return }
        list.removeAll { $0 === connection }
        connections[connection.origin] = list.isEmpty ? nil : list
    }

    // MARK: deadlines and idle connections

    private func armSweep() {
        guard sweep == nil else { return }
        sweep = loop.schedule(after: Self.sweepInterval, target: self)
    }

    func timerFired(_ token: UInt64) {
        sweep = nil
        let now = loop.now()
        for connection in connections.values.flatMap({ $0 }) {
            let expired = (Array(connection.streams.values) + connection.waiting).filter { $0.deadline <= now }
            for stream in expired {
                connection.cancel(stream, error: OutboundError(kind: .timeout, detail: "no answer within \(stream.deadline.since(stream.started))"))
            }
            if connection.load == 0, connection.phase == .ready, now.since(connection.idleSince) >= Self.idleTimeout {
                connection.close()
            }
        }
        if !connections.isEmpty { armSweep() }
    }
}
