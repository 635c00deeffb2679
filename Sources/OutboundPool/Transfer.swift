import CCurl
import CCurlShims
import EgressLoop
import Synchronization

/// One request on the wire: the easy handle, what it sends, what came back, and where the
/// result goes (a waiting `send`, or a `ResponseStream`). Created on any thread, then touched
/// only on the pool's loop (curl's callbacks run there too).
final class Transfer: @unchecked Sendable {
    /// Where the result goes: a waiting `send`, a stream's buffer, or a callback (`begin`).
    enum Sink {
        case whole(CheckedContinuation<OutboundResponse, any Error>)
        case stream(StreamBuffer)
        case callback(@Sendable (Result<OutboundResponse, OutboundError>) -> Void)
    }

    /// What to send, until `prepare` has handed it to curl (which copies what it keeps): a
    /// held long poll then costs its easy handle, not a second copy of its URL and headers.
    private var request: OutboundRequest?
    /// The request's host, for the pool's statistics.
    let host: String
    let configuration: PoolConfiguration
    let easy: UnsafeMutableRawPointer
    private var sink: Sink?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
    private var bodyCopy: [UInt8]
    private(set) var status = 0
    private var headers: [(name: String, value: String)] = []
    private var body: [UInt8] = []
    private var version = "1.1"
    let started: Instant

    init?(request: OutboundRequest, configuration: PoolConfiguration, sink: Sink, now: Instant) {
        guard let easy = curl_easy_init() else { return nil }
        self.easy = easy
        self.request = request
        host = request.host
        self.configuration = configuration
        self.sink = sink
        bodyCopy = request.body ?? []
        started = now
        errorBuffer.initialize(to: 0)
    }

    deinit {
        curl_easy_cleanup(easy)
        curl_slist_free_all(headerList)
        errorBuffer.deallocate()
    }

