import COpenSSL

/// A tenant's upstream proxy (`parentProxy: http://[user:password@]host:port`): its tunnels are
/// CONNECTed onward through it instead of dialed directly, for corporate egress.
///
/// The policy is unchanged by chaining: the allowlist, the connect rate, `maxTunnels` and the
/// deny ranges are all decided here first, on our own resolution of the destination, exactly
/// as for a direct dial. The parent is then asked for the destination by the name the client
/// gave (so a parent with name rules can apply them), and it resolves the name again: through
/// a parent, the no-rebinding guarantee of spec section 4 holds for our check but the address
/// finally dialed is the parent's choice. The parent's own address is the operator's, not the
/// tenant's, so it is not checked against the deny ranges (a corporate proxy usually sits in
/// private address space).
public struct ParentProxy: Sendable, Equatable {
    /// The value as configured, rendered back verbatim (it may hold the password: configs
    /// with one belong in a Secret).
    public var url: String
    /// Where the parent listens (a name is resolved per tunnel, off the loop, like a destination).
    public var authority: Authority
    /// `Basic base64(user:password)` from the URL's userinfo, sent as Proxy-Authorization.
    public var authorization: String?

    public init(url: String, authority: Authority, authorization: String? = nil) {
        self.url = url
        self.authority = authority
        self.authorization = authorization
    }

    /// Parses `http://[user:password@]host:port` (an optional trailing `/`). The port is
    /// required: proxies have no common default, and guessing one dials the wrong service.
    /// Userinfo is percent-decoded; TLS to the parent (`https://`) is not supported.
    public static func parse(_ text: String) -> Result<ParentProxy, ParseError> {
        guard text.hasPrefix("http://") else {
            return .failure(text.hasPrefix("https://") ? .tlsUnsupported : .badScheme)
        }
        var rest = Substring(text.dropFirst("http://".count))
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.contains("/"), !rest.contains("?"), !rest.contains("#") else { return .failure(.path) }
        var authorization: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            guard let colon = userinfo.firstIndex(of: ":"), let user = percentDecoded(userinfo[..<colon]),
                let password = percentDecoded(userinfo[userinfo.index(after: colon)...]), !user.isEmpty
            else { return .failure(.badUserinfo) }
            authorization = "Basic " + base64(user + [UInt8(ascii: ":")] + password)
        }
        switch Authority.parse(rest) {
        case .success(let authority): return .success(ParentProxy(url: text, authority: authority, authorization: authorization))
        case .failure(.missingPort): return .failure(.missingPort)
        case .failure(let problem): return .failure(.badAuthority(problem))
        }
    }

    /// Why a `parentProxy` value was refused (the config error names the key and the value).
    public enum ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        case badScheme, tlsUnsupported, path, badUserinfo, missingPort
        case badAuthority(Authority.Problem)

        public var description: String {
            switch self {
            case .badScheme: return "expected http://host:port"
            case .tlsUnsupported: return "https:// parents are not supported: use http://host:port"
            case .path: return "a proxy URL has no path, query or fragment"
            case .badUserinfo: return "credentials must be user:password (percent-encoded)"
            case .missingPort: return "the port is required (http://host:port)"
            case .badAuthority(let problem): return "bad host or port (\(problem.rawValue))"
            }
        }
    }

    /// The CONNECT request sent to the parent for one destination.
    func connectRequest(to destination: Authority) -> [UInt8] {
        var text = "CONNECT \(destination) HTTP/1.1\r\nHost: \(destination)\r\n"
        if let authorization { text += "Proxy-Authorization: \(authorization)\r\n" }
        return Array((text + "\r\n").utf8)
    }

    static func percentDecoded(_ text: Substring) -> [UInt8]? {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                guard byte > 0x20, byte < 0x7f else { return nil }
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: return byte - 0x30
        case 0x41...0x46: return byte - 0x41 + 10
        case 0x61...0x66: return byte - 0x61 + 10
        default: return nil
        }
    }

    /// RFC 4648 base64 by libcrypto's encoder (config load only, never per tunnel).
    static func base64(_ bytes: [UInt8]) -> String {
        var output = [UInt8](repeating: 0, count: (bytes.count + 2) / 3 * 4 + 1)
        let written = output.withUnsafeMutableBufferPointer { out in
            bytes.withUnsafeBufferPointer { input in
                EVP_EncodeBlock(out.baseAddress, input.baseAddress, Int32(input.count))
            }
        }
        return String(decoding: output.prefix(Int(max(0, written))), as: UTF8.self)
    }
}

/// The parent's answer to our CONNECT, parsed from the bytes read so far.
enum ParentReply: Equatable {
    case needMore
    /// 2xx: the tunnel is open; `length` bytes of head precede any destination bytes.
    case established(length: Int)
    /// Another status (407, 403, 502...), or not HTTP at all: the status line, for the audit.
    case refused(statusLine: String)

    /// The most head bytes a parent may send before its blank line: more is not a proxy reply.
    static let limit = 8192

    static func parse(_ bytes: UnsafeRawBufferPointer) -> ParentReply {
        let terminator: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a]
        var end: Int?
        if bytes.count >= 4 {
            for index in 0...(bytes.count - 4) where bytes[index] == 0x0d {
                if bytes[index + 1] == 0x0a && bytes[index + 2] == 0x0d && bytes[index + 3] == 0x0a {
                    end = index + terminator.count
                    break
                }
            }
        }
        let lineEnd = bytes.firstIndex(of: 0x0d) ?? bytes.count
        let statusLine = String(decoding: bytes.prefix(min(lineEnd, 200)).map { $0 >= 0x20 && $0 < 0x7f ? $0 : 0x5f }, as: UTF8.self)
        guard let end else {
            return bytes.count >= limit ? .refused(statusLine: statusLine) : .needMore
        }
        // "HTTP/1.x 2xx": the status code is the three bytes after the first space.
        let line = Array(bytes.prefix(lineEnd))
        guard line.count >= 12, line.starts(with: Array("HTTP/1.".utf8)), line[8] == 0x20, line[9] == UInt8(ascii: "2"),
            line[10] >= 0x30, line[10] <= 0x39, line[11] >= 0x30, line[11] <= 0x39, line.count == 12 || line[12] == 0x20
        else { return .refused(statusLine: statusLine) }
        return .established(length: end)
    }
}
