import CEgressShims
import Glibc

/// An IP address, v4 or v6, as plain bytes: the vocabulary of allow rules and deny ranges.
///
/// Parsing is strict on purpose (inet_pton): one dotted-quad spelling for IPv4, no octal,
/// hex, short forms or zone ids, so a policy decision never depends on a resolver's
/// interpretation of a literal.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)  // host byte order
    case v6(UInt64, UInt64)  // high and low halves, host byte order

    /// Parses a literal strictly; `nil` for anything inet_pton would not accept.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self = IPAddress(in6: v6)
            return
        }
        return nil
    }

    init(in6 value: in6_addr) {
        var high: UInt64 = 0
        var low: UInt64 = 0
        withUnsafeBytes(of: value) { raw in
            for index in 0..<8 { high = high << 8 | UInt64(raw[index]) }
            for index in 8..<16 { low = low << 8 | UInt64(raw[index]) }
        }
        self = .v6(high, low)
    }

    var in6: in6_addr {
        guard case .v6(let high, let low) = self else { return in6_addr() }
        var value = in6_addr()
        withUnsafeMutableBytes(of: &value) { raw in
            for index in 0..<8 { raw[index] = UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * index)) }
            for index in 0..<8 { raw[8 + index] = UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * index)) }
        }
        return value
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), if it is one.
    public var mappedIPv4: UInt32? {
        guard case .v6(let high, let low) = self, high == 0, low >> 32 == 0xffff else { return nil }
        return UInt32(truncatingIfNeeded: low)
    }

    public var description: String {
        switch self {
        case .v4(let value):
            var addr = in_addr(s_addr: value.bigEndian)
            return format(AF_INET, &addr)
        case .v6:
            var addr = in6
            return format(AF_INET6, &addr)
        }
    }

    private func format<T>(_ family: CInt, _ value: inout T) -> String {
        var buffer = [UInt8](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let ok = withUnsafeMutablePointer(to: &value) { raw in
            buffer.withUnsafeMutableBufferPointer { out in
                out.baseAddress.map { base in
                    base.withMemoryRebound(to: CChar.self, capacity: out.count) {
                        inet_ntop(family, UnsafeRawPointer(raw), $0, socklen_t(out.count)) != nil
                    }
                } ?? false
            }
        }
        guard ok, let end = buffer.firstIndex(of: 0) else { return "?" }
        return String(decoding: buffer[..<end], as: UTF8.self)
    }
}

/// A socket address (IPv4 or IPv6 with port), stored as the kernel's `sockaddr_storage`.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    var storage: sockaddr_storage
    var length: socklen_t

    public init(ip: IPAddress, port: UInt16) {
        storage = sockaddr_storage()
        switch ip {
        case .v4(let value):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr = in_addr(s_addr: value.bigEndian)
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                withUnsafeBytes(of: sin) { raw.copyMemory(from: $0) }
            }
        case .v6:
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_addr = ip.in6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                withUnsafeBytes(of: sin6) { raw.copyMemory(from: $0) }
            }
        }
    }

    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// Parses `host:port` or `[v6]:port` with a literal IP (for listen addresses).
    public init?(parsing text: String) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                text.index(after: close) < text.endIndex,
                text[text.index(after: close)] == ":"
            else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let ip = IPAddress(String(host)), !portText.isEmpty, portText.allSatisfy(\.isASCII),
            portText.allSatisfy(\.isNumber), let port = UInt16(portText)
        else { return nil }
        self.init(ip: ip, port: port)
    }

    public var family: CInt { CInt(storage.ss_family) }

    public var ip: IPAddress {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                let sin = raw.loadUnaligned(as: sockaddr_in.self)
                return .v4(UInt32(bigEndian: sin.sin_addr.s_addr))
            }
            let sin6 = raw.loadUnaligned(as: sockaddr_in6.self)
            return IPAddress(in6: sin6.sin6_addr)
        }
    }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET { return UInt16(bigEndian: raw.loadUnaligned(as: sockaddr_in.self).sin_port) }
            return UInt16(bigEndian: raw.loadUnaligned(as: sockaddr_in6.self).sin6_port)
        }
    }

    public func withPort(_ port: UInt16) -> SocketAddress { SocketAddress(ip: ip, port: port) }

    public var description: String {
        switch ip {
        case .v4: return "\(ip):\(port)"
        case .v6: return "[\(ip)]:\(port)"
        }
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.ip == rhs.ip && lhs.port == rhs.port
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ip)
        hasher.combine(port)
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}
