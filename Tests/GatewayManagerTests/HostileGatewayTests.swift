import EgressPosix
import EgressProxyCore
import Foundation
import KubeKit
import Testing

@testable import GatewayManager

/// Issue 9's classes, each tested as a class: anything in an ActionsGateway is hostile input to
/// a cluster-wide operator. What must hold for every input: no trap, a refusal names its field,
/// and every accepted gateway renders a proxy config the proxy's own parser loads with the SSRF
/// defence intact.
@Suite struct HostileGatewayTests {
    static let platform = GatewayEnvironment(
        allowedPriorityClasses: ["runner-critical", "runner-standard"],
        allowedExtraHosts: ["*.npmjs.org", "files.pythonhosted.org", "*.example.org"].compactMap(HostPattern.parse))

    static let planInputs = GatewayReconciler.Inputs(
        allowedPriorityClasses: platform.allowedPriorityClasses, allowedExtraHosts: platform.allowedExtraHosts)

    func problems(_ yaml: String, _ environment: GatewayEnvironment = platform) throws -> [GatewayProblem] {
        switch try ActionsGateway.parse(yaml: yaml).validated(in: environment) {
        case .success: return []
        case .failure(let rejection): return rejection.problems
        }
    }

    func gateway(_ replacements: [(String, String)]) -> String {
        replacements.reduce(ValidationTests.example) { $0.replacingFirst($1.0, with: $1.1) }
    }

    // MARK: 1. config injection through gitHubURL

    static let hostileURLs = [
        "https://github.com\"\n  deny: []\n  x: \"/org", "https://github.com\\/org", "https://github.com\n/org",
        "https://git hub.com/org", "https://gïthub.com/org", "https://github.com\u{0}/org", "https://github.com\t/org",
        "https://169.254.169.254/org", "https://127.1/org", "https://2130706433/org", "https://0x7f.1/org", "https://[::1]/org",
        "https://[fd00::1]:443/org", "https://github.com//org", "https://github.com/org//x", "https://github.com/",
        "https://github.com", "https://u@github.com/org", "https://github.com:0/org", "https://github.com:65536/org",
        "https://github.com:/org", "https://github.com/org?x=1", "https://github.com/org#x", "https://github.com/%2e%2e",
        "https://github.com/../org", "https://github.com/org/\"", "https://github.com/o'rg", "https://-github.com/org",
        "https://github..com/org", "https://" + String(repeating: "a", count: 64) + ".com/org", "https://localhost/org",
        "https://github.com/" + String(repeating: "o", count: 3000), "http://github.com/org", "HTTPS://github.com/org",
    ]

    @Test(arguments: hostileURLs)
    func hostileGitHubURLsAreRefused(url: String) throws {
        let found = try problems(gateway([("gitHubURL: https://github.com/team-a-org", "gitHubURL: \(Self.yamlQuoted(url))")]))
        #expect(found.contains { $0.field == "spec.gitHubURL" }, "\(url.debugDescription): \(found)")
    }

    @Test func realGitHubURLsAreAcceptedAndAllowedOnTheirPort() throws {
        for (url, host, port) in [
            ("https://github.com/team-a-org", "github.com", UInt16(443)), ("https://github.com/enterprises/acme", "github.com", 443),
            ("https://GHES.Example.com:8443/org", "ghes.example.com", 8443), ("https://ghe.corp.example.com/a.b-c_d/", "ghe.corp.example.com", 443),
        ] {
            let defaulted = try ActionsGateway.parse(yaml: gateway([("gitHubURL: https://github.com/team-a-org", "gitHubURL: \(url)")]))
                .validated(in: Self.platform).get()
            #expect(defaulted.gitHubHost == host && defaulted.gitHubPort == port, "\(url)")
            let config = try ProxyConfig.parse(yaml: DesiredState.proxyConfig(defaulted)).get()
            #expect(config.tenants[0].allow.decide(Authority(host: .name(host), port: port)) == .allowed, "\(url)")
        }
    }

