import EgressLoop
import EgressPosix
import YAMLNodes

/// The proxy's whole configuration (spec section 3), validated. Built only by `ProxyConfig.parse`
/// (or by tests), so a value of this type is always internally consistent.
public struct ProxyConfig: Sendable, Equatable {
    /// Process-wide limits: open client connections, request head size.
    public struct Limits: Sendable, Equatable {
        public var maxTunnels = 20_000
        public var headerBytes = 8192
    }

    /// Every deadline of spec section 3, with its default.
    public struct Timeouts: Sendable, Equatable {
        public var header: Duration = .seconds(5)
        public var dial: Duration = .seconds(10)
        public var idle: Duration = .seconds(300)
        public var lifetime: Duration = .seconds(6 * 3600)
        public var drain: Duration = .seconds(45)
        public var linger: Duration = .seconds(10)
        public var quiescence: Duration = .seconds(2)
    }

    /// How a tenant's Basic secret is stored: never in clear in the config.
    public enum Credentials: Sendable, Equatable {
        /// Hex SHA-256 of the secret, 64 lowercase hex digits.
        case sha256(String)
        /// A file holding the secret, re-read on reload.
        case secretFile(String)
    }

    /// One tenant as configured (spec section 3); `PolicySnapshot.Tenant` adds its runtime state.
    public struct Tenant: Sendable, Equatable {
        public var name: String
        public var enabled = true
        public var credentials: Credentials?
        public var sources: [CIDR] = []
        public var allow: [AllowRule] = []
        public var allowPrivate: [CIDR] = []
        public var egressAddress: IPAddress?
        public var maxTunnels: Int?
        public var connectRate: (perSecond: Double, burst: Int)?
        public var mode: PolicyMode = .enforce
        /// CONNECT onward through this proxy instead of dialing (see `ParentProxy`).
        public var parentProxy: ParentProxy?

        public init(name: String) { self.name = name }

        public static func == (lhs: Tenant, rhs: Tenant) -> Bool {
            lhs.name == rhs.name && lhs.enabled == rhs.enabled && lhs.credentials == rhs.credentials
                && lhs.sources == rhs.sources && lhs.allow == rhs.allow && lhs.allowPrivate == rhs.allowPrivate
                && lhs.egressAddress == rhs.egressAddress && lhs.maxTunnels == rhs.maxTunnels
                && lhs.connectRate?.perSecond == rhs.connectRate?.perSecond && lhs.connectRate?.burst == rhs.connectRate?.burst
                && lhs.mode == rhs.mode && lhs.parentProxy == rhs.parentProxy
        }
    }

    /// `enforce` refuses what the allowlist does not admit; `report` (for onboarding a tenant)
    /// lets it through, and logs and counts what enforce would have refused. Report mode is
    /// about the tenant's own allowlist only: the built-in deny ranges (the SSRF defence) and
    /// the `enabled: false` kill switch hold in both modes, since a tenant being onboarded is
    /// no less able to reach the cluster's private addresses.
    public enum PolicyMode: String, Sendable, Equatable {
        case enforce, report
    }

    public var listen = SocketAddress(ip: .v4(0), port: 3128)
    /// Loopback unless the file says otherwise: `/tunnels` lists tenants' clients and
    /// destinations, so it is never exposed by default (the GMC's manifests set it explicitly).
    public var admin = SocketAddress(ip: .v4(0x7f00_0001), port: 9090)
    /// 0 = one loop per CPU the process may use: its affinity, lowered to its cgroup's CPU
    /// quota rounded up (`ProxyServer.start`).
    public var loops = 0
    public var limits = Limits()
    public var timeouts = Timeouts()
    /// nil = the built-in list (`deny: default`).
    public var deny: [CIDR]?
    /// Clients whose PROXY protocol header (v1 or v2) is believed: the load balancers in front.
    /// Empty (the default): no header is ever honoured, from anyone.
    public var proxyProtocolSources: [CIDR] = []
    /// Relay bulk bytes through splice(2) pipes (the default) or only through user-space
    /// buffers (`splice: false`: for comparison in benchmarks, or a kernel where splice on
    /// sockets misbehaves). Read per tunnel, so a reload applies it to new tunnels.
    public var splice = true
    public var tenants: [Tenant] = []