    /// Sets every option; false if curl refused one.
    func prepare() -> Bool {
        guard let request else { return false }
        self.request = nil
        var ok = true
        func check(_ code: CURLcode) { ok = ok && code == CURLE_OK }
        let me = Unmanaged.passUnretained(self).toOpaque()
        check(cegress_easy_setopt_ptr(easy, CURLOPT_URL, request.url))
        check(cegress_easy_setopt_ptr(easy, CURLOPT_PRIVATE, me))
        check(cegress_easy_setopt_ptr(easy, CURLOPT_ERRORBUFFER, errorBuffer))
        check(cegress_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1))
        check(cegress_easy_setopt_long(easy, CURLOPT_TIMEOUT_MS, Int(request.timeout.components.seconds * 1000
            + request.timeout.components.attoseconds / 1_000_000_000_000_000)))
        check(cegress_easy_setopt_long(easy, CURLOPT_HTTP_VERSION, CEGRESS_CURL_HTTP_VERSION_2TLS))
        check(cegress_easy_setopt_long(easy, CURLOPT_PIPEWAIT, 1))
        if let size = request.receiveBufferSize { check(cegress_easy_setopt_long(easy, CURLOPT_BUFFERSIZE, max(1024, size))) }
        check(cegress_easy_setopt_long(easy, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1))
        check(cegress_easy_setopt_ptr(easy, CURLOPT_USERAGENT, configuration.userAgent))
        if let proxy = configuration.proxy { check(cegress_easy_setopt_ptr(easy, CURLOPT_PROXY, proxy)) }
        if let caBundle = configuration.caBundle { check(cegress_easy_setopt_ptr(easy, CURLOPT_CAINFO, caBundle)) }
        if let certificate = configuration.clientCertificate { check(cegress_easy_setopt_ptr(easy, CURLOPT_SSLCERT, certificate)) }
        if let key = configuration.clientKey { check(cegress_easy_setopt_ptr(easy, CURLOPT_SSLKEY, key)) }
        check(cegress_easy_setopt_write(easy, transferWriteCallback))
        check(cegress_easy_setopt_ptr(easy, CURLOPT_WRITEDATA, me))
        check(cegress_easy_setopt_header(easy, transferHeaderCallback))
        check(cegress_easy_setopt_ptr(easy, CURLOPT_HEADERDATA, me))
        switch request.method {
        case "GET": check(cegress_easy_setopt_long(easy, CURLOPT_HTTPGET, 1))
        case "HEAD": check(cegress_easy_setopt_long(easy, CURLOPT_NOBODY, 1))
        default: check(cegress_easy_setopt_ptr(easy, CURLOPT_CUSTOMREQUEST, request.method))
        }
        if request.body != nil || request.method == "POST" {
            check(cegress_easy_setopt_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(bodyCopy.count)))
            check(bodyCopy.withUnsafeBytes { cegress_easy_setopt_ptr(easy, CURLOPT_POSTFIELDS, $0.baseAddress) })
        }
        for (name, value) in request.headers { headerList = curl_slist_append(headerList, "\(name): \(value)") }
        // curl adds "Expect: 100-continue" to large bodies; an extra round trip we do not want.
        headerList = curl_slist_append(headerList, "Expect:")
        check(cegress_easy_setopt_ptr(easy, CURLOPT_HTTPHEADER, headerList))
        return ok
    }

    // MARK: callbacks (loop thread)

    fileprivate func header(_ line: UnsafeBufferPointer<UInt8>) {
        // Trim CR LF on bytes: as a String, "\r\n" is one Character and hasSuffix("\n") is false.
        var end = line.count
        while end > 0 && (line[end - 1] == 10 || line[end - 1] == 13) { end -= 1 }
        let text = String(decoding: UnsafeBufferPointer(rebasing: line[0..<end]), as: UTF8.self)
        if text.hasPrefix("HTTP/") {
            // A new status line (after 1xx, or a redirect) starts a new header block.
            let parts = text.split(separator: " ", maxSplits: 2)
            status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            version = parts.first.map { String($0.dropFirst(5)) } ?? "1.1"
            headers.removeAll()
            return
        }
        guard let colon = text.firstIndex(of: ":") else { return }
        let name = String(text[..<colon])
        let value = text[text.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
        headers.append((name, String(value)))
    }

    /// Returns the bytes taken, or CURL_WRITEFUNC_PAUSE when a stream's consumer lags.
    fileprivate func write(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        if case .stream(let buffer) = sink, status < 400 {
            return buffer.push(Array(bytes)) ? bytes.count : CEGRESS_CURL_WRITEFUNC_PAUSE
        }
        body.append(contentsOf: bytes)
        return bytes.count
    }

    // MARK: completion (loop thread)

    var response: OutboundResponse { OutboundResponse(status: status, headers: headers, body: body, httpVersion: version) }

    func complete(code: CURLcode) -> Result<OutboundResponse, OutboundError> {
        if code == CURLE_OK {
            if status >= 400 { return .failure(OutboundError(kind: .http(status), detail: "HTTP \(status)", response: response)) }
            return .success(response)
        }
        let detail = errorBuffer.pointee != 0 ? String(cString: errorBuffer) : String(cString: curl_easy_strerror(code))
        return .failure(OutboundError(kind: Self.kind(of: code), detail: detail))
    }

    static func kind(of code: CURLcode) -> OutboundError.Kind {
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST: return .dns
        case CURLE_COULDNT_RESOLVE_PROXY: return .proxy
        case CURLE_OPERATION_TIMEDOUT: return .timeout
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER,
            CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            return .tls
        case CURLE_COULDNT_CONNECT, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE,
            CURLE_HTTP2, CURLE_HTTP2_STREAM:
            return .connect
        default: return .other
        }
    }

    /// Delivers the result exactly once.
    func finish(_ result: Result<OutboundResponse, OutboundError>) {
        guard let sink else { return }
        self.sink = nil
        switch sink {
        case .whole(let continuation):
            continuation.resume(with: result.mapError { $0 as any Error })
        case .callback(let completion):
            completion(result)
        case .stream(let buffer):
            switch result {
            case .success: buffer.finish(nil)
            case .failure(let error): buffer.finish(error)
            }
        }
    }
}

