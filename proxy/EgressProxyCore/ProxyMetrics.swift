import GatewayOps
import Vocabulary

/// The proxy's `/metrics` page: the loops' counters merged by tenant, and the admin loop's
/// own state (drain, reloads). A pure function of what it is given, so what a scrape shows
/// is exactly what was gathered, and the page can be checked without a running server.
enum ProxyMetrics {
    /// What only the admin loop knows.
    struct Process {
        var draining: Bool
        var reloadSuccesses: UInt64
        var reloadFailures: UInt64
    }

    static func render(_ loops: [LoopStats], process: Process) -> String {
        let tenants = LoopStats.merged(loops)
        var out = PrometheusWriter()
        func label(_ name: String) -> [(key: String, value: String)] { [("tenant", name)] }
        out.family("egress_proxy_tunnels_active", .gauge, help: "Tunnels open now.")
        for (name, stats) in tenants { out.sample("egress_proxy_tunnels_active", labels: label(name), Double(stats.active)) }
        out.family("egress_proxy_tunnels_total", .counter, help: "Requests by outcome.")
        for (name, stats) in tenants {
            for result in TunnelResult.allCases {
                out.sample("egress_proxy_tunnels_total", labels: label(name) + [("result", result.label)],
                           Double(stats.results[result.rawValue]))
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
        out.family("egress_proxy_build_info", .gauge, help: "Build information.")
        out.sample("egress_proxy_build_info", labels: [("version", ProxyServer.version)], 1)
        ProcessMetrics.write(into: &out)
        return out.text
    }
}
