/// The proxy's own replies. Short plain-text bodies that never echo resolver or kernel
/// error text (that goes to the log and metrics).
public enum ProxyResponse {
    /// Sent only after the upstream connection is established, byte for byte as the spec says.
    public static let connectEstablished = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)

    /// The header carrying the refusal's reason, in the audit log's words (spec section 2), so
    /// a runner's log says why and not only "403".
    public static let reasonHeader = "X-Egress-Proxy-Error"

    /// - Parameter why: the audit reason; sent as `X-Egress-Proxy-Error`, reduced to printable
    ///   ASCII without CR or LF and at most 200 bytes, so no reason text can split the head.
    public static func error(_ status: Int, why: String? = nil, extraHeaders: [(String, String)] = []) -> [UInt8] {
        let reason = reasonPhrase(status)
        let body = "\(status) \(reason)\n"
        var head = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain; charset=utf-8\r\n"
        head += "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n"
        if let why, !why.isEmpty {
            let safe = String(decoding: why.utf8.prefix(200).map { $0 >= 0x20 && $0 < 0x7f ? $0 : 0x5f }, as: UTF8.self)
            head += "\(reasonHeader): \(safe)\r\n"
        }
        for (name, value) in extraHeaders { head += "\(name): \(value)\r\n" }
        return Array((head + "\r\n" + body).utf8)
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 405: return "Method Not Allowed"
        case 407: return "Proxy Authentication Required"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        default: return "Error"
        }
    }
}

/// Rewrites an absolute-form request for the origin server (plain-HTTP forwarding).
enum ForwardRequest {
    /// Why a forwarded request's body framing was refused (411 or 400).
    enum BodyRejection: Error { case lengthRequired, badLength }

    /// Hop-by-hop and proxy-only fields that never go upstream (RFC 9110 7.6.1), plus any
    /// field the client's Connection header names.
    static let dropped: Set<String> = [
        "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
        "trailer", "transfer-encoding", "upgrade", "host",
    ]

    /// Fields the client's Connection header can never remove: they frame the request (a
    /// dropped Content-Length would turn the body into a second request at the origin) or
    /// name it. Host is rewritten from the authority the policy decided on.
    static let framing: Set<String> = ["content-length", "host"]

    /// The request body length, or a rejection: chunked or otherwise encoded request bodies
    /// are refused with 411 (we forward exactly Content-Length bytes, so a second request
    /// hidden in a body can never reach the origin under the first one's policy decision).
    static func bodyLength(_ head: RequestHead) -> Result<Int, BodyRejection> {
        if head.headers.contains(where: { $0.name.lowercased() == "transfer-encoding" }) { return .failure(.lengthRequired) }
        let lengths = head.headers.filter { $0.name.lowercased() == "content-length" }.map(\.value)
        guard let first = lengths.first else { return .success(0) }
        guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.count <= 15,
            first.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let value = Int(first)
        else { return .failure(.badLength) }
        return .success(value)
    }

    static func serialize(_ head: RequestHead, method: String, authority: Authority, path: String) -> [UInt8] {
        let named = Set(
            head.headers.filter { $0.name.lowercased() == "connection" }
                .flatMap { $0.value.split(separator: ",").map { $0.trimmingCharacters(in: " \t").lowercased() } }
        ).subtracting(framing)
        let hostValue = authority.port == 80 ? authorityHost(authority) : authority.description
        var text = "\(method) \(path) HTTP/1.1\r\nHost: \(hostValue)\r\n"
        for field in head.headers {
            let lowered = field.name.lowercased()
            if dropped.contains(lowered) || named.contains(lowered) { continue }
            text += "\(field.name): \(field.value)\r\n"
        }
        text += "Connection: close\r\n\r\n"
        return Array(text.utf8)
    }

    static func authorityHost(_ authority: Authority) -> String {
        if case .ip(.v6) = authority.host { return "[\(authority.hostText)]" }
        return authority.hostText
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var slice = self
        while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}
