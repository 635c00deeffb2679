import EgressPosix

/// A destination as a client named it, after strict parsing (spec section 4, step 1).
public struct Authority: Hashable, Sendable, CustomStringConvertible {
    public enum Host: Hashable, Sendable {
        /// A DNS name: lowercase ASCII, no trailing dot.
        case name(String)
        /// An IP literal, parsed strictly (never handed to a resolver).
        case ip(IPAddress)
    }

    public var host: Host
    public var port: UInt16

    public init(host: Host, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var hostText: String {
        switch host {
        case .name(let name): return name
        case .ip(let ip): return ip.description
        }
    }

    public var description: String {
        switch host {
        case .name(let name): return "\(name):\(port)"
        case .ip(.v4): return "\(hostText):\(port)"
        case .ip(.v6): return "[\(hostText)]:\(port)"
        }
    }

    /// Why an authority was rejected (all map to 400).
    public enum Problem: String, Error, Sendable {
        case empty, userinfo, missingPort, badPort, portZero, badIPv6, badIPv4, badCharacter
        case emptyLabel, labelTooLong, nameTooLong, percentEncoding
    }

    /// Parses `host:port`, `[v6]:port` (or, with `defaultPort`, a bare host) strictly.
    ///
    /// Anything a resolver or URL parser might read as an IPv4 address in another spelling
    /// (decimal `2130706433`, octal `0177.0.0.1`, hex `0x7f.1`, short `127.1`) is rejected, not
    /// passed on: a name whose last label is numeric must be a canonical dotted quad.
    public static func parse(_ text: Substring, defaultPort: UInt16? = nil) -> Result<Authority, Problem> {
        if text.isEmpty { return .failure(.empty) }
        if text.utf8.contains(UInt8(ascii: "@")) { return .failure(.userinfo) }
        if text.utf8.contains(UInt8(ascii: "%")) { return .failure(.percentEncoding) }
        guard text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return .failure(.badCharacter) }

        var hostPart: Substring
        var portPart: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return .failure(.badIPv6) }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if rest.isEmpty {
                portPart = nil
            } else if rest.hasPrefix(":") {
                portPart = rest.dropFirst()
            } else {
                return .failure(.badIPv6)
            }
            guard let ip = IPAddress(String(hostPart)), case .v6 = ip else { return .failure(.badIPv6) }
            return port(portPart, defaultPort).map { Authority(host: .ip(ip), port: $0) }
        }
        if let colon = text.lastIndex(of: ":") {
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.utf8.contains(UInt8(ascii: ":")) { return .failure(.badIPv6) }  // unbracketed IPv6
        } else {
            hostPart = text
            portPart = nil
        }
        let portResult = port(portPart, defaultPort)
        guard case .success(let portValue) = portResult else { return portResult.map { _ in Authority(host: .name(""), port: 0) } }
        return parseHost(hostPart).map { Authority(host: $0, port: portValue) }
    }

    static func port(_ text: Substring?, _ defaultPort: UInt16?) -> Result<UInt16, Problem> {
        guard let text else {
            if let defaultPort { return .success(defaultPort) }
            return .failure(.missingPort)
        }
        guard !text.isEmpty, text.count <= 5, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let value = Int(text), value <= 65535
        else { return .failure(.badPort) }
        if value == 0 { return .failure(.portZero) }
        return .success(UInt16(value))
    }

    /// A host name or unbracketed IPv4 literal: lowercased, one trailing dot stripped.
    static func parseHost(_ raw: Substring) -> Result<Host, Problem> {
        var name = raw.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        if name.isEmpty { return .failure(.emptyLabel) }
        if name.utf8.count > 253 { return .failure(.nameTooLong) }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            if label.isEmpty { return .failure(.emptyLabel) }
            if label.utf8.count > 63 { return .failure(.labelTooLong) }
            guard label.utf8.allSatisfy({ isNameByte($0) }) else { return .failure(.badCharacter) }
        }
        if let last = labels.last, looksNumeric(last) {
            // An IPv4 attempt: only the canonical dotted quad is accepted (inet_pton rejects
            // octal leading zeros, hex, and fewer than four parts).
            guard labels.count == 4, let ip = IPAddress(name), case .v4 = ip else { return .failure(.badIPv4) }
            return .success(.ip(ip))
        }
        return .success(.name(name))
    }

    static func isNameByte(_ byte: UInt8) -> Bool {
        (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2d || byte == 0x5f
    }

    /// Digits only, or a `0x` hex form: what WHATWG URL parsing and inet_aton treat as a number.
    public static func looksNumeric(_ label: Substring) -> Bool {
        if label.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) { return true }
        if label.hasPrefix("0x") {
            return label.dropFirst(2).utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
        }
        return false
    }
}
