import CNghttp2
import EgressLoop
import EgressPosix

/// One TCP connection of the multiplexer to an origin, carrying many HTTP/2 streams:
/// resolve → connect (each address in turn) → CONNECT through the proxy, if any → TLS over
/// memory BIOs → an nghttp2 client session.
///
/// Owns its socket (the `~Copyable` `Socket`), its `TLSStream` and its `nghttp2_session`; all
/// three go in `close`, in that order of relevance: the session is deleted last, after the
/// streams it knew were taken out, so no nghttp2 callback can reach a stream after it finished.
/// Loop thread only; the multiplexer holds it strongly until `close` reports back.
///
/// Ordering rules:
/// - Bytes leave in exactly the order they were produced: CONNECT, then ciphertext; all of it
///   goes through `outbound`, flushed by `flushSocket`.
/// - nghttp2 is never re-entered: callbacks only record (stream state, GOAWAY); anything that
///   submits or sends (`submitWaiting`, `pump`) runs after `nghttp2_session_mem_recv` returns.
final class H2Connection: LoopHandler {
    /// Where the connection is in its setup; `closed` is final.
    enum Phase: Equatable { case resolving, connecting, tunnelling, handshaking, ready, closed }

    let origin: H2Origin
    let proxy: H2Proxy?
    unowned let mux: H2Multiplexer
    private(set) var phase: Phase = .resolving
    private var socket = Socket.closed
    private var registration: Registration?
    private var watchingWrites = false
    private var candidates: [SocketAddress] = []
    private var lastConnectError = ""
    private var tls: TLSStream?
    private var session: OpaquePointer?
    /// Bytes for the socket, in order, from `outboundHead` on.
    private var outbound: [UInt8] = []
    private var outboundHead = 0
    private var connectReply: [UInt8] = []
    /// Streams submitted to nghttp2, by stream id.
    private(set) var streams: [Int32: H2Stream] = [:]
    /// Streams placed here before the session was up, submitted in order once it is.
    private(set) var waiting: [H2Stream] = []
    /// The server sent GOAWAY (or ran out of stream ids): no new stream joins.
    private(set) var goingAway = false
    /// When the last stream left (idle connections close after a while).
    private(set) var idleSince: Instant

    /// Above this many bytes waiting for the socket, nghttp2 is not asked for more.
    private static let outboundHighWater = 256 * 1024

    init(origin: H2Origin, proxy: H2Proxy?, mux: H2Multiplexer, now: Instant) {
        self.origin = origin
        self.proxy = proxy
        self.mux = mux
        idleSince = now
    }

    var load: Int { streams.count + waiting.count }
    var accepting: Bool { phase != .closed && !goingAway }

