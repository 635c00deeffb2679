import EgressLoop

extension ProxyConfig {
    /// The effective configuration as YAML that `parse` reads back to an equal value
    /// (`--check-config` prints it; a test checks the round trip).
    public func renderYAML() -> String {
        func duration(_ value: Duration) -> String {
            let millis = value.nanosecondsClampedMillis
            if millis % 3_600_000 == 0 && millis > 0 { return "\(millis / 3_600_000)h" }
            if millis % 60_000 == 0 && millis > 0 { return "\(millis / 60_000)m" }
            if millis % 1000 == 0 { return "\(millis / 1000)s" }
            return "\(millis)ms"
        }
        func list(_ items: [String]) -> String { "[" + items.joined(separator: ", ") + "]" }
        var out = "listen: \"\(listen)\"\nadmin: \"\(admin)\"\nloops: \(loops)\n"
        out += "limits: {maxTunnels: \(limits.maxTunnels), headerBytes: \(limits.headerBytes)}\n"
        out += "timeouts: {header: \(duration(timeouts.header)), dial: \(duration(timeouts.dial)), "
        out += "idle: \(duration(timeouts.idle)), lifetime: \(duration(timeouts.lifetime)), "
        out += "drain: \(duration(timeouts.drain)), linger: \(duration(timeouts.linger)), "
        out += "quiescence: \(duration(timeouts.quiescence))}\n"
        if let deny { out += "deny: \(list(deny.map { "\"\($0)\"" }))\n" } else { out += "deny: default\n" }
        out += tenants.isEmpty ? "tenants: []\n" : "tenants:\n"
        for tenant in tenants {
            out += "  - name: \(tenant.name)\n    enabled: \(tenant.enabled)\n"
            switch tenant.credentials {
            case .sha256(let hash)?: out += "    credentials: {sha256: \(hash)}\n"
            case .secretFile(let path)?: out += "    credentials: {secretFile: \"\(path)\"}\n"
            case nil: break
            }
            if !tenant.sources.isEmpty { out += "    sources: \(list(tenant.sources.map { "\"\($0)\"" }))\n" }
            out += tenant.allow.isEmpty ? "    allow: []\n" : "    allow:\n"
            for rule in tenant.allow {
                switch rule.target {
                case .host(let pattern): out += "      - host: \"\(pattern)\"\n"
                case .cidr(let cidr): out += "      - cidr: \"\(cidr)\"\n"
                }
                out += "        ports: \(rule.ports)\n"
            }
            if !tenant.allowPrivate.isEmpty { out += "    allowPrivate: \(list(tenant.allowPrivate.map { "\"\($0)\"" }))\n" }
            if let egress = tenant.egressAddress { out += "    egressAddress: \"\(egress)\"\n" }
            if let maxTunnels = tenant.maxTunnels { out += "    maxTunnels: \(maxTunnels)\n" }
            if let rate = tenant.connectRate { out += "    connectRate: {perSecond: \(rate.perSecond), burst: \(rate.burst)}\n" }
        }
        return out
    }
}

extension Duration {
    var nanosecondsClampedMillis: UInt64 { nanosecondsClamped / 1_000_000 }
}
