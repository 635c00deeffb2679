import GatewayOps
import Vocabulary

/// The proxy's `/metrics` page: the loops' counters merged by tenant, and the admin loop's
/// own state (drain, reloads). A pure function of what it is given, so what a scrape shows
/// is exactly what was gathered, and the page can be checked without a running server.
enum ProxyMetrics {
    /// What only the admin loop knows, and the limits ratios are alerted against.
    struct Process {
        var draining: Bool
        var reloadSuccesses: UInt64
        var reloadFailures: UInt64
        var lastReloadSuccessUnixSeconds: Double = 0
        /// Client connections open past accept, and the `maxTunnels` they are held to (the
        /// configured value, lowered to what the descriptor limit allows).
        var connectionsOpen = 0
        var connectionsLimit = 0
        /// Tenants with their own `maxTunnels`: the limit and the slots held now.
        var tenantLimits: [(tenant: String, limit: Int, held: Int)] = []
    }

    static func render(_ loops: [LoopStats], process: Process) -> String {
        let tenants = LoopStats.merged(loops)
        var out = PrometheusWriter()
        func label(_ name: String) -> [(key: String, value: String)] { [("tenant", name)] }
        out.family("egress_proxy_tunnels_active", .gauge, help: "Tunnels open now.")
        for (name, stats) in tenants { out.sample("egress_proxy_tunnels_active", labels: label(name), Double(stats.active)) }
        // Every request by its outcome, refusals included: the name says requests. The old name
        // counted the same and said tunnels; it stays one release for dashboards to move.
        for (family, help) in [("egress_proxy_requests_total", "Requests by outcome (established or why refused)."),
                               ("egress_proxy_tunnels_total", "Deprecated, same values as egress_proxy_requests_total; removed in the next release.")] {
            out.family(family, .counter, help: help)
            for (name, stats) in tenants {
                for result in TunnelResult.allCases {
                    out.sample(family, labels: label(name) + [("result", result.label)], Double(stats.results[result.rawValue]))
                }
            }
        }
        out.family("egress_proxy_bytes_total", .counter, help: "Bytes relayed; upstream is client to destination.")
        for (name, stats) in tenants {
            out.sample("egress_proxy_bytes_total", labels: label(name) + [("direction", "upstream")], Double(stats.bytesUp))
            out.sample("egress_proxy_bytes_total", labels: label(name) + [("direction", "downstream")], Double(stats.bytesDown))
        }
        out.family("egress_proxy_connect_seconds", .histogram, help: "Time from request to 200 reply.")
        for (name, stats) in tenants { out.histogram("egress_proxy_connect_seconds", labels: label(name), stats.connectSeconds) }
        out.family("egress_proxy_tunnel_seconds", .histogram, help: "Tunnel lifetime.")
        for (name, stats) in tenants { out.histogram("egress_proxy_tunnel_seconds", labels: label(name), stats.tunnelSeconds) }
        out.family("egress_proxy_denied_total", .counter, help: "Requests refused by policy, by reason.")
        for (name, stats) in tenants {
            for reason in DenyReason.allCases {
                out.sample("egress_proxy_denied_total", labels: label(name) + [("reason", reason.rawValue)],
                           Double(stats.denied[reason.ordinal]))
            }
        }
        out.family("egress_proxy_report_only_total", .counter,
                   help: "Tunnels a tenant in report mode was let through that enforce would have denied, by reason.")
        for (name, stats) in tenants {
            for reason in [DenyReason.notAllowed, .portNotAllowed] {
                out.sample("egress_proxy_report_only_total", labels: label(name) + [("reason", reason.rawValue)],
                           Double(stats.reported[reason.ordinal]))
            }
        }
        out.family("egress_proxy_draining", .gauge, help: "1 while draining after SIGTERM.")
        out.sample("egress_proxy_draining", process.draining ? 1 : 0)
        out.family("egress_proxy_config_reloads_total", .counter, help: "Config reloads by result.")
        out.sample("egress_proxy_config_reloads_total", labels: [("result", "success")], Double(process.reloadSuccesses))
        out.sample("egress_proxy_config_reloads_total", labels: [("result", "failure")], Double(process.reloadFailures))
        out.family("egress_proxy_config_last_reload_success_timestamp_seconds", .gauge,
                   help: "Unix time the config last loaded successfully (at start, or by a reload).")
        out.sample("egress_proxy_config_last_reload_success_timestamp_seconds", process.lastReloadSuccessUnixSeconds)
        out.family("egress_proxy_connections_open", .gauge, help: "Client connections open past accept (what maxTunnels bounds).")
        out.sample("egress_proxy_connections_open", Double(process.connectionsOpen))
        out.family("egress_proxy_connections_limit", .gauge,
                   help: "limits.maxTunnels in effect (lowered to fit the descriptor limit); past it new clients get 503.")
        out.sample("egress_proxy_connections_limit", Double(process.connectionsLimit))
        out.family("egress_proxy_tenant_tunnels_held", .gauge, help: "Tunnel slots a tenant with its own maxTunnels holds now.")
        for entry in process.tenantLimits { out.sample("egress_proxy_tenant_tunnels_held", labels: label(entry.tenant), Double(entry.held)) }
        out.family("egress_proxy_tenant_tunnels_limit", .gauge, help: "A tenant's own maxTunnels; past it its new tunnels get 503.")
        for entry in process.tenantLimits { out.sample("egress_proxy_tenant_tunnels_limit", labels: label(entry.tenant), Double(entry.limit)) }
        BuildInfo.write(prefix: "egress_proxy", into: &out)
        ProcessMetrics.write(into: &out)
        return out.text
    }
}