    public init() {}

    /// Names no tenant may take: `unknown` labels the series of connections that never
    /// reached a tenant, and a tenant of that name would merge with them.
    public static let reservedTenantNames: Set<String> = ["unknown"]

    /// The deny ranges in force.
    public var effectiveDeny: [CIDR] { deny ?? DenyList.builtIn }

}

/// A configuration error, with the line (1-based, 0 when unknown) and the key path.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var key: String
    public var message: String

    public var description: String {
        line > 0 ? "line \(line): \(key): \(message)" : "\(key): \(message)"
    }
}

extension ProxyConfig {
    /// The embedded default (spec section 1): loopback only, one anonymous tenant, the hosts
    /// GitHub documents for self-hosted runners on port 443.
    public static let defaultYAML = """
        # egress-proxy embedded default configuration
        listen: 127.0.0.1:3128
        admin: 127.0.0.1:9090
        loops: 0
        limits: {maxTunnels: 20000, headerBytes: 8192}
        timeouts: {header: 5s, dial: 10s, idle: 300s, lifetime: 6h, drain: 45s, linger: 10s, quiescence: 2s}
        deny: default
        tenants:
          - name: default
            enabled: true
            allow:
              - host: github.com
              - host: "*.github.com"
              - host: "*.githubusercontent.com"
              - host: ghcr.io
              - host: "*.pkg.github.com"
              - host: "*.blob.core.windows.net"
              - host: github-cloud.s3.amazonaws.com
              - host: dependabot-actions.githubapp.com

        """

    public static func embeddedDefault() -> ProxyConfig {
        switch parse(yaml: defaultYAML) {
        case .success(let config): return config
        case .failure(let error): preconditionFailure("embedded default config is invalid: \(error)")
        }
    }

    /// Parses and validates YAML text. Every problem names its line and key.
    public static func parse(yaml: String) -> Result<ProxyConfig, ConfigError> {
        do {
            guard let root = try YAML.compose(yaml) else {
                // An empty or comment-only file (or one caught mid-write) would cut every tunnel.
                return .failure(ConfigError(line: 0, key: "tenants", message: "the file is empty: at least one tenant is required"))
            }
            return .success(try ConfigReader().read(root: root))
        } catch let error as ConfigError {
            return .failure(error)
        } catch let error as YAMLError {
            return .failure(ConfigError(line: error.line, key: "(yaml)", message: error.message))
        } catch {
            return .failure(ConfigError(line: 0, key: "(yaml)", message: "\(error)"))
        }
    }

}

/// Walks a composed YAML tree with marks so errors carry line numbers.
/// Every key the config file may hold, by the mapping it sits in (`""` the top, `tenants[]`
/// each tenant, `tenants[].allow[]` each rule). The parser accepts exactly these, unknown keys
/// being errors, and docs/configuration.md documents exactly these (`ConfigReferenceTests`
/// compares the two), so the reference cannot drift from what the proxy reads.
public enum ConfigSchema {
    public static let keys: [String: [String]] = [
        "": ["listen", "admin", "loops", "limits", "timeouts", "deny", "proxyProtocol", "splice", "tenants"],
        "limits": ["maxTunnels", "headerBytes"],
        "timeouts": ["header", "dial", "idle", "lifetime", "drain", "linger", "quiescence"],
        "proxyProtocol": ["trustedSources"],
        "tenants[]": ["name", "enabled", "credentials", "sources", "allow", "allowPrivate", "egressAddress", "maxTunnels",
                      "connectRate", "mode", "parentProxy"],
        "tenants[].credentials": ["sha256", "secretFile"],
        "tenants[].connectRate": ["perSecond", "burst"],
        "tenants[].allow[]": ["host", "cidr", "ports"],
    ]

    /// Every full key path, such as `tenants[].allow[].ports`.
    public static var paths: [String] {
        keys.flatMap { parent, names in names.map { parent.isEmpty ? $0 : "\(parent).\($0)" } }.sorted()
    }

    static func allowed(_ mapping: String) -> Set<String> { Set(keys[mapping] ?? []) }
}

