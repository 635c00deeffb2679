/// A parsed proxy request head: what the client asked for, before any policy.
public struct RequestHead: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// `CONNECT host:port`: a tunnel.
        case connect(Authority)
        /// `METHOD http://host[:port]/path`: plain-HTTP forwarding; `path` is the origin-form
        /// target to send upstream.
        case forward(method: String, authority: Authority, path: String)
    }

    public var kind: Kind
    public var minorVersion: Int
    /// Header fields in order, names as sent.
    public var headers: [(name: String, value: String)]

    public static func == (lhs: RequestHead, rhs: RequestHead) -> Bool {
        lhs.kind == rhs.kind && lhs.minorVersion == rhs.minorVersion
            && lhs.headers.map(\.name) == rhs.headers.map(\.name) && lhs.headers.map(\.value) == rhs.headers.map(\.value)
    }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name }?.value
    }

    public var authority: Authority {
        switch kind {
        case .connect(let authority): return authority
        case .forward(_, let authority, _): return authority
        }
    }
}

/// A request the proxy refuses before policy, with the status it gets.
public enum RequestRejection: Error, Sendable, Equatable {
    /// 400: request line, header syntax or authority is malformed.
    case badRequest(String)
    /// 405: a method or request-target form we do not proxy.
    case methodNotAllowed(String)
    /// 431: header larger than the limit, or too many fields.
    case headerTooLarge

    public var status: Int {
        switch self {
        case .badRequest: return 400
        case .methodNotAllowed: return 405
        case .headerTooLarge: return 431
        }
    }

    public var reason: String {
        switch self {
        case .badRequest(let why): return why
        case .methodNotAllowed(let why): return why
        case .headerTooLarge: return "header_too_large"
        }
    }
}

/// Finds and parses a request head in bytes that arrive in pieces.
///
/// Strict by design, since a proxy that is lenient where its upstream is strict (or the
/// reverse) invites request smuggling: CRLF line ends only (a bare LF is a 400), no
/// obs-fold, no whitespace before the colon, single spaces in the request line.
public struct RequestHeadParser {
    public let limit: Int
    public static let maxFields = 100
    /// Bytes already scanned for the end of the head (so slow arrival costs O(n), not O(n^2)).
    private var scanned = 0

    public init(limit: Int) { self.limit = limit }

    /// What the bytes so far amount to.
    public enum Outcome: Equatable {
        case needMore
        /// The head and its length in bytes (what follows it is early data).
        case complete(RequestHead, length: Int)
        case rejected(RequestRejection)
    }

    /// Looks at all bytes received so far (the same prefix plus new bytes on each call).
    public mutating func parse(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        var index = scanned
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x0a {
                if index == 0 || bytes[index - 1] != 0x0d { return .rejected(.badRequest("bare_lf")) }
                if index >= 3 && bytes[index - 2] == 0x0a && bytes[index - 3] == 0x0d {
                    let length = index + 1
                    if length > limit { return .rejected(.headerTooLarge) }
                    switch Self.parseHead(UnsafeRawBufferPointer(rebasing: bytes[0..<length - 4])) {
                    case .success(let head): return .complete(head, length: length)
                    case .failure(let rejection): return .rejected(rejection)
                    }
                }
            }
            index += 1
        }
        scanned = bytes.count
        if bytes.count >= limit { return .rejected(.headerTooLarge) }
        return .needMore
    }

    static let knownForwardMethods: Set<String> = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]

    /// Parses the head without its final CRLFCRLF.
    static func parseHead(_ head: UnsafeRawBufferPointer) -> Result<RequestHead, RequestRejection> {
        let text = Array(head)
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var index = 0
        while index < text.count {
            if text[index] == 0x0d {
                guard index + 1 < text.count, text[index + 1] == 0x0a else { return .failure(.badRequest("bare_cr")) }
                lines.append(text[start..<index])
                index += 2
                start = index
            } else {
                index += 1
            }
        }
        lines.append(text[start..<text.count])
        guard let requestLine = lines.first, !requestLine.isEmpty else { return .failure(.badRequest("empty_request_line")) }
        if lines.count - 1 > maxFields { return .failure(.headerTooLarge) }

        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { return .failure(.badRequest("request_line")) }
        guard parts[0].allSatisfy(isTokenByte) else { return .failure(.badRequest("method")) }
        let method = String(decoding: parts[0], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        let minor: Int
        switch version {
        case "HTTP/1.1": minor = 1
        case "HTTP/1.0": minor = 0
        default: return .failure(.badRequest("version"))
        }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return .failure(.badRequest("target")) }
        let target = String(decoding: parts[1], as: UTF8.self)

        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(lines.count - 1)
        for line in lines.dropFirst() {
            guard let first = line.first else { return .failure(.badRequest("empty_header_line")) }
            if first == 0x20 || first == 0x09 { return .failure(.badRequest("obs_fold")) }
            guard let colon = line.firstIndex(of: 0x3a) else { return .failure(.badRequest("header_colon")) }
            let name = line[line.startIndex..<colon]
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else { return .failure(.badRequest("header_name")) }
            var value = line[(colon + 1)...]
            while let byte = value.first, byte == 0x20 || byte == 0x09 { value = value.dropFirst() }
            while let byte = value.last, byte == 0x20 || byte == 0x09 { value = value.dropLast() }
            guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7f) }) else {
                return .failure(.badRequest("header_value"))
            }
            headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        return classify(method: method, target: target, minor: minor, headers: headers)
    }

    static func classify(method: String, target: String, minor: Int, headers: [(name: String, value: String)])
        -> Result<RequestHead, RequestRejection>
    {
        if method == "CONNECT" {
            if target.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }) {
                return .failure(.badRequest("connect_target"))
            }
            switch Authority.parse(Substring(target)) {
            case .success(let authority):
                return .success(RequestHead(kind: .connect(authority), minorVersion: minor, headers: headers))
            case .failure(let problem):
                return .failure(.badRequest("authority_\(problem.rawValue)"))
            }
        }
        guard knownForwardMethods.contains(method) else { return .failure(.methodNotAllowed("method")) }
        let lowered = target.lowercased()
        guard lowered.hasPrefix("http://") else {
            if lowered.hasPrefix("https://") { return .failure(.badRequest("https_absolute_form")) }
            return .failure(.methodNotAllowed("origin_form"))
        }
        let rest = target.dropFirst(7)
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        var path = String(rest[authorityEnd...])
        if let fragment = path.firstIndex(of: "#") { path = String(path[..<fragment]) }
        if path.isEmpty { path = "/" } else if path.hasPrefix("?") { path = "/" + path }
        switch Authority.parse(rest[..<authorityEnd], defaultPort: 80) {
        case .success(let authority):
            return .success(
                RequestHead(kind: .forward(method: method, authority: authority, path: path), minorVersion: minor, headers: headers))
        case .failure(let problem):
            return .failure(.badRequest("authority_\(problem.rawValue)"))
        }
    }

    /// RFC 9110 tchar.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5a, 0x61...0x7a: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
            UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }
}
