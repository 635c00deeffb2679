import EgressLoop

/// One request on the multiplexer: what to send until it is submitted, what came back, its
/// deadline and its one completion. Loop thread only. Small on purpose: a held long poll
/// costs this object, its nghttp2 stream (~0.5 KiB) and its share of a connection, where a
/// curl transfer costs ~9.5 KiB.
///
/// `@unchecked Sendable` for one path only: an `OutboundCall` keeps a weak reference and sends
/// it back to the loop to cancel; nothing reads the stream off the loop.
final class H2Stream: @unchecked Sendable {
    /// Kept until the stream is submitted (a fallback to curl needs the whole request), then dropped.
    var request: OutboundRequest?
    let origin: H2Origin
    let path: String
    let deadline: Instant
    let started: Instant
    /// The caller's handle (it holds this stream weakly; a fallback re-points it to a transfer).
    let call: OutboundCall
    private var completion: (@Sendable (Result<OutboundResponse, OutboundError>) -> Void)?
    /// Set once submitted on a connection.
    var streamID: Int32 = 0
    weak var connection: H2Connection?
    var status = 0
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    /// The body passed `maxBody`; the stream was reset.
    var overflowed = false

    /// A response body above this is refused (a poll's answer is a few hundred bytes).
    static let maxBody = 8 << 20

    init(request: OutboundRequest, origin: H2Origin, path: String, call: OutboundCall, now: Instant,
         completion: @escaping @Sendable (Result<OutboundResponse, OutboundError>) -> Void) {
        self.request = request
        self.origin = origin
        self.path = path
        self.call = call
        started = now
        deadline = now + request.timeout
        self.completion = completion
    }

    var isFinished: Bool { completion == nil }

    /// The result of a stream the server closed cleanly: like curl's, 4xx/5xx are errors
    /// carrying the response.
    var result: Result<OutboundResponse, OutboundError> {
        let response = OutboundResponse(status: status, headers: headers, body: body, httpVersion: "2")
        if status == 0 { return .failure(OutboundError(kind: .connect, detail: "HTTP/2 stream closed without a response")) }
        if status >= 400 { return .failure(OutboundError(kind: .http(status), detail: "HTTP \(status)", response: response)) }
        return .success(response)
    }

    /// Hands the completion out exactly once (nil afterwards), so the caller can record and call it.
    func takeCompletion() -> (@Sendable (Result<OutboundResponse, OutboundError>) -> Void)? {
        defer { completion = nil }
        return completion
    }

    /// The request headers as HTTP/2 wants them: lower-case names, none of HTTP/1.1's
    /// connection-specific fields (RFC 9113 8.2.2), the user agent added.
    static func fields(of request: OutboundRequest, origin: H2Origin, path: String, userAgent: String) -> [(String, String)] {
        var fields: [(String, String)] = [(":method", request.method), (":scheme", "https"), (":authority", origin.authority), (":path", path)]
        let dropped: Set<String> = ["connection", "host", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "user-agent"]
        var agent = userAgent
        for (name, value) in request.headers {
            let lowered = name.lowercased()
            if lowered == "user-agent" { agent = value }
            if dropped.contains(lowered) || lowered.isEmpty { continue }
            fields.append((lowered, value))
        }
        fields.append(("user-agent", agent))
        return fields
    }
}
