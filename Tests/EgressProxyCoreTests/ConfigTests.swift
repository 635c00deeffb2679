import EgressPosix
import Testing

@testable import EgressProxyCore

@Suite struct ConfigTests {
    @Test func embeddedDefaultIsTheSpecDefault() {
        let config = ProxyConfig.embeddedDefault()
        #expect(config.listen.description == "127.0.0.1:3128")
        #expect(config.admin.description == "127.0.0.1:9090")
        #expect(config.tenants.count == 1)
        #expect(config.tenants[0].name == "default")
        #expect(config.tenants[0].credentials == nil)
        let allow = config.tenants[0].allow
        for host in ["github.com", "api.github.com", "objects.githubusercontent.com", "results-receiver.actions.githubusercontent.com",
                     "ghcr.io", "npm.pkg.github.com", "x.blob.core.windows.net", "github-cloud.s3.amazonaws.com",
                     "dependabot-actions.githubapp.com"]
        {
            #expect(allow.decide(Authority(host: .name(host), port: 443)) == .allowed, "\(host)")
            #expect(allow.decide(Authority(host: .name(host), port: 80)) == .denied(.portNotAllowed), "\(host)")
        }
        #expect(allow.decide(Authority(host: .name("example.com"), port: 443)) == .denied(.notAllowed))
        #expect(config.deny == nil)
    }

    @Test func fullSchemaParses() throws {
        let yaml = """
            listen: 0.0.0.0:3128
            admin: "[::1]:9090"
            loops: 2
            limits: {maxTunnels: 100, headerBytes: 4096}
            timeouts: {header: 500ms, dial: 3s, idle: 5m, lifetime: 6h}
            deny: [10.0.0.0/8, "fc00::/7"]
            proxyProtocol: {trustedSources: [10.9.0.0/16, "fd00::/8"]}
            tenants:
              - name: team-a
                enabled: false
                credentials: {sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08}
                sources: [10.42.0.0/16]
                allow:
                  - host: github.com
                  - cidr: 203.0.113.0/24
                    ports: [443, 22, "8000-8999", "*"]
                allowPrivate: [10.1.0.0/16]
                egressAddress: 192.0.2.10
                maxTunnels: 500
                connectRate: {perSecond: 50, burst: 100}
                mode: report
              - name: team-b
                credentials: {secretFile: /etc/egress/team-b}
            """
        let config = try ProxyConfig.parse(yaml: yaml).get()
        #expect(config.loops == 2)
        #expect(config.admin.description == "[::1]:9090")
        #expect(config.limits.maxTunnels == 100)
        #expect(config.timeouts.header == .milliseconds(500))
        #expect(config.timeouts.idle == .seconds(300))
        #expect(config.timeouts.drain == .seconds(45), "a partial timeouts map keeps the other defaults")
        #expect(config.deny?.count == 2)
        #expect(config.proxyProtocolSources.map(\.description) == ["10.9.0.0/16", "fd00::/8"])
        let a = config.tenants[0]
        #expect(a.enabled == false)
        #expect(a.credentials == .sha256("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"))
        #expect(a.egressAddress == IPAddress("192.0.2.10"))
        #expect(a.connectRate?.perSecond == 50 && a.connectRate?.burst == 100)
        #expect(a.allow[1].ports.any)
        #expect(a.mode == .report)
        #expect(config.tenants[1].mode == .enforce, "enforce unless the tenant says report")
        #expect(config.tenants[1].credentials == .secretFile("/etc/egress/team-b"))
        // The effective config printed by --check-config reads back to the same value.
        #expect(try ProxyConfig.parse(yaml: config.renderYAML()).get() == config)
        #expect(try ProxyConfig.parse(yaml: ProxyConfig.embeddedDefault().renderYAML()).get() == ProxyConfig.embeddedDefault())
    }

    /// The admin endpoint lists tenants' clients and destinations: a file that does not say
    /// where it listens keeps it on loopback (the Kubernetes manifests set it explicitly).
    @Test func adminDefaultsToLoopbackWithAnyFile() throws {
        let config = try ProxyConfig.parse(yaml: "listen: 0.0.0.0:3128\ntenants:\n  - name: a\n").get()
        #expect(config.admin.description == "127.0.0.1:9090")
        #expect(config.listen.description == "0.0.0.0:3128")
    }