    /// The serializer, not the validation, is what keeps a value inside its scalar: a config
    /// whose only free-form string (a secretFile path) holds YAML syntax reads back unchanged.
    @Test func theRendererKeepsEveryStringInsideItsScalar() throws {
        var generator = SplitMix(seed: 9)
        let pieces = ["\"", "\\", "\n", "\r", "\t", "'", ": ", "- ", "#", "{", "}", "[", "]", "&a", "*a", "!!str", "%", "@", "`",
                      "deny: []", "\u{0}", "\u{7f}", "é", "\u{2028}", "\u{FEFF}", "---", "...", " ", "~", "null", "true", "0x1"]
        for _ in 0..<2000 {
            var path = "/"
            for _ in 0..<generator.below(8) { path += pieces[generator.below(pieces.count)] + (generator.below(2) == 0 ? "x" : "") }
            var config = ProxyConfig()
            var tenant = ProxyConfig.Tenant(name: "t")
            tenant.credentials = .secretFile(path)
            tenant.allow = [AllowRule(target: .host(.exact("github.com")), ports: .https)]
            config.tenants = [tenant]
            let parsed = ProxyConfig.parse(yaml: config.renderYAML())
            #expect((try? parsed.get()) == config, "\(path.debugDescription) -> \(parsed)")
        }
    }

    // MARK: 2. numbers and durations

    @Test(arguments: ["9223372036854775807h", "9223372036854775807s", "99999999999h", "1000000000s", "25h", "1441m", "86401s",
                      "-1s", "1.5h", "1e3s", "5", "h", "", " 5m", "5m ", "5M", "5d", "٣s", "+5s", "0x10s"])
    func hostileDurationsAreRefused(ttl: String) throws {
        let found = try problems(gateway([("podTemplate: {spec", "completedPodTTL: \(Self.yamlQuoted(ttl))\n      podTemplate: {spec")]))
        #expect(found.contains { $0.field == "spec.runnerGroups[0].completedPodTTL" }, "\(ttl.debugDescription): \(found)")
    }

    @Test func durationBounds() {
        #expect(durationSeconds("0s", max: 86_400) == 0)
        #expect(durationSeconds("24h", max: 86_400) == 86_400)
        #expect(durationSeconds("1440m", max: 86_400) == 86_400)
        #expect(durationSeconds("999999999h", max: Int.max) == 999_999_999 * 3600)
    }

    @Test(arguments: [
        ("maxWorkers: 30", "maxWorkers: 1001", "spec.runnerGroups[1].maxWorkers"),
        ("maxWorkers: 30", "maxWorkers: 9223372036854775807", "spec.runnerGroups[1].maxWorkers"),
        ("threshold: 20", "threshold: 100000", "spec.runnerGroups[0].priorityTiers[1].threshold"),
        ("maxListeners: 10", "maxListeners: -9223372036854775808", "spec.runnerGroups[0].maxListeners"),
        ("maxListeners: 10", "maxListeners: 10\n      maxEvictionRetries: 9223372036854775807", "spec.runnerGroups[0].maxEvictionRetries"),
    ])
    func hugeNumbersAreRefused(original: String, replacement: String, field: String) throws {
        let found = try problems(gateway([(original, replacement)]))
        #expect(found.contains { $0.field == field }, "\(found)")
    }

