/// One outbound HTTP request.
public struct OutboundRequest: Sendable {
    public var method: String
    public var url: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]?
    /// Whole-request deadline (connect, TLS, request, response).
    public var timeout: Duration
    /// Retries on connection errors, 429 and 5xx; nil = only for idempotent methods.
    public var retry: Bool?
    public var maxAttempts: Int
    /// curl's receive buffer for this transfer (`CURLOPT_BUFFERSIZE`, 1024 at least); nil: curl's
    /// default of 16 KiB. A long poll that waits ~50 s for a small answer holds its buffer the
    /// whole time: at 1,000 held polls the default alone is 16 MiB.
    public var receiveBufferSize: Int?
    /// A request that waits long for a small answer (a broker long poll): `begin` carries it on
    /// the pool's own HTTP/2 client when the origin speaks h2, where it costs a stream of a
    /// shared connection instead of a curl transfer (see `H2Multiplexer`). GET only.
    public var longPoll = false

    public init(
        method: String = "GET", url: String, headers: [(name: String, value: String)] = [], body: [UInt8]? = nil,
        timeout: Duration = .seconds(30), retry: Bool? = nil, maxAttempts: Int = 4
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.retry = retry
        self.maxAttempts = maxAttempts
    }

    /// RFC 9110 idempotent methods: safe to send again after a failure.
    public var isIdempotent: Bool { ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"].contains(method) }

    var retries: Bool { retry ?? isIdempotent }

    /// The host part of the URL (the metrics label; never a path or a query).
    public var host: String {
        guard let schemeEnd = url.firstRange(of: "://") else { return "" }
        let rest = url[schemeEnd.upperBound...]
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        var authority = rest[..<end]
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        return String(authority)
    }
}

/// A complete response.
public struct OutboundResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// "2" for HTTP/2, "1.1" for HTTP/1.1.
    public var httpVersion: String

    /// First value of a header, case-insensitive.
    public func header(_ name: String) -> String? {
        let lowered = name.lowercased()
        return headers.first { $0.name.lowercased() == lowered }?.value
    }

    public var text: String { String(decoding: body, as: UTF8.self) }

    /// `Retry-After` in delay-seconds (the form GitHub and the API server send); nil when
    /// absent or an HTTP date.
    public var retryAfterSeconds: Int? {
        header("retry-after").flatMap { Int($0.trimmingPrefix(" ")) }.flatMap { $0 >= 0 ? $0 : nil }
    }
}

/// Why a request failed, with libcurl's own words in `detail`.
public struct OutboundError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What failed, coarse enough to decide on retries and to label metrics.
    public enum Kind: Sendable, Equatable {
        case dns, connect, tls, timeout, cancelled, proxy
        /// The server answered with an error status (after retries, when they apply).
        case http(Int)
        case other
    }

    public var kind: Kind
    public var detail: String
    /// The response, for `.http` errors.
    public var response: OutboundResponse?

    public init(kind: Kind, detail: String, response: OutboundResponse? = nil) {
        self.kind = kind
        self.detail = detail
        self.response = response
    }

    public var description: String { "\(kind): \(detail)" }

    public static func == (lhs: OutboundError, rhs: OutboundError) -> Bool { lhs.kind == rhs.kind && lhs.detail == rhs.detail }

    /// Worth another attempt (for requests that may be retried).
    var isRetryable: Bool {
        switch kind {
        case .dns, .connect, .timeout, .proxy: return true
        case .http(let status): return status == 429 || status >= 500
        case .tls, .cancelled, .other: return false
        }
    }
}

/// How the pool connects.
public struct PoolConfiguration: Sendable {
    /// Explicit proxy URL (`http://host:port`), overriding HTTPS_PROXY/HTTP_PROXY/NO_PROXY,
    /// which libcurl honours otherwise, as curl users expect.
    public var proxy: String?
    /// CA bundle file (PEM); nil = the system's.
    public var caBundle: String?
    /// A client certificate and its key (PEM files) presented to every server that asks
    /// (kubeconfig `client-certificate` users).
    public var clientCertificate: String?
    public var clientKey: String?
    /// Connections to one host (HTTP/2 multiplexes requests over them).
    public var maxConnectionsPerHost = 4
    /// Concurrent HTTP/2 streams per connection.
    public var maxStreamsPerConnection = 100
    public var userAgent = "actions-gateway/0.1"
    /// First retry delay; doubles per attempt, with full jitter, capped at `maxBackoff`.
    public var baseBackoff: Duration = .milliseconds(200)
    public var maxBackoff: Duration = .seconds(30)

    public init(proxy: String? = nil, caBundle: String? = nil) {
        self.proxy = proxy
        self.caBundle = caBundle
    }
}