    @Test(arguments: [
        ("listen: 1.2.3.4:1\nbogus: 1\n", 2, "bogus", "unknown key"),
        ("timeouts:\n  header: 5s\n  heade: 5s\n", 3, "timeouts.heade", "unknown key"),
        ("timeouts: {header: 5}\n", 1, "timeouts.header", "duration"),
        ("timeouts: {header: 5sec}\n", 1, "timeouts.header", "duration"),
        ("listen: github.com:3128\n", 1, "listen", "IP:PORT"),
        ("listen: 1.2.3.4:99999\n", 1, "listen", "IP:PORT"),
        ("loops: -1\n", 1, "loops", "integer"),
        ("loops: many\n", 1, "loops", "integer"),
        ("limits: {maxTunnels: 0}\n", 1, "limits.maxTunnels", "integer"),
        ("deny: [10.0.0.1/8]\n", 1, "deny", "bad CIDR"),
        ("deny: sometimes\n", 1, "deny", "default"),
        ("tenants:\n  - enabled: true\n", 2, "tenants[0]", "name"),
        ("tenants:\n  - name: Team_A\n", 2, "tenants[0].name", "[a-z0-9-]"),
        ("tenants:\n  - name: a\n  - name: a\n", 1, "tenants", "duplicate tenant"),
        ("tenants:\n  - name: a\n    colour: red\n", 3, "tenants[0].colour", "unknown key"),
        ("tenants:\n  - name: a\n    credentials: {sha256: abc}\n", 3, "tenants[0].credentials.sha256", "64 hex"),
        ("tenants:\n  - name: a\n    credentials: {secretFile: relative}\n", 3, "tenants[0].credentials.secretFile", "absolute"),
        ("tenants:\n  - name: a\n    credentials: {}\n", 3, "tenants[0].credentials", "exactly one"),
        ("tenants:\n  - name: a\n    sources: [10.0.0.0/8]\n  - name: b\n    sources: [10.1.0.0/16]\n", 1, "tenants", "overlap"),
        ("tenants:\n  - name: a\n    allow:\n      - host: github.com\n        ports: [0]\n", 5, "tenants[0].allow[0].ports", "port"),
        ("tenants:\n  - name: a\n    allow:\n      - host: github.com\n        ports: [\"9-1\"]\n", 5, "tenants[0].allow[0].ports", "port"),
        ("tenants:\n  - name: a\n    allow:\n      - host: github.com\n        ports: []\n", 5, "tenants[0].allow[0].ports", "empty"),
        ("tenants:\n  - name: a\n    allow:\n      - host: \"*.\"\n", 4, "tenants[0].allow[0].host", "host name"),
        ("tenants:\n  - name: a\n    allow:\n      - host: 10.0.0.1\n", 4, "tenants[0].allow[0].host", "use cidr"),
        ("tenants:\n  - name: a\n    allow:\n      - port: 443\n", 4, "tenants[0].allow[0].port", "unknown key"),
        ("tenants:\n  - name: a\n    allow:\n      - ports: [443]\n", 4, "tenants[0].allow[0]", "host or cidr"),
        ("tenants:\n  - name: a\n    egressAddress: nowhere\n", 3, "tenants[0].egressAddress", "IP address"),
        ("tenants:\n  - name: a\n    connectRate: {burst: 3}\n", 3, "tenants[0].connectRate", "perSecond"),
        ("tenants:\n  - name: a\n    enabled: yes-please\n", 3, "tenants[0].enabled", "true or false"),
        ("tenants:\n  - name: a\n    mode: audit\n", 3, "tenants[0].mode", "enforce or report"),
        ("proxyProtocol: {trustedSources: [10.0.0.1/8]}\n", 1, "proxyProtocol.trustedSources", "bad CIDR"),
        ("proxyProtocol: {trusted: []}\n", 1, "proxyProtocol.trusted", "unknown key"),
        ("listen: [unclosed\n", 2, "(yaml)", ""),
        ("", 0, "tenants", "at least one tenant"),
        ("# comments only\n\n", 0, "tenants", "at least one tenant"),
        ("tenants:\n  - name: unknown\n", 2, "tenants[0].name", "reserved"),
    ])
    func errorsNameLineAndKey(yaml: String, line: Int, key: String, fragment: String) {
        switch ProxyConfig.parse(yaml: yaml) {
        case .success:
            Issue.record("accepted: \(yaml)")
        case .failure(let error):
            #expect(error.line == line, "\(error)")
            #expect(error.key == key, "\(error)")
            #expect(fragment.isEmpty || error.message.contains(fragment), "\(error)")
        }
    }

    @Test func durations() throws {
        let config = try ProxyConfig.parse(yaml: "timeouts: {header: 250ms, dial: 2m, idle: 1h, drain: 0s}\ntenants: [{name: a}]").get()
        #expect(config.timeouts.header == .milliseconds(250))
        #expect(config.timeouts.dial == .seconds(120))
        #expect(config.timeouts.idle == .seconds(3600))
        #expect(config.timeouts.drain == .zero)
    }
}