private func transferWriteCallback(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ userdata: UnsafeMutableRawPointer?) -> Int {
    guard let data, let userdata else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata).takeUnretainedValue()
    return data.withMemoryRebound(to: UInt8.self, capacity: size * count) {
        transfer.write(UnsafeBufferPointer(start: $0, count: size * count))
    }
}

private func transferHeaderCallback(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ userdata: UnsafeMutableRawPointer?) -> Int {
    guard let data, let userdata else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata).takeUnretainedValue()
    data.withMemoryRebound(to: UInt8.self, capacity: size * count) {
        transfer.header(UnsafeBufferPointer(start: $0, count: size * count))
    }
    return size * count
}

/// The bounded queue between curl's write callback (producer, loop thread) and a stream's
/// consumer (any task). Above `highWater` bytes the producer is told to pause curl; the
/// consumer resumes it once it has drained below `lowWater`, so memory stays bounded however
/// slowly the consumer reads.
final class StreamBuffer: Sendable {
    /// Queued chunks, the waiting consumer, and whether curl is paused; guarded by the mutex.
    private struct State {
        var chunks: [[UInt8]] = []
        var head = 0
        var bytes = 0
        var paused = false
        var done = false
        var error: OutboundError?
        var waiter: CheckedContinuation<[UInt8]?, any Error>?
        var maxBytes = 0
    }

    /// The most bytes ever queued (tests check the bound) and whether curl is paused now.
    var observed: (maxBytes: Int, paused: Bool) { state.withLock { ($0.maxBytes, $0.paused) } }

    private let state = Mutex(State())
    let highWater: Int
    let lowWater: Int
    /// Called (on any thread) when a paused producer may continue.
    let resume: @Sendable () -> Void

    init(highWater: Int = 1 << 20, resume: @escaping @Sendable () -> Void) {
        self.highWater = highWater
        lowWater = highWater / 4
        self.resume = resume
    }

    /// Producer: false means "pause curl" (the chunk was not taken; curl delivers it again).
    func push(_ chunk: [UInt8]) -> Bool {
        let waiter: CheckedContinuation<[UInt8]?, any Error>? = state.withLock { state in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if state.bytes >= highWater {
                state.paused = true
                return nil
            }
            state.chunks.append(chunk)
            state.bytes += chunk.count
            state.maxBytes = max(state.maxBytes, state.bytes)
            return nil
        }
        if let waiter {
            waiter.resume(returning: chunk)
            return true
        }
        return !state.withLock { $0.paused }
    }

    func finish(_ error: OutboundError?) {
        let waiter: CheckedContinuation<[UInt8]?, any Error>? = state.withLock { state in
            state.done = true
            state.error = error
            defer { state.waiter = nil }
            return state.waiter
        }
        if let error { waiter?.resume(throwing: error) } else { waiter?.resume(returning: nil) }
    }

    /// Consumer: the next chunk, nil at the end.
    func next() async throws -> [UInt8]? {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8]?, any Error>) in
            enum Outcome { case chunk([UInt8], wake: Bool), end(OutboundError?), wait(wake: Bool) }
            let outcome: Outcome = state.withLock { state in
                if state.head < state.chunks.count {
                    let chunk = state.chunks[state.head]
                    state.head += 1
                    state.bytes -= chunk.count
                    if state.head == state.chunks.count {
                        state.chunks.removeAll(keepingCapacity: true)
                        state.head = 0
                    }
                    let wake = state.paused && state.bytes <= lowWater
                    if wake { state.paused = false }
                    return .chunk(chunk, wake: wake)
                }
                if state.done { return .end(state.error) }
                state.waiter = continuation
                let wake = state.paused
                state.paused = false
                return .wait(wake: wake)
            }
            switch outcome {
            case .chunk(let chunk, let wake):
                if wake { resume() }
                continuation.resume(returning: chunk)
            case .end(let error):
                if let error { continuation.resume(throwing: error) } else { continuation.resume(returning: nil) }
            case .wait(let wake):
                if wake { resume() }
            }
        }
    }
}
