import EgressProxyCore
import KubeKit
import Testing

@testable import GatewayManager

@Suite struct DesiredStateTests {
    let platform = GatewayEnvironment(
        allowedPriorityClasses: ["runner-critical", "runner-standard"], allowedExtraHosts: ["registry.npmjs.org", "*.pypi.org"].compactMap(HostPattern.parse))

    func render(_ yaml: String = ValidationTests.example, images: GatewayImages = GatewayImages()) throws -> [KubeObject] {
        let gateway = try ActionsGateway.parse(yaml: yaml).validated(in: platform).get()
        return DesiredState.objects(for: gateway, uid: "uid-1", images: images)
    }

    @Test func everyChildHasADeterministicNameLabelAndControllerOwner() throws {
        let objects = try render()
        #expect(objects.map { "\($0.kind)/\($0.metadata.name ?? "")" } == [
            "Namespace/team-a", "ServiceAccount/team-a-gateway-agc", "ServiceAccount/team-a-gateway-worker",
            "Role/team-a-gateway-agc", "RoleBinding/team-a-gateway-agc", "NetworkPolicy/team-a-gateway-agc-egress",
            "NetworkPolicy/team-a-gateway-agc-ingress", "NetworkPolicy/team-a-gateway-worker-egress", "NetworkPolicy/team-a-gateway-proxy", "ConfigMap/team-a-gateway-proxy",
            "Deployment/team-a-gateway-proxy", "Service/team-a-gateway-proxy", "PodDisruptionBudget/team-a-gateway-proxy",
            "HorizontalPodAutoscaler/team-a-gateway-proxy", "ConfigMap/team-a-gateway-oidc", "ConfigMap/team-a-gateway-node-pools", "Service/team-a-gateway-agc", "Deployment/team-a-gateway-agc",
        ])
        for object in objects.dropFirst() {
            #expect(object.metadata.namespace == "team-a")
            #expect(object.metadata.labels?[DesiredState.gatewayLabel] == "team-a-gateway")
            #expect(object.metadata.ownerReferences == [
                OwnerReference(apiVersion: "actions-gateway.github.com/v1alpha1", kind: "ActionsGateway", name: "team-a-gateway", uid: "uid-1"),
            ])
        }
        #expect(try render() == objects, "same input, same objects")
    }

    @Test func rbacHasNoWildcardsReadsNoSecretAndNamesItsConfigMaps() throws {
        guard case .role(let role)? = try render().first(where: { $0.kind == "Role" }) else {
            Issue.record("no Role")
            return
        }
        for rule in role.rules {
            #expect(!rule.verbs.contains("*") && !rule.resources.contains("*") && !rule.apiGroups.contains("*"))
        }
        let secrets = role.rules.filter { $0.resources.contains("secrets") }
        #expect(secrets.count == 1)
        #expect(secrets.first?.verbs == ["create", "patch", "delete"], "job Secrets written, no Secret of the namespace readable")
        let maps = role.rules.filter { $0.resources.contains("configmaps") && $0.verbs.contains("get") }
        #expect(maps.first?.resourceNames == ["team-a-gateway-gpu-runners-guards", "team-a-gateway-cpu-runners-guards",
                                              "team-a-gateway-retries"])
    }

    @Test func theHPAOwnsTheProxyReplicaCount() throws {
        let objects = try render()
        for case .deployment(let deployment) in objects where deployment.metadata.name == "team-a-gateway-proxy" {
            #expect(deployment.spec.replicas == nil, "the GMC never writes the replicas the HPA owns")
            #expect(deployment.spec.template.spec.terminationGracePeriodSeconds ?? 0 > 45, "longer than the drain budget")
            #expect(deployment.spec.template.spec.containers[0].securityContext == .locked)
            #expect(deployment.spec.template.spec.affinity?.podAntiAffinity != nil)
        }
        for case .horizontalPodAutoscaler(let hpa) in objects {
            #expect(hpa.spec.minReplicas == 2 && hpa.spec.maxReplicas == 10)
            #expect(hpa.spec.scaleTargetRef.name == "team-a-gateway-proxy")
        }
    }

    @Test func proxyConfigIsOneTheProxyAccepts() throws {
        let yaml = ValidationTests.example
            .replacingFirst("gitHubURL: https://github.com/team-a-org", with: "gitHubURL: https://ghe.example.com/org\n  proxy: {extraAllowedHosts: [\"registry.npmjs.org\", \"*.pypi.org\"]}")
        let objects = try render(yaml)
        guard case .configMap(let map)? = objects.first(where: { $0.kind == "ConfigMap" }), let text = map.data["config.yaml"] else {
            Issue.record("no proxy ConfigMap")
            return
        }
        let config = try ProxyConfig.parse(yaml: text).get()
        let allow = config.tenants[0].allow
        for host in ["github.com", "objects.githubusercontent.com", "ghe.example.com", "registry.npmjs.org", "files.pypi.org"] {
            #expect(allow.decide(Authority(host: .name(host), port: 443)) == .allowed, "\(host)")
        }
        #expect(allow.decide(Authority(host: .name("evil.example"), port: 443)) == .denied(.notAllowed))
        #expect(config.deny == nil, "the built-in SSRF deny list stays on")
    }

    /// The GMC renders GitHub's host list itself (it does not link the proxy); it must stay the
    /// proxy's embedded default.
    @Test func gitHubHostsMatchTheProxyDefault() {
        let defaults = ProxyConfig.embeddedDefault().tenants[0].allow.compactMap { rule -> String? in
            if case .host(let pattern) = rule.target { return pattern.description }
            return nil
        }
        #expect(DesiredState.gitHubHosts == defaults)
    }

    @Test func theMonitoringNamespaceSelectorIsThePlatformsChoice() throws {
        let custom = ["kubernetes.io/metadata.name": "observability"]
        let policies = try render(images: GatewayImages(monitoringNamespaceLabels: custom)).compactMap { object -> NetworkPolicy? in
            if case .networkPolicy(let policy) = object { return policy }
            return nil
        }
        let selectors = policies.flatMap { $0.spec.ingress ?? [] }.flatMap { $0.from ?? [] }.compactMap(\.namespaceSelector)
        #expect(selectors.count == 2, "the proxy's and the AGC's admin ports")
        #expect(selectors.allSatisfy { $0 == LabelSelector(matchLabels: custom) })
    }

    @Test(arguments: [
        ("actions-gateway.github.com/monitoring=true", ["actions-gateway.github.com/monitoring": "true"]),
        ("team=obs,tier=", ["team": "obs", "tier": ""]),
    ])
    func labelFlagsParse(flag: String, expected: [String: String]) throws {
        #expect(try GatewayEnvironment.labels(flag, name: "--x").get() == expected)
    }

    @Test(arguments: ["team", "=x", "a b=c", "-team=x", "team=-x", "Example.COM/x=y", "a/b/c=d", String(repeating: "k", count: 64) + "=v",
                      "k=" + String(repeating: "v", count: 64), "k=v;rm"])
    func badLabelFlagsAreRefusedByName(flag: String) {
        guard case .failure(let rejection) = GatewayEnvironment.labels(flag, name: "--monitoring-namespace-labels") else {
            return #expect(Bool(false), "\(flag) accepted")
        }
        #expect(rejection.problems.first?.field == "--monitoring-namespace-labels")
    }

    @Test func networkPoliciesKeepMetadataAndOtherPodsOut() throws {
        let policies = try render().compactMap { object -> NetworkPolicy? in
            if case .networkPolicy(let policy) = object { return policy }
            return nil
        }
        guard let proxy = policies.first(where: { $0.metadata.name == "team-a-gateway-proxy" }) else {
            Issue.record("no proxy policy")
            return
        }
        let blocks = proxy.spec.egress?.flatMap { $0.to ?? [] }.compactMap(\.ipBlock) ?? []
        #expect(blocks.allSatisfy { $0.except?.contains("169.254.169.254/32") == true })
        #expect(proxy.spec.egress?.flatMap { $0.ports ?? [] }.contains(NetworkPolicy.Port("TCP", 443)) == true)
        let sources = proxy.spec.ingress?.flatMap { $0.from ?? [] }.compactMap { $0.podSelector?.matchLabels?[DesiredState.componentLabel] }
        #expect(sources == ["agc", "worker"])
        let monitoring = LabelSelector(matchLabels: [DesiredState.monitoringLabel: "true"])
        #expect(proxy.spec.ingress?.contains { $0.from?.first?.namespaceSelector == monitoring
            && $0.ports == [NetworkPolicy.Port("TCP", DesiredState.adminPort)] } == true, "monitoring scrapes the proxy's admin port")
        guard let agcIngress = policies.first(where: { $0.metadata.name == "team-a-gateway-agc-ingress" }) else {
            Issue.record("no AGC ingress policy")
            return
        }
        #expect(agcIngress.spec.policyTypes == ["Ingress"] && agcIngress.spec.ingress?.count == 1)
        #expect(agcIngress.spec.ingress?.first?.from == [NetworkPolicy.Peer(namespaceSelector: monitoring)],
                "only monitoring reaches the AGC (its /jobs names repositories)")
        for policy in policies where !["team-a-gateway-proxy", "team-a-gateway-agc-ingress"].contains(policy.metadata.name) {
            #expect(policy.spec.policyTypes == ["Egress"])
            #expect(policy.spec.egress?.allSatisfy { rule in (rule.to ?? []).allSatisfy { $0.ipBlock == nil } } == true,
                    "AGC and workers reach no address directly (no API CIDRs given)")
        }
        let withAPI = try render(images: GatewayImages(apiServerCIDRs: ["10.96.0.1/32"]))
        guard case .networkPolicy(let agc)? = withAPI.first(where: { $0.metadata.name == "team-a-gateway-agc-egress" }) else { return }
        #expect(agc.spec.egress?.contains { $0.to?.first?.ipBlock?.cidr == "10.96.0.1/32" } == true)
    }

    @Test func agcGoesThroughTheProxyAndRollsOnANewSecret() throws {
        let objects = try render()
        guard case .deployment(let agc)? = objects.last else {
            Issue.record("no AGC")
            return
        }
        let env = Dictionary(uniqueKeysWithValues: (agc.spec.template.spec.containers[0].env ?? []).map { ($0.name, $0.value) })
        #expect(env["HTTPS_PROXY"] == "http://team-a-gateway-proxy.team-a.svc:3128")
        #expect(env["NO_PROXY"]?.contains(".svc") == true)
        #expect(agc.spec.template.metadata.annotations?[DesiredState.secretAnnotation] == "my-github-app")
        let renamed = try render(ValidationTests.example.replacingFirst("my-github-app", with: "other-app"))
        guard case .deployment(let rolled)? = renamed.last else { return }
        #expect(rolled.spec.template.metadata.annotations?[DesiredState.secretAnnotation] == "other-app")
        #expect(rolled.spec.template != agc.spec.template, "a renamed gitHubAppRef changes the pod template, so the AGC rolls")
        #expect(objects.contains { if case .serviceAccount(let sa) = $0 { return sa.automountServiceAccountToken == false } else { return false } },
                "workers get no API token")
    }

    @Test func securityProfileLabelsTheNamespace() throws {
        let objects = try render(ValidationTests.example.replacingFirst("gitHubURL:", with: "securityProfile: restricted\n  gitHubURL:"))
        #expect(objects.first?.metadata.labels?["pod-security.kubernetes.io/enforce"] == "restricted")
    }
}
