import EgressPosix

/// The policy in force, immutable: a reload builds a new snapshot and hands it to every loop,
/// so a tunnel sees one consistent policy from its CONNECT to its dial.
public final class PolicySnapshot: Sendable {
    public struct Tenant: Sendable {
        public let index: Int
        public let config: ProxyConfig.Tenant
        public var name: String { config.name }
    }

    public let config: ProxyConfig
    public let tenants: [Tenant]
    public let deny: [CIDR]
    /// Index used for requests that cannot be attributed to a tenant (metrics label "unknown").
    public var unknownTenantIndex: Int { tenants.count }

    public init(config: ProxyConfig) {
        self.config = config
        tenants = config.tenants.enumerated().map { Tenant(index: $0.offset, config: $0.element) }
        var deny = config.effectiveDeny
        // The proxy's own listening addresses are always denied, so a client cannot loop
        // the proxy into itself or reach its admin endpoint through a tunnel.
        for address in [config.listen, config.admin] {
            let host: CIDR? = {
                switch address.ip {
                case .v4(let value): return value == 0 ? nil : CIDR(address.ip.description + "/32")
                case .v6(let high, let low): return high == 0 && low == 0 ? nil : CIDR(address.ip.description + "/128")
                }
            }()
            if let host { deny.append(host) }
        }
        self.deny = deny
    }

    public var tenantNames: [String] { tenants.map(\.name) + ["unknown"] }

    /// Who a client is without looking at credentials: a `sources` match, else the single
    /// credential-less tenant when it is the only one. Used for attribution of requests that
    /// fail before authentication, and as the identity when no credentials are sent.
    public func tenant(forClient ip: IPAddress) -> Tenant? {
        let effective: IPAddress = ip.mappedIPv4.map { .v4($0) } ?? ip
        if let match = tenants.first(where: { $0.config.sources.contains { $0.contains(effective) } }) { return match }
        if tenants.count == 1, let only = tenants.first, only.config.credentials == nil { return only }
        return nil
    }

    /// Checks a destination port against the proxy's own listen and admin ports on
    /// addresses the proxy accepts on (wildcard listeners make every local address ours).
    public func isOwnEndpoint(_ address: SocketAddress) -> Bool {
        for own in [config.listen, config.admin] where own.port == address.port {
            switch own.ip {
            case .v4(0): if case .v4 = address.ip { return true }
            case .v6(0, 0): return true
            default: if own.ip == address.ip { return true }
            }
        }
        return false
    }

    /// Filters resolved or literal candidates: in the rule's ranges (if any), not denied,
    /// not the proxy itself. Returns the survivors and whether any were dropped as private.
    public func admissible(_ candidates: [SocketAddress], tenant: Tenant, within ranges: [CIDR]?)
        -> (addresses: [SocketAddress], droppedPrivate: Bool)
    {
        var kept: [SocketAddress] = []
        var droppedPrivate = false
        for candidate in candidates {
            let ip = candidate.ip
            if let ranges {
                let effective: IPAddress = ip.mappedIPv4.map { .v4($0) } ?? ip
                guard ranges.contains(where: { $0.contains(effective) || $0.contains(ip) }) else { continue }
            }
            if DenyList.isDenied(ip, deny: deny, allowPrivate: tenant.config.allowPrivate) || isOwnEndpoint(candidate) {
                droppedPrivate = true
                continue
            }
            kept.append(candidate)
        }
        return (kept, droppedPrivate)
    }
}
