import EgressLoop
import Foundation
import GatewayOps
import Logging
import Testing

@testable import EgressProxyCore

/// The reload path with a real file and no server: what a SIGHUP or a watch event does to
/// the running policy, and what it counts.
@Suite struct ConfigReloaderTests {
    /// A config file in a fresh directory, removed when the test ends.
    final class ConfigFile {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("reloader-\(UUID().uuidString)")
        var path: String { directory.appendingPathComponent("config.yaml").path }

        init(_ text: String) throws {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try write(text)
        }

        func write(_ text: String) throws { try text.write(toFile: path, atomically: true, encoding: .utf8) }
        func remove() throws { try FileManager.default.removeItem(atPath: path) }
        deinit { try? FileManager.default.removeItem(at: directory) }
    }

    static func yaml(tenants: [String], listen: String = "127.0.0.1:0", loops: Int = 1) -> String {
        var text = "listen: \(listen)\nadmin: 127.0.0.1:0\nloops: \(loops)\ntenants:\n"
        for name in tenants { text += "  - name: \(name)\n    allow: [{host: github.com}]\n" }
        return text
    }

    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    /// Wall-clock nanoseconds the reloader reads: a test sets it before each load.
    final class WallClock: @unchecked Sendable {
        var nanoseconds: UInt64 = 1_700_000_000_000_000_000
    }
    let wall = WallClock()

    func start(_ file: ConfigFile) throws -> ConfigReloader {
        let config = try ProxyConfig.parse(yaml: String(contentsOfFile: file.path, encoding: .utf8)).get()
        let wall = self.wall
        return try ConfigReloader(config: config, path: file.path, logger: logger, wallClock: { wall.nanoseconds })
    }

    @Test func aChangedFileIsANewSnapshotAndAnUnchangedOneIsNothing() throws {
        let file = try ConfigFile(Self.yaml(tenants: ["a"]))
        let reloader = try start(file)
        #expect(reloader.reload(onlyIfChanged: false) != nil, "SIGHUP reloads even identical content")
        #expect(reloader.reload(onlyIfChanged: true) == nil, "a watch event with the same bytes is not a reload")
        #expect(reloader.successes == 1)
        try file.write(Self.yaml(tenants: ["a", "b"]))
        let next = try #require(reloader.reload(onlyIfChanged: true))
        #expect(next.tenants.map(\.name) == ["a", "b"])
        #expect(reloader.current.tenants.count == 2 && reloader.successes == 2 && reloader.failures == 0)
    }

    @Test func aBadFileKeepsTheRunningPolicyAndIsCounted() throws {
        let file = try ConfigFile(Self.yaml(tenants: ["a"]))
        let reloader = try start(file)
        #expect(reloader.lastSuccessUnixSeconds == 1_700_000_000, "the load at start counts as a success")
        wall.nanoseconds += 60_000_000_000
        try file.write("tenants: [{name: a, allow: [{host: '*.*'}]}]\nloops: many\n")
        #expect(reloader.reload(onlyIfChanged: true) == nil)
        #expect(reloader.failures == 1 && reloader.successes == 0)
        #expect(reloader.lastSuccessUnixSeconds == 1_700_000_000, "a rejected file moves no success timestamp")
        #expect(reloader.current.tenants.map(\.name) == ["a"], "still the policy that was running")
        try file.write(Self.yaml(tenants: ["c"]))
        #expect(reloader.reload(onlyIfChanged: true)?.tenants.map(\.name) == ["c"], "a fixed file loads again")
        #expect(reloader.lastSuccessUnixSeconds == 1_700_000_060)
    }

    @Test func listenersAndLoopsKeepTheirRunningValuesAndFlagsStillWin() throws {
        let file = try ConfigFile(Self.yaml(tenants: ["a"]))
        let reloader = try start(file)
        reloader.overrides = { $0.limits.maxTunnels = 7 }
        try file.write(Self.yaml(tenants: ["a"], listen: "127.0.0.1:3999", loops: 4))
        let next = try #require(reloader.reload(onlyIfChanged: true))
        #expect(next.config.listen.description == "127.0.0.1:0" && next.config.loops == 1, "restart-only keys kept")
        #expect(next.config.limits.maxTunnels == 7, "the command line's value, not the file's")
    }

