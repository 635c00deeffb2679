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

    /// The proxy's own bound endpoints (listen and admin; a wildcard address expanded to
    /// every local address), always denied so no client can loop the proxy into itself or
    /// reach the admin endpoint through a tunnel.
    public let ownEndpoints: Set<SocketAddress>

    /// - Parameter bound: the addresses actually bound (port 0 in the config becomes the
    ///   kernel's choice); defaults to the configured ones.
    public init(config: ProxyConfig, bound: [SocketAddress]? = nil) {
        self.config = config
        tenants = config.tenants.enumerated().map { Tenant(index: $0.offset, config: $0.element) }
        deny = config.effectiveDeny
        var own = Set<SocketAddress>()
        let local = Posix.localAddresses()
        for address in bound ?? [config.listen, config.admin] {
            switch address.ip {
            case .v4(0):
                for ip in local { if case .v4 = ip { own.insert(SocketAddress(ip: ip, port: address.port)) } }
            case .v6(0, 0):
                for ip in local { own.insert(SocketAddress(ip: ip, port: address.port)) }
            default:
                own.insert(address)
            }
        }
        ownEndpoints = own
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

    /// True for the proxy's own listen or admin endpoint (IPv4-mapped spellings included).
    public func isOwnEndpoint(_ address: SocketAddress) -> Bool {
        if ownEndpoints.contains(address) { return true }
        if let v4 = address.ip.mappedIPv4 { return ownEndpoints.contains(SocketAddress(ip: .v4(v4), port: address.port)) }
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
