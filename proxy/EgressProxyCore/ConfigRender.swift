import EgressLoop
import YAMLNodes

extension ProxyConfig {
    /// The effective configuration as YAML that `parse` reads back to an equal value
    /// (`--check-config` prints it; the GMC renders every tenant's ConfigMap through it).
    ///
    /// Built as a YAML node tree and emitted by libyaml, never by pasting text: every string is a
    /// double-quoted scalar the emitter escapes, so no value (a host, a path) can end its
    /// scalar early and add keys of its own. A test round-trips hostile values through it.
    public func renderYAML() -> String {
        var root: [(String, YAMLNode)] = [
            ("listen", .quoted(listen.description)),
            ("admin", .quoted(admin.description)),
            ("loops", .plain(loops)),
            ("limits", .mapping([("maxTunnels", .plain(limits.maxTunnels)), ("headerBytes", .plain(limits.headerBytes))])),
            ("timeouts", .mapping([
                ("header", .quoted(Self.durationText(timeouts.header))),
                ("dial", .quoted(Self.durationText(timeouts.dial))),
                ("idle", .quoted(Self.durationText(timeouts.idle))),
                ("lifetime", .quoted(Self.durationText(timeouts.lifetime))),
                ("drain", .quoted(Self.durationText(timeouts.drain))),
                ("linger", .quoted(Self.durationText(timeouts.linger))),
                ("quiescence", .quoted(Self.durationText(timeouts.quiescence))),
            ])),
        ]
        if !proxyProtocolSources.isEmpty {
            root.append(("proxyProtocol", .mapping([("trustedSources", .sequence(proxyProtocolSources.map { .quoted($0.description) }))])))
        }
        if !splice { root.append(("splice", .plain(false))) }
        root.append(("deny", deny.map { list in .sequence(list.map { .quoted($0.description) }) } ?? .quoted("default")))
        root.append(("tenants", .sequence(tenants.map(Self.tenantNode))))
        // Emitting a tree we built from scalars, mappings and sequences cannot fail; if the
        // emitter ever did, its empty string is a config every parser refuses (no tenants).
        return YAML.emit(.mapping(root))
    }

    private static func tenantNode(_ tenant: Tenant) -> YAMLNode {
        var entries: [(String, YAMLNode)] = [("name", .quoted(tenant.name)), ("enabled", .plain(tenant.enabled))]
        switch tenant.credentials {
        case .sha256(let hash)?: entries.append(("credentials", .mapping([("sha256", .quoted(hash))])))
        case .secretFile(let path)?: entries.append(("credentials", .mapping([("secretFile", .quoted(path))])))
        case nil: break
        }
        if !tenant.sources.isEmpty { entries.append(("sources", .sequence(tenant.sources.map { .quoted($0.description) }))) }
        entries.append(("allow", .sequence(tenant.allow.map { rule in
            let target: (String, YAMLNode)
            switch rule.target {
            case .host(let pattern): target = ("host", .quoted(pattern.description))
            case .cidr(let cidr): target = ("cidr", .quoted(cidr.description))
            }
            let ports: [YAMLNode] = rule.ports.any
                ? [.quoted("*")]
                : rule.ports.ranges.map { $0.lowerBound == $0.upperBound ? .plain(Int($0.lowerBound)) : .quoted("\($0.lowerBound)-\($0.upperBound)") }
            return .mapping([target, ("ports", .sequence(ports, flow: true))])
        })))
        if !tenant.allowPrivate.isEmpty {
            entries.append(("allowPrivate", .sequence(tenant.allowPrivate.map { .quoted($0.description) })))
        }
        if let egress = tenant.egressAddress { entries.append(("egressAddress", .quoted(egress.description))) }
        if let maxTunnels = tenant.maxTunnels { entries.append(("maxTunnels", .plain(maxTunnels))) }
        if let rate = tenant.connectRate {
            entries.append(("connectRate", .mapping([("perSecond", .plain("\(rate.perSecond)")), ("burst", .plain(rate.burst))])))
        }
        if tenant.mode != .enforce { entries.append(("mode", .plain(tenant.mode.rawValue))) }
        if let parent = tenant.parentProxy { entries.append(("parentProxy", .quoted(parent.url))) }
        return .mapping(entries)
    }

    /// The shortest exact spelling of a duration in the units the parser reads.
    static func durationText(_ value: Duration) -> String {
        let millis = value.nanosecondsClampedMillis
        if millis % 3_600_000 == 0 && millis > 0 { return "\(millis / 3_600_000)h" }
        if millis % 60_000 == 0 && millis > 0 { return "\(millis / 60_000)m" }
        if millis % 1000 == 0 { return "\(millis / 1000)s" }
        return "\(millis)ms"
    }
}

extension YAMLNode {
    /// A plain scalar for numbers and booleans, whose text we produce ourselves.
    static func plain(_ value: some CustomStringConvertible) -> YAMLNode { .plain(value.description) }
}

extension Duration {
    var nanosecondsClampedMillis: UInt64 { nanosecondsClamped / 1_000_000 }
}