struct ConfigReader {
    func fail(_ node: YAMLNode?, _ key: String, _ message: String) -> ConfigError {
        ConfigError(line: node?.line ?? 0, key: key, message: message)
    }

    /// The entries of a mapping, rejecting unknown and duplicate keys.
    func mapping(_ node: YAMLNode, _ path: String, allowed: Set<String>) throws -> [(String, YAMLNode, YAMLNode)] {
        guard case .mapping(let mapping) = node.value else { throw fail(node, path, "expected a mapping") }
        var seen = Set<String>()
        var entries: [(String, YAMLNode, YAMLNode)] = []
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw fail(keyNode, path, "keys must be strings") }
            let keyPath = path.isEmpty ? key : "\(path).\(key)"
            guard allowed.contains(key) else { throw fail(keyNode, keyPath, "unknown key") }
            guard seen.insert(key).inserted else { throw fail(keyNode, keyPath, "duplicate key") }
            entries.append((key, keyNode, value))
        }
        return entries
    }

    func scalar(_ node: YAMLNode, _ path: String) throws -> String {
        guard case .scalar(let text) = node.value else { throw fail(node, path, "expected a scalar") }
        return text
    }

    func sequence(_ node: YAMLNode, _ path: String) throws -> [YAMLNode] {
        if case .scalar(let text) = node.value, text.isEmpty || text == "null" || text == "~" {
            return []
        }
        guard case .sequence(let sequence) = node.value else { throw fail(node, path, "expected a list") }
        return Array(sequence)
    }

    func integer(_ node: YAMLNode, _ path: String, min: Int, max: Int) throws -> Int {
        let text = try scalar(node, path)
        guard let value = Int(text), value >= min, value <= max else {
            throw fail(node, path, "expected an integer from \(min) to \(max), got '\(text)'")
        }
        return value
    }

    func bool(_ node: YAMLNode, _ path: String) throws -> Bool {
        switch try scalar(node, path) {
        case "true": return true
        case "false": return false
        case let other: throw fail(node, path, "expected true or false, got '\(other)'")
        }
    }

    func address(_ node: YAMLNode, _ path: String) throws -> SocketAddress {
        let text = try scalar(node, path)
        guard let address = SocketAddress(parsing: text) else {
            throw fail(node, path, "expected IP:PORT or [IPv6]:PORT, got '\(text)'")
        }
        return address
    }

    func cidrs(_ node: YAMLNode, _ path: String) throws -> [CIDR] {
        try sequence(node, path).map { item in
            let text = try scalar(item, path)
            guard let cidr = CIDR(text) else { throw fail(item, path, "bad CIDR '\(text)' (host bits must be zero)") }
            return cidr
        }
    }

    /// `5s`, `300ms`, `10m`, `6h`.
    func duration(_ node: YAMLNode, _ path: String) throws -> Duration {
        let text = try scalar(node, path)
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (unit, millis) in units where text.hasSuffix(unit) {
            let number = text.dropLast(unit.count)
            if unit == "s" && number.hasSuffix("m") { continue }
            guard !number.isEmpty, number.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let value = Int64(number),
                value <= 1_000_000_000
            else { break }
            return .milliseconds(value * millis)
        }
        throw fail(node, path, "expected a duration such as 500ms, 5s, 10m or 6h, got '\(text)'")
    }

    func read(root: YAMLNode) throws -> ProxyConfig {
        var config = ProxyConfig()
        for (key, _, value) in try mapping(root, "", allowed: ConfigSchema.allowed("")) {
            switch key {
            case "listen": config.listen = try address(value, key)
            case "admin": config.admin = try address(value, key)
            case "loops": config.loops = try integer(value, key, min: 0, max: 1024)
            case "splice": config.splice = try bool(value, key)
            case "limits":
                for (name, _, item) in try mapping(value, key, allowed: ConfigSchema.allowed("limits")) {
                    let path = "limits.\(name)"
                    if name == "maxTunnels" { config.limits.maxTunnels = try integer(item, path, min: 1, max: 10_000_000) }
                    if name == "headerBytes" { config.limits.headerBytes = try integer(item, path, min: 256, max: 1 << 20) }
                }
            case "timeouts":
                for (name, _, item) in try mapping(value, key, allowed: ConfigSchema.allowed("timeouts")) {
                    let parsed = try duration(item, "timeouts.\(name)")
                    switch name {
                    case "header": config.timeouts.header = parsed
                    case "dial": config.timeouts.dial = parsed
                    case "idle": config.timeouts.idle = parsed
                    case "lifetime": config.timeouts.lifetime = parsed
                    case "drain": config.timeouts.drain = parsed
                    case "linger": config.timeouts.linger = parsed
                    default: config.timeouts.quiescence = parsed
                    }
                }
            case "proxyProtocol":
                for (_, _, item) in try mapping(value, key, allowed: ConfigSchema.allowed("proxyProtocol")) {
                    config.proxyProtocolSources = try cidrs(item, "proxyProtocol.trustedSources")
                }
            case "deny":
                if case .scalar(let text) = value.value {
                    guard text == "default" else { throw fail(value, key, "expected 'default' or a list of CIDRs") }
                    config.deny = nil
                } else {
                    config.deny = try cidrs(value, key)
                }
            default:
                config.tenants = try sequence(value, key).enumerated().map { index, item in
                    try tenant(item, "tenants[\(index)]")
                }
            }
        }
        try validate(config, root: root)
        return config
    }

    func tenant(_ node: YAMLNode, _ path: String) throws -> ProxyConfig.Tenant {
        let entries = try mapping(node, path, allowed: ConfigSchema.allowed("tenants[]"))
        guard let nameEntry = entries.first(where: { $0.0 == "name" }) else { throw fail(node, path, "a tenant needs a name") }
        let name = try scalar(nameEntry.2, "\(path).name")
        guard !name.isEmpty, name.count <= 63, name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d })
        else { throw fail(nameEntry.2, "\(path).name", "must be 1-63 characters of [a-z0-9-], got '\(name)'") }
        guard !ProxyConfig.reservedTenantNames.contains(name) else {
            throw fail(nameEntry.2, "\(path).name", "'\(name)' is reserved (it labels traffic no tenant claimed)")
        }
        var tenant = ProxyConfig.Tenant(name: name)
        for (key, _, value) in entries {
            let keyPath = "\(path).\(key)"
            switch key {
            case "enabled": tenant.enabled = try bool(value, keyPath)
            case "credentials":
                let credentialEntries = try mapping(value, keyPath, allowed: ConfigSchema.allowed("tenants[].credentials"))
                guard credentialEntries.count == 1, let (kind, _, item) = credentialEntries.first else {
                    throw fail(value, keyPath, "give exactly one of sha256 or secretFile")
                }
                let text = try scalar(item, "\(keyPath).\(kind)")
                if kind == "sha256" {
                    let lowered = text.lowercased()
                    guard lowered.count == 64, lowered.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
                        throw fail(item, "\(keyPath).sha256", "expected 64 hex digits")
                    }
                    tenant.credentials = .sha256(lowered)
                } else {
                    guard text.hasPrefix("/") else { throw fail(item, "\(keyPath).secretFile", "expected an absolute path") }
                    tenant.credentials = .secretFile(text)
                }
            case "sources": tenant.sources = try cidrs(value, keyPath)
            case "allowPrivate": tenant.allowPrivate = try cidrs(value, keyPath)
            case "allow":
                tenant.allow = try sequence(value, keyPath).enumerated().map { index, item in
                    try allowRule(item, "\(keyPath)[\(index)]")
                }
            case "egressAddress":
                let text = try scalar(value, keyPath)
                guard let ip = IPAddress(text) else { throw fail(value, keyPath, "expected an IP address, got '\(text)'") }
                tenant.egressAddress = ip
            case "maxTunnels": tenant.maxTunnels = try integer(value, keyPath, min: 1, max: 10_000_000)
            case "mode":
                let text = try scalar(value, keyPath)
                guard let mode = ProxyConfig.PolicyMode(rawValue: text) else {
                    throw fail(value, keyPath, "expected enforce or report, got '\(text)'")
                }
                tenant.mode = mode
            case "parentProxy":
                let text = try scalar(value, keyPath)
                switch ParentProxy.parse(text) {
                case .success(let parent): tenant.parentProxy = parent
                // The value may hold a password: the error names the problem, never echoes it.
                case .failure(let problem): throw fail(value, keyPath, "\(problem)")
                }
            case "connectRate":
                var perSecond: Double?
                var burst: Int?
                for (name, _, item) in try mapping(value, keyPath, allowed: ConfigSchema.allowed("tenants[].connectRate")) {
                    if name == "perSecond" {
                        let text = try scalar(item, "\(keyPath).perSecond")
                        guard let rate = Double(text), rate > 0, rate <= 1_000_000 else {
                            throw fail(item, "\(keyPath).perSecond", "expected a positive number")
                        }
                        perSecond = rate
                    } else {
                        burst = try integer(item, "\(keyPath).burst", min: 1, max: 1_000_000)
                    }
                }
                guard let perSecond else { throw fail(value, keyPath, "perSecond is required") }
                tenant.connectRate = (perSecond, burst ?? max(1, Int(perSecond.rounded(.up))))
            default: break
            }
        }
        return tenant
    }

    func allowRule(_ node: YAMLNode, _ path: String) throws -> AllowRule {
        let entries = try mapping(node, path, allowed: ConfigSchema.allowed("tenants[].allow[]"))
        var target: AllowRule.Target?
        var ports = PortSet.https
        for (key, _, value) in entries {
            let keyPath = "\(path).\(key)"
            switch key {
            case "host":
                let text = try scalar(value, keyPath)
                if IPAddress(text) != nil { throw fail(value, keyPath, "'\(text)' is an address: use cidr") }
                guard let pattern = HostPattern.parse(text) else {
                    throw fail(value, keyPath, "expected a host name or *.suffix, got '\(text)'")
                }
                target = .host(pattern)
            case "cidr":
                let text = try scalar(value, keyPath)
                guard let cidr = CIDR(text) else { throw fail(value, keyPath, "bad CIDR '\(text)' (host bits must be zero)") }
                target = .cidr(cidr)
            default:
                var set = PortSet(ranges: [], any: false)
                let items = try sequence(value, keyPath)
                guard !items.isEmpty else { throw fail(value, keyPath, "an empty port list allows nothing") }
                for item in items {
                    let text = try scalar(item, keyPath)
                    guard let entry = PortSet.parseEntry(text) else {
                        throw fail(item, keyPath, "expected a port 1-65535, a range such as 8000-8999, or \"*\", got '\(text)'")
                    }
                    set.any = set.any || entry.any
                    set.ranges += entry.ranges
                }
                ports = set.any ? .all : set
            }
        }
        if entries.contains(where: { $0.0 == "host" }) && entries.contains(where: { $0.0 == "cidr" }) {
            throw fail(node, path, "give host or cidr, not both")
        }
        guard let target else { throw fail(node, path, "a rule needs host or cidr") }
        return AllowRule(target: target, ports: ports)
    }

    func validate(_ config: ProxyConfig, root: YAMLNode) throws {
        guard !config.tenants.isEmpty else { throw fail(root, "tenants", "at least one tenant is required") }
        var names = Set<String>()
        for tenant in config.tenants where !names.insert(tenant.name).inserted {
            throw fail(root, "tenants", "duplicate tenant name '\(tenant.name)'")
        }
        let sources = config.tenants.flatMap { tenant in tenant.sources.map { (tenant.name, $0) } }
        for (index, first) in sources.enumerated() {
            for second in sources[(index + 1)...] where first.1.overlaps(second.1) {
                throw fail(root, "tenants", "sources \(first.1) (\(first.0)) and \(second.1) (\(second.0)) overlap")
            }
        }
        if config.listen == config.admin && config.listen.port != 0 { throw fail(root, "admin", "admin and listen must differ") }
    }
}

extension CIDR {
    func overlaps(_ other: CIDR) -> Bool {
        let shorter = min(prefix, other.prefix)
        switch (network, other.network) {
        case (.v4, .v4), (.v6, .v6): return CIDR.mask(network, shorter) == CIDR.mask(other.network, shorter)
        default: return false
        }
    }
}