    /// Values that do not fit the field's type (as a pre-schema CR or a hand-made API object
    /// could hold) are a problem naming the field, not a failed, forever-retried reconcile.
    @Test(arguments: [
        (#"{"maxWorkers": 1e30}"#, "spec.runnerGroups[0].maxWorkers"),
        (#"{"maxWorkers": "ten"}"#, "spec.runnerGroups[0].maxWorkers"),
        (#"{"runnerLabels": "gpu"}"#, "spec.runnerGroups[0].runnerLabels"),
        (#"{"podTemplate": {"spec": {"hostNetwork": "yes"}}}"#, "spec.runnerGroups[0].podTemplate.spec.hostNetwork"),
        (#"{"podTemplate": {"spec": {"containers": {"name": "runner"}}}}"#, "spec.runnerGroups[0].podTemplate.spec.containers"),
    ])
    func wrongTypesBecomeProblems(group: String, field: String) throws {
        let json = #"{"metadata": {"name": "g", "namespace": "n"}, "spec": {"gitHubAppRef": {"name": "a"}, "#
            + #""gitHubURL": "https://github.com/o", "runnerGroups": [\#(group)]}}"#
        switch ActionsGateway.decode(json: Array(json.utf8)) {
        case .success(let decoded): Issue.record("decoded: \(decoded)")
        case .failure(let rejection): #expect(rejection.problems.map(\.field) == [field], "\(rejection)")
        }
    }

    @Test func aGroupWithoutCeilingOrTiersGetsTen() throws {
        let defaulted = try ActionsGateway.parse(yaml: ValidationTests.example).validated(in: Self.platform).get()
        #expect(defaulted.groups[1].maxWorkers == 30)
        let minimal = try ActionsGateway.parse(yaml: gateway([("\n      maxWorkers: 30", "")])).validated(in: Self.platform).get()
        #expect(minimal.groups[1].maxWorkers == 10)
    }

    // MARK: 11. extraAllowedHosts

    @Test(arguments: [
        "*.com", "*.org", "com", "localhost", "*.internal", "metadata.google.internal", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", "x.svc", "printer.local", "metadata.azure.com", "169.254.169.254", "10.0.0.1",
        "[::1]", "::1", "0x7f.1", "2130706433", String(repeating: "a", count: 64) + ".example.org", "Registry.npmjs.org",
        "registry.npmjs.org.", "registry.npmjs.org:443", "bad host.example.org", "x\".example.org", "é.example.org", "",
        "*.evil.com", "npmjs.org", "*.pythonhosted.org", "evil.org",
    ])
    func extraHostsThePlatformWouldNotAllowAreRefused(host: String) throws {
        let found = try problems(gateway([("runnerGroups:", "proxy: {extraAllowedHosts: [\(Self.yamlQuoted(host))]}\n  runnerGroups:")]))
        #expect(found.contains { $0.field == "spec.proxy.extraAllowedHosts[0]" }, "\(host.debugDescription): \(found)")
    }

    @Test func extraHostsCoveredByThePlatformAreAllowed() throws {
        let hosts = ["registry.npmjs.org", "*.npmjs.org", "*.cdn.npmjs.org", "files.pythonhosted.org", "api.example.org"]
        let yaml = gateway([("runnerGroups:", "proxy: {extraAllowedHosts: [\(hosts.map(Self.yamlQuoted).joined(separator: ", "))]}\n  runnerGroups:")])
        let defaulted = try ActionsGateway.parse(yaml: yaml).validated(in: Self.platform).get()
        #expect(defaulted.extraAllowedHosts == hosts)
        #expect(try problems(yaml, GatewayEnvironment(allowedPriorityClasses: Self.platform.allowedPriorityClasses)).count == hosts.count,
                "an empty platform list allows no extra host")
    }

    @Test func thePlatformFlagTakesOnlyHostPatterns() {
        #expect((try? GatewayEnvironment.extraHostPatterns("*.npmjs.org, files.pythonhosted.org").get())?.count == 2)
        for bad in ["10.0.0.1", "*.", "a b", "[::1]", "x..y"] {
            #expect((try? GatewayEnvironment.extraHostPatterns(bad).get()) == nil, "\(bad)")
        }
    }

    // MARK: 12. podTemplate by profile

    /// (fragment of the pod spec, the field it must be refused at, the profiles that refuse it)
    static let podCases: [(String, String, Set<String>)] = [
        ("serviceAccountName: team-a-gateway-agc", "spec.serviceAccountName", ["restricted", "baseline", "privileged"]),
        ("serviceAccount: default", "spec.serviceAccount", ["restricted", "baseline", "privileged"]),
        ("automountServiceAccountToken: true", "spec.automountServiceAccountToken", ["restricted", "baseline", "privileged"]),
        ("nodeName: node-1", "spec.nodeName", ["restricted", "baseline", "privileged"]),
        ("hostNetwork: true", "spec.hostNetwork", ["restricted", "baseline"]),
        ("hostPID: true", "spec.hostPID", ["restricted", "baseline"]),
        ("hostIPC: true", "spec.hostIPC", ["restricted", "baseline"]),
        ("volumes: [{name: root, hostPath: {path: /}}]", "spec.volumes[0].hostPath", ["restricted", "baseline"]),
        ("volumes: [{name: nfs, nfs: {server: x, path: /}}]", "spec.volumes[0].nfs", ["restricted"]),
        ("securityContext: {sysctls: [{name: kernel.core_pattern, value: x}]}", "spec.securityContext.sysctls[0].name", ["restricted", "baseline"]),
        ("securityContext: {seccompProfile: {type: Unconfined}}", "spec.securityContext.seccompProfile.type", ["restricted", "baseline"]),
        ("securityContext: {runAsUser: 0}", "spec.securityContext.runAsUser", ["restricted"]),
        ("securityContext: {runAsNonRoot: false}", "spec.securityContext.runAsNonRoot", ["restricted"]),
        ("containers: [{name: runner, securityContext: {privileged: true}}]", "spec.containers[0].securityContext.privileged", ["restricted", "baseline"]),
        ("containers: [{name: runner, securityContext: {capabilities: {add: [SYS_ADMIN]}}}]", "spec.containers[0].securityContext.capabilities.add[0]", ["restricted", "baseline"]),
        ("containers: [{name: runner, securityContext: {capabilities: {add: [CHOWN]}}}]", "spec.containers[0].securityContext.capabilities.add[0]", ["restricted"]),
        ("containers: [{name: runner, securityContext: {allowPrivilegeEscalation: true}}]", "spec.containers[0].securityContext.allowPrivilegeEscalation", ["restricted"]),
        ("containers: [{name: runner, securityContext: {procMount: Unmasked}}]", "spec.containers[0].securityContext.procMount", ["restricted", "baseline"]),
        ("containers: [{name: runner, ports: [{containerPort: 80, hostPort: 80}]}]", "spec.containers[0].ports[0].hostPort", ["restricted", "baseline"]),
        ("initContainers: [{name: init, securityContext: {privileged: true}}]", "spec.initContainers[0].securityContext.privileged", ["restricted", "baseline"]),
        ("ephemeralContainers: [{name: debug, securityContext: {capabilities: {add: [NET_ADMIN]}}}]", "spec.ephemeralContainers[0].securityContext.capabilities.add[0]", ["restricted", "baseline"]),
    ]

    @Test func podTemplatesAreJudgedByProfile() throws {
        let privileged = GatewayEnvironment(
            allowedPriorityClasses: Self.platform.allowedPriorityClasses, allowedExtraHosts: Self.platform.allowedExtraHosts,
            namespaceLabels: [GatewayEnvironment.privilegedLabel: "allowed"])
        for (fragment, field, refusedBy) in Self.podCases {
            for profile in ["restricted", "baseline", "privileged"] {
                let yaml = gateway([
                    ("gitHubURL:", "securityProfile: \(profile)\n  gitHubURL:"),
                    ("podTemplate: {spec: {containers: [{name: runner}]}}", "podTemplate: {spec: {\(fragment)}}"),
                ])
                let found = try problems(yaml, privileged)
                let path = "spec.runnerGroups[0].podTemplate.\(field)"
                #expect(found.contains { $0.field == path } == refusedBy.contains(profile), "\(profile) \(fragment): \(found)")
            }
        }
    }

    @Test func aPlainRunnerTemplatePassesEveryProfile() throws {
        let environment = GatewayEnvironment(
            allowedPriorityClasses: Self.platform.allowedPriorityClasses, namespaceLabels: [GatewayEnvironment.privilegedLabel: "allowed"])
        for profile in ["restricted", "baseline", "privileged"] {
            let yaml = gateway([
                ("gitHubURL:", "securityProfile: \(profile)\n  gitHubURL:"),
                ("podTemplate: {spec: {containers: [{name: runner}]}}",
                 "podTemplate: {spec: {containers: [{name: runner, resources: {limits: {nvidia.com/gpu: \"1\"}}, securityContext: {allowPrivilegeEscalation: false, runAsNonRoot: true, capabilities: {drop: [ALL]}}}], volumes: [{name: work, emptyDir: {}}]}}"),
            ])
            #expect(try problems(yaml, environment).isEmpty, "\(profile)")
        }
    }

    @Test func theReservedTenantNameIsRefused() throws {
        let found = try problems(gateway([("name: team-a-gateway", "name: unknown")]))
        #expect(found.contains { $0.field == "metadata.name" })
    }

    // MARK: the generator: 10,000 hostile CRs through decode, validation, the reconcile plan, desired state and the proxy's parser

    @Test func tenThousandHostileGatewaysNeverTrapAndAcceptedOnesRenderSafeConfigs() throws {
        var generator = SplitMix(seed: 20_261_202)
        var accepted = 0
        var refused = 0
        let encoder = JSONEncoder()
        for index in 0..<10_000 {
            let object = HostileGateway.make(&generator)
            let json = try JSONSerialization.data(withJSONObject: object, options: [.fragmentsAllowed])
            let verdict = ActionsGateway.decode(json: Array(json)).flatMap({ $0.validated(in: Self.platform) })
            // The whole reconcile plan, as the controller would run it, must not trap either, and
            // must agree with validation: a refused CR plans a condition and no child.
            if let observed = try? KubeClient.decode(Array(json)) {
                let plan = GatewayReconciler.plan(
                    GatewayObservation(gateway: observed, namespace: ["metadata": ["name": "team-a"] as JSONObject], secretExists: true),
                    inputs: Self.planInputs, now: Date(timeIntervalSince1970: 1_800_000_000), eventSuffix: "gen")
                let creates = plan.summaries.filter { $0.hasPrefix("create ") }.count
                switch verdict {
                case .failure: #expect(creates == 0 && !plan.problems.isEmpty, "#\(index) \(plan.summaries)")
                case .success: #expect(creates == DesiredState.children.count && plan.problems.isEmpty, "#\(index) \(plan.problems) \(String(decoding: json, as: UTF8.self))")
                }
            }
            switch verdict {
            case .failure(let rejection):
                refused += 1
                #expect(!rejection.problems.isEmpty && rejection.problems.allSatisfy { !$0.field.isEmpty }, "#\(index) \(rejection)")
            case .success(let defaulted):
                accepted += 1
                let objects = DesiredState.objects(for: defaulted, uid: "uid", images: GatewayImages())
                #expect(objects.count == DesiredState.children.count + 1, "every child and the namespace's labels")
                for child in objects { _ = try encoder.encode(child) }
                guard case .configMap(let map)? = objects.first(where: { $0.kind == "ConfigMap" }), let text = map.data["config.yaml"] else {
                    Issue.record("#\(index): no proxy config")
                    continue
                }
                switch ProxyConfig.parse(yaml: text) {
                case .failure(let error):
                    Issue.record("#\(index): the proxy refuses its config: \(error)\n\(String(decoding: json, as: UTF8.self))")
                case .success(let config):
                    // The SSRF defence is intact whatever the CR said: built-in deny list, no
                    // exemptions, one anonymous tenant whose rules are host names only.
                    #expect(config.deny == nil && config.tenants.count == 1 && config.tenants[0].allowPrivate.isEmpty)
                    #expect(config.tenants[0].allow.allSatisfy { if case .host = $0.target { return true } else { return false } })
                    #expect(config.tenants[0].allow.decide(Authority(host: .ip(.v4(0xa9fe_a9fe)), port: 80)) != .allowed)
                    #expect(config.listen.port == 3128 && config.admin.port == 9090)
                }
            }
        }
        // The generator must exercise both outcomes, or it tests nothing.
        #expect(accepted >= 1000, "accepted \(accepted)")
        print("hostile gateways: \(accepted) accepted, \(refused) refused")
        #expect(refused >= 5000, "refused \(refused)")
    }

    static func yamlQuoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f { out += String(format: "\\x%02x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}

/// A small deterministic generator (SplitMix64), so a failure reproduces from its index.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// Builds ActionsGateway JSON objects field by field: mostly plausible values, often hostile
/// ones (injection strings, huge and negative numbers, IP literals, internal names), sometimes
/// a value of the wrong type or a missing field.
enum HostileGateway {
    static let strings = [
        "\"\n  deny: []\n", "\\", "\u{0}", "é", String(repeating: "a", count: 300), "", " ", "-", "..", "*", "*.com", "localhost",
        "169.254.169.254", "[::1]", "kubernetes.default.svc", "9223372036854775807h", "-1s", "null", "true", "#", "{}", "unknown",
    ]
    static let urls = [
        "https://github.com/org", "https://github.com/enterprises/e", "https://ghes.example.com:8443/org", "https://github.com//org",
        "https://github.com\"\n  deny: []\n/org", "https://169.254.169.254/org", "https://[::1]/org", "https://u@github.com/org",
        "https://github.com:0/org", "http://github.com/org", "https://github.com", "https://gïthub.com/org",
    ]
    static let hosts = [
        "registry.npmjs.org", "*.npmjs.org", "files.pythonhosted.org", "a.example.org", "*.com", "localhost", "10.0.0.1",
        "metadata.google.internal", "x.svc", "Registry.npmjs.org", String(repeating: "a", count: 64) + ".example.org", "x\"\n.example.org",
    ]
    static var numbers: [Any] { [0, 1, 2, 5, 10, 20, 100, 1000, 1001, -1, Int64.max, Int64.min, 1e30, "5", true, NSNull()] }
    static let durations = ["5m", "0s", "30s", "24h", "25h", "9223372036854775807h", "1e3s", "-5m", "5", "", "99999999999s"]

    static func make(_ g: inout SplitMix) -> [String: Any] {
        // Half the CRs are nearly clean (one hostile field somewhere exercises the accepted
        // path's edges), half are hostile throughout.
        let hostile = g.chance(50) ? 1 : 25
        func maybe(_ percent: Int, _ key: String, into object: inout [String: Any], _ value: () -> Any) {
            if g.chance(percent) { object[key] = value() }
        }
        func string(_ plausible: [String]) -> Any {
            if g.chance(hostile / 5) { return g.pick(numbers) }
            return g.chance(100 - hostile) ? g.pick(plausible) : g.pick(strings)
        }
        func number(_ plausible: [Int]) -> Any { g.chance(100 - hostile) ? g.pick(plausible) : g.pick(numbers) }

        var metadata: [String: Any] = [:]
        maybe(98, "name", into: &metadata) { string(["team-a", "gw", "a-b-c"]) }
        maybe(98, "namespace", into: &metadata) { string(["team-a"]) }
        var spec: [String: Any] = [:]
        maybe(97, "gitHubAppRef", into: &spec) { ["name": string(["app", "my-github-app"])] }
        maybe(98, "gitHubURL", into: &spec) { g.chance(100 - hostile) ? g.pick(Array(urls.prefix(3))) : g.pick(urls + strings) }
        maybe(40, "securityProfile", into: &spec) { string(["restricted", "baseline", "privileged"]) }
        maybe(50, "proxy", into: &spec) {
            var proxy: [String: Any] = [:]
            maybe(50, "minReplicas", into: &proxy) { number([1, 2, 3]) }
            maybe(50, "maxReplicas", into: &proxy) { number([3, 10, 100]) }
            maybe(30, "targetCPUUtilizationPercentage", into: &proxy) { number([50, 60, 80]) }
            maybe(50, "extraAllowedHosts", into: &proxy) {
                (0..<g.below(3)).map { _ in g.chance(100 - hostile) ? g.pick(Array(hosts.prefix(4))) : g.pick(hosts) }
            }
            return proxy
        }
        maybe(97, "runnerGroups", into: &spec) {
            (0..<(1 + g.below(3))).map { index -> Any in
                var group: [String: Any] = [:]
                maybe(97, "name", into: &group) { string(["cpu", "gpu", "g\(index)"]) }
                maybe(95, "runnerLabels", into: &group) { (0..<(1 + g.below(3))).map { _ in string(["self-hosted", "linux", "gpu"]) } }
                maybe(40, "maxListeners", into: &group) { number([1, 10, 100]) }
                maybe(20, "maxWorkers", into: &group) { number([5, 10, 20, 30]) }
                maybe(group["maxWorkers"] == nil ? 40 : 3, "priorityTiers", into: &group) {
                    (0..<(1 + g.below(3))).map { tier -> Any in
                        ["priorityClassName": string(["runner-critical", "runner-standard"]), "threshold": number([5 * (tier + 1)])]
                    }
                }
                maybe(30, "maxEvictionRetries", into: &group) { number([0, 2, 10]) }
                maybe(40, "completedPodTTL", into: &group) {
                    g.chance(100 - hostile) ? g.pick(Array(durations.prefix(4))) : g.pick(durations + strings)
                }
                maybe(40, "podTemplate", into: &group) { podTemplate(&g, hostile: hostile) }
                return group
            }
        }
        return ["apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": metadata, "spec": spec]
    }

    static func podTemplate(_ g: inout SplitMix, hostile: Int) -> [String: Any] {
        var spec: [String: Any] = ["containers": [["name": "runner"]]]
        let risky: [(String, Any)] = [
            ("hostNetwork", true), ("hostPID", true), ("serviceAccountName", "team-a-agc"), ("automountServiceAccountToken", true),
            ("nodeName", "n1"), ("priorityClassName", "runner-critical"), ("priorityClassName", "system-node-critical"),
            ("volumes", [["name": "h", "hostPath": ["path": "/"]]]), ("volumes", [["name": "e", "emptyDir": [:] as [String: Any]]]),
            ("containers", [["name": "runner", "securityContext": ["privileged": true]]]),
            ("containers", [["name": "runner", "securityContext": ["capabilities": ["add": ["SYS_ADMIN"]]]]]),
            ("containers", "runner"), ("hostNetwork", "yes"),
        ]
        for _ in 0..<g.below(3) where g.chance(hostile * 3) {
            let (key, value) = g.pick(risky)
            spec[key] = value
        }
        return ["spec": spec]
    }
}
