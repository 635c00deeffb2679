import CNghttp2
import Vocabulary

/// An https origin the multiplexer keeps connections to: the host as written in the URL
/// (brackets dropped from an IPv6 literal) and the port.
struct H2Origin: Hashable, Sendable, CustomStringConvertible {
    var host: String
    var port: UInt16

    /// The `:authority` (and CONNECT target) form: port omitted at 443, IPv6 bracketed.
    var authority: String { port == 443 ? bracketedHost : "\(bracketedHost):\(port)" }
    var hostPort: String { "\(bracketedHost):\(port)" }
    var bracketedHost: String { host.contains(":") ? "[\(host)]" : host }
    var description: String { hostPort }
}

/// An HTTP proxy to tunnel through with CONNECT (the tenant's egress proxy).
struct H2Proxy: Hashable, Sendable {
    var host: String
    var port: UInt16
    /// `Basic ...` from the proxy URL's userinfo, sent as Proxy-Authorization.
    var authorization: String?
}

/// The pure decisions of the multiplexer's connection routing: which URLs it takes, where their
/// connection goes (direct or through which proxy, as curl would decide it), the CONNECT
/// exchange, and which connection a new stream joins. No I/O, no loop: unit-tested alone.
enum H2Route {
    /// `https://authority/path?query` split into origin and `:path`; nil for anything else
    /// (plain http, userinfo, an unparsable port), which stays on curl.
    static func split(_ url: String) -> (origin: H2Origin, path: String)? {
        guard url.hasPrefix("https://") else { return nil }
        let rest = url.dropFirst("https://".count)
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = rest[..<end]
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        var path = String(rest[end...])
        if let fragment = path.firstIndex(of: "#") { path = String(path[..<fragment]) }
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        guard let (host, port) = hostAndPort(authority, defaultPort: 443) else { return nil }
        return (H2Origin(host: host, port: port), path)
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port`.
    static func hostAndPort(_ authority: Substring, defaultPort: UInt16) -> (String, UInt16)? {
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            let host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.isEmpty { return host.isEmpty ? nil : (host, defaultPort) }
            guard after.hasPrefix(":"), let port = UInt16(after.dropFirst()), port != 0 else { return nil }
            return (host, port)
        }
        let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty, parts.count <= 2 else { return nil }
        if parts.count == 1 { return (String(first), defaultPort) }
        guard let port = UInt16(parts[1]), port != 0 else { return nil }
        return (String(first), port)
    }

    /// The proxy for `origin`, as curl decides it: the configured proxy URL if any, else
    /// `https_proxy`/`HTTPS_PROXY`, then `all_proxy`/`ALL_PROXY`, unless `no_proxy`/`NO_PROXY`
    /// names the host. `.failure` for a proxy this client cannot speak to (not `http://`),
    /// which leaves the request to curl.
    static func proxy(for origin: H2Origin, configured: String?, environment: [String: String]) -> Result<H2Proxy?, RouteRefusal> {
        let url: String
        if let configured {
            url = configured
        } else {
            let names = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
            guard let found = names.lazy.compactMap({ environment[$0] }).first(where: { !$0.isEmpty }) else { return .success(nil) }
            let noProxy = environment["no_proxy"] ?? environment["NO_PROXY"] ?? ""
            if bypasses(host: origin.host, noProxy: noProxy) { return .success(nil) }
            url = found
        }
        return parseProxy(url).map { .success($0) } ?? .failure(RouteRefusal(detail: "proxy \(url) is not http://host:port"))
    }

    /// A proxy this client cannot use; the request goes to curl instead.
    struct RouteRefusal: Error, Equatable { var detail: String }

    /// `[http://][user:password@]host[:port][/]` (curl's default port 1080).
    static func parseProxy(_ url: String) -> H2Proxy? {
        var rest = Substring(url)
        if let scheme = rest.firstRange(of: "://") {
            guard rest[..<scheme.lowerBound].lowercased() == "http" else { return nil }
            rest = rest[scheme.upperBound...]
        }
        if let slash = rest.firstIndex(of: "/") {
            guard rest[slash...].allSatisfy({ $0 == "/" }) else { return nil }
            rest = rest[..<slash]
        }
        var authorization: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = percentDecoded(rest[..<at])
            authorization = "Basic " + Base64Text.encode(Array(credentials.utf8))
            rest = rest[rest.index(after: at)...]
        }
        guard let (host, port) = hostAndPort(rest, defaultPort: 1080) else { return nil }
        return H2Proxy(host: host, port: port, authorization: authorization)
    }