    @Test func aFileMissingMidSwapIsNotAFailureButASighupOnNoFileIs() throws {
        let file = try ConfigFile(Self.yaml(tenants: ["a"]))
        let reloader = try start(file)
        try file.remove()
        #expect(reloader.reload(onlyIfChanged: true) == nil)
        #expect(reloader.failures == 0, "a ConfigMap swap briefly shows no file")
        #expect(reloader.reload(onlyIfChanged: false) == nil)
        #expect(reloader.failures == 1, "an operator's reload of a missing file is a failure")
    }

    @Test func theEmbeddedDefaultCannotBeReloaded() throws {
        let reloader = try ConfigReloader(config: ProxyConfig.embeddedDefault(), path: nil, logger: logger)
        #expect(reloader.reload(onlyIfChanged: false) == nil)
        #expect(reloader.successes == 0 && reloader.failures == 0)
    }

    @Test func aReloadKeepsEachTenantsLiveCountsByName() throws {
        let file = try ConfigFile(Self.yaml(tenants: ["a", "b"]))
        let reloader = try start(file)
        let before = reloader.current.tenants.map(\.runtime)
        try file.write(Self.yaml(tenants: ["b", "a", "c"]))
        let next = try #require(reloader.reload(onlyIfChanged: true))
        #expect(next.tenants[0].runtime === before[1] && next.tenants[1].runtime === before[0])
        #expect(next.tenants[2].runtime !== before[0] && next.tenants[2].runtime !== before[1])
    }
}

/// The metrics page from gathered counters, without a server.
@Suite struct ProxyMetricsTests {
    func page(draining: Bool = false) -> String {
        var loopA = LoopStats(), loopB = LoopStats()
        let a = loopA.slot(for: "team-a")
        loopA.tenants[a].results[TunnelResult.established.rawValue] = 3
        loopA.tenants[a].bytesUp = 100
        let b = loopB.slot(for: "team-a")
        loopB.tenants[b].results[TunnelResult.established.rawValue] = 2
        loopB.tenants[b].denied[DenyReason.notAllowed.ordinal] = 4
        return ProxyMetrics.render([loopA, loopB], process: .init(
            draining: draining, reloadSuccesses: 5, reloadFailures: 1, lastReloadSuccessUnixSeconds: 1_700_000_123,
            connectionsOpen: 42, connectionsLimit: 4_973, tenantLimits: [("team-a", 100, 7)]))
    }

    @Test func loopsAreSummedByTenantAndTheAdminLoopsStateIsShown() {
        let lines = Set(page(draining: true).split(separator: "\n").map(String.init))
        #expect(lines.contains(#"egress_proxy_requests_total{tenant="team-a",result="established"} 5"#))
        #expect(lines.contains(#"egress_proxy_tunnels_total{tenant="team-a",result="established"} 5"#), "the deprecated name, one release")
        #expect(lines.contains("egress_proxy_config_last_reload_success_timestamp_seconds 1700000123"))
        #expect(lines.contains("egress_proxy_connections_open 42") && lines.contains("egress_proxy_connections_limit 4973"))
        #expect(lines.contains(#"egress_proxy_tenant_tunnels_limit{tenant="team-a"} 100"#))
        #expect(lines.contains(#"egress_proxy_tenant_tunnels_held{tenant="team-a"} 7"#))
        #expect(lines.contains(#"egress_proxy_build_info{version="\#(BuildInfo.version)"} 1"#))
        #expect(lines.contains(#"egress_proxy_denied_total{tenant="team-a",reason="\#(DenyReason.notAllowed.rawValue)"} 4"#))
        #expect(lines.contains(#"egress_proxy_bytes_total{tenant="team-a",direction="upstream"} 100"#))
        #expect(lines.contains("egress_proxy_draining 1"))
        #expect(lines.contains(#"egress_proxy_config_reloads_total{result="failure"} 1"#))
    }

    @Test func everyCounterEndsInTotalAndEveryFamilyHasSamples() {
        let text = page()
        let families = text.split(separator: "\n").compactMap { line -> (String, String)? in
            let parts = line.split(separator: " ")
            guard parts.count == 4, parts[0] == "#", parts[1] == "TYPE" else { return nil }
            return (String(parts[2]), String(parts[3]))
        }
        #expect(families.count >= 10)
        for (name, kind) in families {
            if kind == "counter" { #expect(name.hasSuffix("_total"), "\(name)") }
            #expect(text.contains("\n\(name){") || text.contains("\n\(name) ") || text.contains("\n\(name)_bucket{"), "\(name) has samples")
        }
    }
}
