import EgressPosix

/// The policy in force, immutable: a reload builds a new snapshot and hands it to every loop,
/// so a tunnel sees one consistent policy from its CONNECT to its dial.
public final class PolicySnapshot: Sendable {
    /// A configured tenant with its secret digest and the runtime counters shared by all loops.
    public struct Tenant: Sendable {
        public let index: Int
        public let config: ProxyConfig.Tenant
        /// SHA-256 of the secret (from `sha256`, or of `secretFile`'s content); nil = no credentials.
        let secretDigest: [UInt8]?
        public let runtime: TenantRuntime
        public var name: String { config.name }
    }

    /// Who a request is, or why it is refused with 407.
    public enum Selection: Sendable {
        case tenant(Tenant)
        case authFailed(reason: String)
    }

    public let config: ProxyConfig
    public let tenants: [Tenant]
    public let deny: [CIDR]
    /// Index used for requests that cannot be attributed to a tenant (metrics label "unknown").
    public var unknownTenantIndex: Int { tenants.count }

    /// The ports the proxy itself listens on (listen and admin, as bound). A candidate on one
    /// of them that is loopback, unspecified or any address of this host (checked when it is
    /// dialed, so addresses added after start count) is the proxy itself, or something next
    /// to it no tenant should reach: a client must never loop the proxy into itself or reach
    /// the admin endpoint through a tunnel, whatever spelling of "here" it uses.
    public let ownPorts: Set<UInt16>

    /// Builds a snapshot, reading every `secretFile` (a missing or empty one is an error, so
    /// a reload with a broken secret is rejected whole).
    /// - Parameters:
    ///   - bound: the addresses actually bound (port 0 in the config becomes the kernel's
    ///     choice); defaults to the configured ones.
    ///   - registry: where per-tenant counters and rate buckets live across reloads.
    public static func make(config: ProxyConfig, bound: [SocketAddress]? = nil, registry: TenantRegistry = TenantRegistry())
        throws(ConfigError) -> PolicySnapshot
    {
        var digests: [[UInt8]?] = []
        for (index, tenant) in config.tenants.enumerated() {
            switch tenant.credentials {
            case nil:
                digests.append(nil)
            case .sha256(let hex)?:
                digests.append(SHA256Digest.fromHex(hex))
            case .secretFile(let path)?:
                guard let bytes = Posix.readSmallFile(path, limit: 64 * 1024) else {
                    throw ConfigError(line: 0, key: "tenants[\(index)].credentials.secretFile", message: "cannot read \(path)")
                }
                var secret = bytes[...]
                while let last = secret.last, last == 0x0a || last == 0x0d { secret = secret.dropLast() }
                guard !secret.isEmpty else {
                    throw ConfigError(line: 0, key: "tenants[\(index)].credentials.secretFile", message: "\(path) is empty")
                }
                digests.append(SHA256Digest.hash(secret))
            }
        }
        return PolicySnapshot(config: config, bound: bound, digests: digests, registry: registry)
    }

    private init(config: ProxyConfig, bound: [SocketAddress]?, digests: [[UInt8]?], registry: TenantRegistry) {
        self.config = config
        tenants = config.tenants.enumerated().map { index, tenant in
            let runtime = registry.runtime(for: tenant.name)
            runtime.configure(rate: tenant.connectRate)
            return Tenant(index: index, config: tenant, secretDigest: digests[index], runtime: runtime)
        }
        deny = config.effectiveDeny
        ownPorts = Set((bound ?? [config.listen, config.admin]).map(\.port))
    }

    public var tenantNames: [String] { tenants.map(\.name) + ["unknown"] }

    /// A digest no secret hashes to in practice, compared against when the named tenant is
    /// unknown or has no credentials, so every failure path does the same work.
    private static let decoy = SHA256Digest.hash(Array("egress-proxy decoy".utf8))

    /// Tenant selection of spec section 3, in order: valid credentials name the tenant; else
    /// a `sources` match; else the single credential-less tenant; else 407. Wrong credentials
    /// therefore never grant more than the client's address already would.
    public func select(client ip: IPAddress, authorization: String?) -> Selection {
        var failure = "credentials_required"
        if let authorization {
            failure = "bad_credentials"
            if let credentials = BasicCredentials.parse(authorization) {
                let named = tenants.first { $0.name == credentials.name && $0.secretDigest != nil }
                let matches = ConstantTime.equals(credentials.secretDigest, named?.secretDigest ?? Self.decoy)
                if matches, let named { return .tenant(named) }
            }
        }
        if let tenant = tenant(forClient: ip) { return .tenant(tenant) }
        return .authFailed(reason: failure)
    }

    /// Who a client is without looking at credentials: a `sources` match, else the single
    /// credential-less tenant when it is the only one. Used for attribution of requests that
    /// fail before authentication, and as the identity when no credentials are sent.
    public func tenant(forClient ip: IPAddress) -> Tenant? {
        if let match = tenants.first(where: { $0.config.sources.contains { $0.contains(ip) } }) { return match }
        if tenants.count == 1, let only = tenants.first, only.config.credentials == nil { return only }
        return nil
    }

    /// True for anything on this host at one of the proxy's own ports (IPv4-mapped spellings
    /// included). Costs a bind test only for candidates on those ports.
    public func isOwnEndpoint(_ address: SocketAddress) -> Bool {
        guard ownPorts.contains(address.port) else { return false }
        let ip = address.ip.mappedIPv4.map(IPAddress.v4) ?? address.ip
        switch ip {
        case .v4(let value) where value >> 24 == 127 || value >> 24 == 0: return true  // 127/8, 0/8
        case .v6(0, let low) where low <= 1: return true  // ::, ::1
        default: return Posix.isLocalAddress(ip)
        }
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
            if let ranges, !ranges.contains(where: { $0.contains(ip) }) { continue }
            if DenyList.isDenied(ip, deny: deny, allowPrivate: tenant.config.allowPrivate) || isOwnEndpoint(candidate) {
                droppedPrivate = true
                continue
            }
            kept.append(candidate)
        }
        return (kept, droppedPrivate)
    }
}