    /// curl's NO_PROXY rule: `*` matches every host; otherwise a comma-separated list of names
    /// (a leading dot optional) matching the host or any of its subdomains, or literal IPs.
    static func bypasses(host: String, noProxy: String) -> Bool {
        let host = host.lowercased()
        for raw in noProxy.split(separator: ",") {
            var entry = raw.trimmed(of: " \t").lowercased()
            if entry == "*" { return true }
            if entry.hasPrefix(".") { entry.removeFirst() }
            if entry.hasPrefix("["), entry.hasSuffix("]") { entry = String(entry.dropFirst().dropLast()) }
            guard !entry.isEmpty else { continue }
            if host == entry || host.hasSuffix("." + entry) { return true }
        }
        return false
    }

    static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index < utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%"), let high = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), high < utf8.endIndex,
                let low = utf8.index(index, offsetBy: 2, limitedBy: utf8.endIndex), low < utf8.endIndex,
                let value = UInt8(String(decoding: [utf8[high], utf8[low]], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                index = utf8.index(index, offsetBy: 3)
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: CONNECT

    /// The CONNECT request for `origin` (RFC 9110 9.3.6: the target in authority form).
    static func connectRequest(to origin: H2Origin, proxy: H2Proxy, userAgent: String) -> [UInt8] {
        var text = "CONNECT \(origin.hostPort) HTTP/1.1\r\nHost: \(origin.hostPort)\r\nUser-Agent: \(userAgent)\r\n"
        if let authorization = proxy.authorization { text += "Proxy-Authorization: \(authorization)\r\n" }
        return Array((text + "\r\n").utf8)
    }

    /// How far the proxy's answer to CONNECT has come.
    enum ConnectReply: Equatable {
        /// No blank line yet (keep reading, up to `maxConnectReply` bytes).
        case incomplete
        /// 2xx: the tunnel is up; bytes after the head (`leftover`) already belong to TLS.
        case established(leftover: Int)
        /// Any other status, with the status line for the error.
        case refused(status: Int, line: String)
        case malformed
    }

    /// A proxy's answer head is a few hundred bytes; more without a blank line is not a proxy.
    static let maxConnectReply = 16 * 1024

    static func parseConnectReply(_ bytes: [UInt8]) -> ConnectReply {
        guard let end = headEnd(bytes) else { return bytes.count > maxConnectReply ? .malformed : .incomplete }
        let head = String(decoding: bytes[..<end], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...999).contains(status) else {
            return .malformed
        }
        if (200..<300).contains(status) { return .established(leftover: bytes.count - end - 4) }
        return .refused(status: status, line: statusLine)
    }

    /// The offset of the `\r\n\r\n` ending a head, if any.
    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4)
        where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }

    // MARK: placement

    /// One connection of an origin, as placement sees it.
    struct Slot: Equatable {
        /// Streams open or waiting on it.
        var load: Int
        /// How many it may carry at once (our cap, lowered by the server's SETTINGS).
        var capacity: Int
        /// False after GOAWAY or while it is failing: it takes no new stream.
        var accepting: Bool
    }

    enum Placement: Equatable {
        case join(Int)
        case open
    }

    /// Where a new stream goes: the fullest connection that still has room (so connections
    /// fill up and idle ones can close), else a new connection while under `maxConnections`,
    /// else the least loaded one (nghttp2 queues the stream until a slot frees).
    static func place(on slots: [Slot], maxConnections: Int) -> Placement {
        let open = slots.indices.filter { slots[$0].accepting }
        if let best = open.filter({ slots[$0].load < slots[$0].capacity }).max(by: { slots[$0].load < slots[$1].load }) {
            return .join(best)
        }
        if slots.count < maxConnections || open.isEmpty { return .open }
        return open.min { slots[$0].load < slots[$1].load }.map(Placement.join) ?? .open
    }
}

/// RFC 4648 base64 for Proxy-Authorization, by libcrypto's encoder.
enum Base64Text {
    static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8](repeating: 0, count: (bytes.count + 2) / 3 * 4 + 1)
        let written = bytes.withUnsafeBufferPointer { input in
            out.withUnsafeMutableBufferPointer { EVP_EncodeBlock($0.baseAddress, input.baseAddress, Int32(input.count)) }
        }
        return String(decoding: out.prefix(Int(max(0, written))), as: UTF8.self)
    }
}