    /// Our cap, lowered to the server's SETTINGS_MAX_CONCURRENT_STREAMS once it has spoken.
    var capacity: Int {
        guard phase == .ready, let session else { return mux.maxStreams }
        return min(mux.maxStreams, Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)))
    }

    // MARK: setup

    /// Resolves the first hop (the proxy, else the origin) off the loop, then connects.
    func start() {
        let hop = proxy.map { ($0.host, $0.port) } ?? (origin.host, origin.port)
        if let ip = IPAddress(hop.0) {
            resolved(.success([SocketAddress(ip: ip, port: hop.1)]))
            return
        }
        mux.resolve(host: hop.0, port: hop.1, for: self)
    }

    func resolved(_ outcome: Result<[SocketAddress], Posix.ResolveError>) {
        guard phase == .resolving else { return }
        switch outcome {
        case .success(let addresses) where !addresses.isEmpty:
            candidates = addresses
            phase = .connecting
            connectNext()
        case .success:
            fail(OutboundError(kind: proxy == nil ? .dns : .proxy, detail: "no address for \(proxy?.host ?? origin.host)"))
        case .failure(let error):
            fail(OutboundError(kind: proxy == nil ? .dns : .proxy, detail: "cannot resolve \(proxy?.host ?? origin.host): \(error)"))
        }
    }

    /// Tries the next candidate address; fails the connection when none is left.
    private func connectNext() {
        while !candidates.isEmpty {
            let address = candidates.removeFirst()
            do {
                let fresh = try Socket.tcp(family: address.family)
                try fresh.setNoDelay()
                let connected = try fresh.connect(to: address)
                registration = try mux.loop.register(fresh.descriptor, events: [.readable, .writable], handler: self, levelTriggered: true)
                watchingWrites = true
                socket = consume fresh
                if connected { self.connected() }
                return
            } catch {
                lastConnectError = "connect to \(address): \(error)"
            }
        }
        fail(OutboundError(kind: proxy == nil ? .connect : .proxy, detail: lastConnectError))
    }

    private func connected() {
        if let proxy {
            phase = .tunnelling
            outbound = H2Route.connectRequest(to: origin, proxy: proxy, userAgent: mux.configuration.userAgent)
            flushSocket()
        } else {
            startTLS(leftover: [])
        }
    }

    private func startTLS(leftover: ArraySlice<UInt8>) {
        guard let context = mux.tlsContext, let stream = TLSStream(context: context, host: origin.host) else {
            fail(OutboundError(kind: .tls, detail: "cannot create a TLS session"))
            return
        }
        tls = stream
        phase = .handshaking
        if !leftover.isEmpty { leftover.withUnsafeBytes { stream.feed($0) } }
        advanceHandshake()
    }

    private func advanceHandshake() {
        guard let tls else { return }
        switch tls.handshake() {
        case .done:
            tls.takeCiphertext(into: &outbound)
            if tls.negotiatedProtocol == "h2" {
                startSession()
            } else {
                // The origin speaks HTTP/1.1 only: its requests are curl's from now on.
                let handed = waiting
                waiting.removeAll()
                close()
                mux.originSpeaksHTTP1(origin, handing: handed)
            }
        case .wantIO:
            tls.takeCiphertext(into: &outbound)
            flushSocket()
        case .closed:
            fail(OutboundError(kind: .tls, detail: "the server closed the TLS handshake"))
        case .failed(let error):
            fail(error)
        }
    }

    private func startSession() {
        var created: OpaquePointer?
        guard nghttp2_session_client_new2(&created, mux.callbacks, Unmanaged.passUnretained(self).toOpaque(), mux.options) == 0,
            let created
        else {
            fail(OutboundError(kind: .other, detail: "nghttp2_session_client_new failed"))
            return
        }
        session = created
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: 100),
        ]
        _ = nghttp2_submit_settings(created, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        phase = .ready
        submitWaiting()
        readTLS()
        pump()
    }

    // MARK: streams

    /// Takes a stream: submitted now when the session is up, else when it comes up.
    func enqueue(_ stream: H2Stream) {
        stream.connection = self
        if phase == .ready {
            submit(stream)
            pump()
        } else {
            waiting.append(stream)
        }
    }

    private func submitWaiting() {
        let queued = waiting
        waiting.removeAll()
        for stream in queued where !stream.isFinished { submit(stream) }
    }

    private func submit(_ stream: H2Stream) {
        guard let session, let request = stream.request else { return }
        let fields = H2Stream.fields(of: request, origin: origin, path: stream.path, userAgent: mux.configuration.userAgent)
        var bytes: [UInt8] = []
        for (name, value) in fields {
            bytes.append(contentsOf: name.utf8)
            bytes.append(contentsOf: value.utf8)
        }
        let id: Int32 = bytes.withUnsafeMutableBufferPointer { buffer in
            var offset = 0
            var entries: [nghttp2_nv] = []
            entries.reserveCapacity(fields.count)
            for (name, value) in fields {
                let base = buffer.baseAddress.unsafelyUnwrapped
                let nameCount = name.utf8.count
                let valueCount = value.utf8.count
                entries.append(nghttp2_nv(name: base + offset, value: base + offset + nameCount, namelen: nameCount, valuelen: valueCount,
                                          flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                offset += nameCount + valueCount
            }
            // nghttp2 copies names and values (no NO_COPY flag), so `bytes` may go after this call.
            return nghttp2_submit_request(session, nil, entries, entries.count, nil, nil)
        }
        guard id > 0 else {
            if id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE.rawValue { goingAway = true }
            mux.finish(stream, .failure(OutboundError(kind: .connect, detail: "HTTP/2 submit: \(String(cString: nghttp2_strerror(id)))")))
            return
        }
        stream.streamID = id
        stream.request = nil
        streams[id] = stream
    }

    /// Withdraws a stream (cancelled, or past its deadline) and finishes it with `error`.
    func cancel(_ stream: H2Stream, error: OutboundError) {
        if stream.streamID != 0, streams.removeValue(forKey: stream.streamID) != nil, let session {
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.streamID, NGHTTP2_CANCEL.rawValue)
            noteIdle()
            pump()
        } else if let index = waiting.firstIndex(where: { $0 === stream }) {
            waiting.remove(at: index)
        }
        mux.finish(stream, .failure(error))
    }

    private func noteIdle() { if load == 0 { idleSince = mux.loop.now() } }

    // MARK: nghttp2 callbacks (inside nghttp2_session_mem_recv: record only)

    fileprivate func header(stream id: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        guard let stream = streams[id] else { return }
        if name.elementsEqual(":status".utf8) {
            // An interim 1xx head is followed by the final one: keep only the last.
            stream.status = Int(String(decoding: value, as: UTF8.self)) ?? 0
            stream.headers.removeAll()
        } else {
            stream.headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
    }

    fileprivate func data(stream id: Int32, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let stream = streams[id] else { return true }
        guard stream.body.count + bytes.count <= H2Stream.maxBody else {
            stream.overflowed = true
            return false
        }
        stream.body.append(contentsOf: bytes)
        return true
    }

    fileprivate func closed(stream id: Int32, errorCode: UInt32) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        noteIdle()
        if stream.overflowed {
            mux.finish(stream, .failure(OutboundError(kind: .other, detail: "response body larger than \(H2Stream.maxBody) bytes")))
        } else if errorCode == NGHTTP2_NO_ERROR.rawValue {
            mux.finish(stream, stream.result)
        } else {
            // REFUSED_STREAM (after GOAWAY) included: the caller owns retries, as for curl.
            let reason = String(cString: nghttp2_http2_strerror(errorCode))
            mux.finish(stream, .failure(OutboundError(kind: .connect, detail: "HTTP/2 stream reset by the server: \(reason)")))
        }
    }

    fileprivate func receivedGoAway() { goingAway = true }

    // MARK: I/O

    func handle(events: EpollEvents, tag: UInt32) {
        if phase == .connecting {
            guard !events.isDisjoint(with: [.writable, .error, .hangup]) else { return }
            if let error = socket.pendingError() {
                lastConnectError = "connect: \(error)"
                dropSocket()
                connectNext()
            } else {
                connected()
            }
            return
        }
        if !events.isDisjoint(with: [.readable, .hangup, .readHangup, .error]) { readAvailable() }
        if phase != .closed, events.contains(.writable) {
            flushSocket()
            pump()
        }
    }

    /// Reads what the socket has (a bounded number of times per event: level-triggered, so
    /// the rest comes on the next turn and other connections get theirs).
    private func readAvailable() {
        for _ in 0..<8 {
            guard phase != .closed, socket.isOpen else { return }
            let buffer = mux.socketScratch
            let outcome: IOResult<Int>
            do {
                outcome = try socket.read(into: buffer)
            } catch {
                fail(OutboundError(kind: .connect, detail: "read: \(error)"))
                return
            }
            switch outcome {
            case .wouldBlock: return
            case .processed(0):
                fail(OutboundError(kind: phase == .tunnelling ? .proxy : .connect, detail: "connection closed by the \(phase == .tunnelling ? "proxy" : "server")"))
                return
            case .processed(let count):
                received(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            }
        }
    }

    private func received(_ bytes: UnsafeRawBufferPointer) {
        switch phase {
        case .tunnelling:
            connectReply.append(contentsOf: bytes)
            switch H2Route.parseConnectReply(connectReply) {
            case .incomplete: return
            case .established(let leftover):
                let rest = connectReply.suffix(leftover)
                connectReply = []
                startTLS(leftover: rest)
            case .refused(_, let line):
                fail(OutboundError(kind: .proxy, detail: "the proxy refused CONNECT \(origin.hostPort): \(line)"))
            case .malformed:
                fail(OutboundError(kind: .proxy, detail: "the proxy's answer to CONNECT is not HTTP"))
            }
        case .handshaking:
            tls?.feed(bytes)
            advanceHandshake()
        case .ready:
            tls?.feed(bytes)
            readTLS()
            pump()
        case .resolving, .connecting, .closed:
            return
        }
    }

    /// Decrypts what TLS has and hands it to nghttp2; then submits streams placed meanwhile.
    private func readTLS() {
        guard let tls else { return }
        let buffer = mux.plainScratch
        while phase == .ready, let session {
            var count = 0
            switch tls.read(into: buffer, count: &count) {
            case .done:
                let consumed = nghttp2_session_mem_recv(session, buffer.baseAddress?.assumingMemoryBound(to: UInt8.self), count)
                if consumed < 0 {
                    fail(OutboundError(kind: .connect, detail: "HTTP/2: \(String(cString: nghttp2_strerror(Int32(consumed))))"))
                    return
                }
            case .wantIO:
                return
            case .closed:
                fail(OutboundError(kind: .connect, detail: "the server closed the TLS session"))
                return
            case .failed(let error):
                fail(error)
                return
            }
        }
    }

    /// Serializes what nghttp2 has to send, encrypts it, and writes it out. Closes the
    /// connection when nghttp2 has nothing left to do (after GOAWAY both ways).
    private func pump() {
        guard phase == .ready, let session, let tls else { return }
        while outbound.count - outboundHead < Self.outboundHighWater {
            var data: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &data)
            if count < 0 {
                fail(OutboundError(kind: .connect, detail: "HTTP/2: \(String(cString: nghttp2_strerror(Int32(count))))"))
                return
            }
            guard count > 0, let data else { break }
            if case .failed(let error) = tls.write(UnsafeRawBufferPointer(start: data, count: count)) {
                fail(error)
                return
            }
            tls.takeCiphertext(into: &outbound)
        }
        flushSocket()
        if phase == .ready, nghttp2_session_want_read(session) == 0, nghttp2_session_want_write(session) == 0, outboundHead == outbound.count {
            fail(OutboundError(kind: .connect, detail: "the server ended the HTTP/2 connection (GOAWAY)"))
        }
    }

    /// Writes `outbound` until the socket would block; watches writability only while bytes wait.
    private func flushSocket() {
        while phase != .closed, outboundHead < outbound.count {
            let outcome: IOResult<Int>
            do {
                outcome = try outbound.withUnsafeBytes { try socket.write(from: UnsafeRawBufferPointer(rebasing: $0[outboundHead...])) }
            } catch {
                fail(OutboundError(kind: phase == .tunnelling ? .proxy : .connect, detail: "write: \(error)"))
                return
            }
            guard case .processed(let count) = outcome else { break }
            outboundHead += count
        }
        if outboundHead == outbound.count, !outbound.isEmpty {
            outbound = []
            outboundHead = 0
        }
        setWriteInterest(outboundHead < outbound.count)
    }

    private func setWriteInterest(_ wanted: Bool) {
        guard wanted != watchingWrites, let registration, socket.isOpen else { return }
        watchingWrites = wanted
        try? mux.loop.modify(socket.descriptor, events: wanted ? [.readable, .writable] : [.readable], registration: registration, levelTriggered: true)
    }

    // MARK: teardown

    private func dropSocket() {
        if let registration { mux.loop.deregister(registration) }
        registration = nil
        watchingWrites = false
        socket.close()
    }

    /// Ends the connection: every stream still on it (or waiting for it) fails with `error`.
    func fail(_ error: OutboundError) {
        guard phase != .closed else { return }
        let orphans = Array(streams.values) + waiting
        close()
        for stream in orphans { mux.finish(stream, .failure(error)) }
    }

    /// Closes without failing anyone (the caller took the streams, or there are none): a
    /// GOAWAY is sent best-effort first when the session is up.
    func close() {
        guard phase != .closed else { return }
        if phase == .ready, let session {
            _ = nghttp2_session_terminate_session(session, NGHTTP2_NO_ERROR.rawValue)
            var data: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &data)
            if count > 0, let data, let tls {
                _ = tls.write(UnsafeRawBufferPointer(start: data, count: count))
                tls.takeCiphertext(into: &outbound)
                flushSocket()
            }
        }
        phase = .closed
        streams.removeAll()
        waiting.removeAll()
        dropSocket()
        tls = nil
        if let session { nghttp2_session_del(session) }
        session = nil
        mux.connectionClosed(self)
    }
}

