import EgressPosix

/// An address range, `10.0.0.0/8` or `fc00::/7`. Host bits must be zero (a typo such as
/// `10.0.0.1/8` is reported, not silently widened).
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let network: IPAddress
    public let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let ip = IPAddress(String(parts[0])) else { return nil }
        let maxPrefix: Int
        if case .v4 = ip { maxPrefix = 32 } else { maxPrefix = 128 }
        var prefix = maxPrefix
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), parts[1].count <= 3,
                let value = Int(parts[1]), value <= maxPrefix
            else { return nil }
            prefix = value
        }
        guard Self.mask(ip, prefix) == ip else { return nil }
        network = ip
        self.prefix = prefix
    }

    static func mask(_ ip: IPAddress, _ prefix: Int) -> IPAddress {
        switch ip {
        case .v4(let value):
            let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefix)
            return .v4(value & mask)
        case .v6(let high, let low):
            let highMask: UInt64 = prefix >= 64 ? ~0 : (prefix == 0 ? 0 : ~UInt64(0) << UInt64(64 - prefix))
            let lowMask: UInt64 = prefix <= 64 ? 0 : (prefix == 128 ? ~0 : ~UInt64(0) << UInt64(128 - prefix))
            return .v6(high & highMask, low & lowMask)
        }
    }

    /// Same-family containment; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is also judged
    /// as the IPv4 address it carries, because that is where the kernel would connect. Every
    /// policy check (allow ranges, deny ranges, sources, allowPrivate) goes through here.
    public func contains(_ ip: IPAddress) -> Bool {
        switch (network, ip) {
        case (.v4, .v4), (.v6, .v6): return Self.mask(ip, prefix) == network
        case (.v4, .v6): return ip.mappedIPv4.map { Self.mask(.v4($0), prefix) == network } ?? false
        default: return false
        }
    }

    public var description: String { "\(network)/\(prefix)" }
}

/// Allowed destination ports: a list of single ports and ranges, or any.
public struct PortSet: Hashable, Sendable, CustomStringConvertible {
    public var ranges: [ClosedRange<UInt16>]
    public var any: Bool

    public static let https = PortSet(ranges: [443...443], any: false)
    public static let all = PortSet(ranges: [], any: true)

    public init(ranges: [ClosedRange<UInt16>], any: Bool) {
        self.ranges = ranges
        self.any = any
    }

    public func contains(_ port: UInt16) -> Bool {
        any || ranges.contains { $0.contains(port) }
    }

    /// Parses one entry: `443`, `"8000-8999"` or `"*"`.
    public static func parseEntry(_ text: String) -> PortSet? {
        if text == "*" { return .all }
        func number(_ part: Substring) -> UInt16? {
            guard !part.isEmpty, part.count <= 5, part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let value = Int(part), value >= 1, value <= 65535
            else { return nil }
            return UInt16(value)
        }
        let bounds = text.split(separator: "-", omittingEmptySubsequences: false)
        if bounds.count == 1, let port = number(bounds[0]) { return PortSet(ranges: [port...port], any: false) }
        if bounds.count == 2, let low = number(bounds[0]), let high = number(bounds[1]), low <= high {
            return PortSet(ranges: [low...high], any: false)
        }
        return nil
    }

    public var description: String {
        if any { return "[\"*\"]" }
        return "[" + ranges.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\"\($0.lowerBound)-\($0.upperBound)\"" }
            .joined(separator: ", ") + "]"
    }
}

/// A host pattern: an exact name, or `*.suffix` matching any name strictly below the suffix.
public enum HostPattern: Hashable, Sendable, CustomStringConvertible {
    case exact(String)
    /// Stored with its leading dot: `.githubusercontent.com`.
    case suffix(String)

    /// Parses a pattern from config: lowercased, one trailing dot stripped, labels checked
    /// with the same rules as client authorities.
    public static func parse(_ text: String) -> HostPattern? {
        if text.hasPrefix("*.") {
            guard case .success(.name(let name)) = Authority.parseHost(Substring(text.dropFirst(2))) else { return nil }
            return .suffix("." + name)
        }
        guard case .success(.name(let name)) = Authority.parseHost(Substring(text)) else { return nil }
        return .exact(name)
    }

    /// `name` must already be normalised (lowercase, no trailing dot), as `Authority` gives it.
    public func matches(_ name: String) -> Bool {
        switch self {
        case .exact(let exact): return name == exact
        case .suffix(let suffix): return name.count > suffix.count && name.hasSuffix(suffix)
        }
    }

    public var description: String {
        switch self {
        case .exact(let name): return name
        case .suffix(let suffix): return "*" + suffix
        }
    }
}

/// One `allow` entry of a tenant.
public struct AllowRule: Hashable, Sendable {
    /// What a rule matches: a host pattern, or an address range (literals, and names after resolution).
    public enum Target: Hashable, Sendable {
        case host(HostPattern)
        case cidr(CIDR)
    }

    public var target: Target
    public var ports: PortSet

    public init(target: Target, ports: PortSet) {
        self.target = target
        self.ports = ports
    }
}

/// Why a destination was refused (the `reason` label of egress_proxy_denied_total).
public enum DenyReason: String, Sendable {
    case notAllowed = "not_allowed"
    case privateAddress = "private_address"
    case tenantDisabled = "tenant_disabled"
    case portNotAllowed = "port_not_allowed"
}

/// The decision on a destination before name resolution (spec section 4, step 2).
public enum AllowDecision: Equatable, Sendable {
    /// Allowed whatever the name resolves to (a host rule matched).
    case allowed
    /// Allowed only for resolved addresses inside these ranges (cidr rules with the port).
    case allowedIfResolvedInto([CIDR])
    case denied(DenyReason)
}

/// The built-in deny ranges of spec section 4 (SSRF defence).
public enum DenyList {
    public static let builtIn: [CIDR] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
        "::/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8",
    ].compactMap { CIDR($0) }

    /// True when `ip` is in `deny` and not exempted by `allowPrivate`. An IPv4-mapped IPv6
    /// address is judged as the IPv4 address it carries (the kernel would connect there).
    public static func isDenied(_ ip: IPAddress, deny: [CIDR], allowPrivate: [CIDR]) -> Bool {
        guard deny.contains(where: { $0.contains(ip) }) else { return false }
        return !allowPrivate.contains { $0.contains(ip) }
    }
}

extension Array where Element == AllowRule {
    /// Matches a destination against the allow list (host rules by name, cidr rules by literal
    /// or, after resolution, by address). A rule whose target matches but whose ports do not
    /// yields `port_not_allowed` when nothing else allows the destination.
    public func decide(_ authority: Authority) -> AllowDecision {
        var targetMatchedWrongPort = false
        var cidrs: [CIDR] = []
        for rule in self {
            switch (rule.target, authority.host) {
            case (.host(let pattern), .name(let name)):
                guard pattern.matches(name) else { continue }
                if rule.ports.contains(authority.port) { return .allowed }
                targetMatchedWrongPort = true
            case (.cidr(let cidr), .ip(let ip)):
                guard cidr.contains(ip) else { continue }
                if rule.ports.contains(authority.port) { return .allowed }
                targetMatchedWrongPort = true
            case (.cidr(let cidr), .name):
                if rule.ports.contains(authority.port) { cidrs.append(cidr) }
            case (.host, .ip):
                continue
            }
        }
        if !cidrs.isEmpty { return .allowedIfResolvedInto(cidrs) }
        return .denied(targetMatchedWrongPort ? .portNotAllowed : .notAllowed)
    }
}