// MARK: - nghttp2 callback table

/// The C callbacks nghttp2 calls inside `nghttp2_session_mem_recv`; `user` is the connection
/// (unretained: it outlives its session, which `close` deletes).
func makeH2Callbacks() -> OpaquePointer? {
    var callbacks: OpaquePointer?
    guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return nil }
    nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
        guard let frame, let name, let value, let user else { return 0 }
        guard frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
        Unmanaged<H2Connection>.fromOpaque(user).takeUnretainedValue().header(
            stream: frame.pointee.hd.stream_id, name: UnsafeBufferPointer(start: name, count: nameLength),
            value: UnsafeBufferPointer(start: value, count: valueLength))
        return 0
    }
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { session, _, stream, data, length, user in
        guard let data, let user else { return 0 }
        let connection = Unmanaged<H2Connection>.fromOpaque(user).takeUnretainedValue()
        if !connection.data(stream: stream, UnsafeBufferPointer(start: data, count: length)) {
            // Too large: reset it; its close callback reports the failure.
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, NGHTTP2_CANCEL.rawValue)
        }
        return 0
    }
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, stream, errorCode, user in
        guard let user else { return 0 }
        Unmanaged<H2Connection>.fromOpaque(user).takeUnretainedValue().closed(stream: stream, errorCode: errorCode)
        return 0
    }
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
        guard let frame, let user, frame.pointee.hd.type == UInt8(NGHTTP2_GOAWAY.rawValue) else { return 0 }
        Unmanaged<H2Connection>.fromOpaque(user).takeUnretainedValue().receivedGoAway()
        return 0
    }
    return callbacks
}
