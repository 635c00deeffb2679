import Testing

@testable import GatewayManager

@Suite struct ValidationTests {
    static let example = """
        apiVersion: actions-gateway.github.com/v1alpha1
        kind: ActionsGateway
        metadata: {name: team-a-gateway, namespace: team-a}
        spec:
          gitHubAppRef: {name: my-github-app}
          gitHubURL: https://github.com/team-a-org
          runnerGroups:
            - name: gpu-runners
              runnerLabels: ["self-hosted", "gpu"]
              maxListeners: 10
              priorityTiers:
                - {priorityClassName: runner-critical, threshold: 5}
                - {priorityClassName: runner-standard, threshold: 20}
              podTemplate: {spec: {containers: [{name: runner}]}}
            - name: cpu-runners
              runnerLabels: ["self-hosted", "linux"]
              maxWorkers: 30
        """
    let platform = GatewayEnvironment(allowedPriorityClasses: ["runner-critical", "runner-standard", "runner-low"])

    func problems(_ yaml: String, _ environment: GatewayEnvironment? = nil) throws -> [String] {
        switch try ActionsGateway.parse(yaml: yaml).validated(in: environment ?? platform) {
        case .success: return []
        case .failure(let rejection): return rejection.problems.map(\.description)
        }
    }

    @Test func exampleGetsTheSpecDefaults() throws {
        let gateway = try ActionsGateway.parse(yaml: Self.example).validated(in: platform).get()
        #expect(gateway.securityProfile == "baseline")
        #expect(gateway.minReplicas == 2 && gateway.maxReplicas == 10 && gateway.targetCPUUtilizationPercentage == 60)
        #expect(gateway.groups[0].maxWorkers == 20, "a group with tiers is capped by its last threshold")
        #expect(gateway.groups[0].maxEvictionRetries == 2 && gateway.groups[0].completedPodTTLSeconds == 300)
        #expect(gateway.groups[1].maxListeners == 1 && gateway.groups[1].tiers.isEmpty)
    }

    @Test(arguments: [
        ("gitHubURL: https://github.com/team-a-org", "gitHubURL: http://github.com/team-a-org", "spec.gitHubURL"),
        ("gitHubURL: https://github.com/team-a-org", "gitHubURL: https://github.com", "spec.gitHubURL"),
        ("gitHubURL: https://github.com/team-a-org", "gitHubURL: https://user@github.com/org", "spec.gitHubURL"),
        ("gitHubAppRef: {name: my-github-app}", "gitHubAppRef: {}", "spec.gitHubAppRef.name"),
        ("threshold: 20", "threshold: 5", "spec.runnerGroups[0].priorityTiers[1].threshold"),
        ("threshold: 5}", "threshold: 0}", "spec.runnerGroups[0].priorityTiers[0].threshold"),
        ("runner-standard", "runner-gold", "spec.runnerGroups[0].priorityTiers[1].priorityClassName"),
        ("name: cpu-runners", "name: gpu-runners", "spec.runnerGroups[1].name"),
        ("name: cpu-runners", "name: CPU_runners", "spec.runnerGroups[1].name"),
        ("maxWorkers: 30", "maxWorkers: 0", "spec.runnerGroups[1].maxWorkers"),
        ("runnerLabels: [\"self-hosted\", \"linux\"]", "runnerLabels: []", "spec.runnerGroups[1].runnerLabels"),
        ("maxListeners: 10", "maxListeners: 0", "spec.runnerGroups[0].maxListeners"),
        ("maxListeners: 10", "maxListeners: 1001", "spec.runnerGroups[0].maxListeners"),
        ("maxListeners: 10", "maxListeners: 10\n      minListeners: 11", "spec.runnerGroups[0].minListeners"),
        ("maxListeners: 10", "maxListeners: 10\n      minListeners: -1", "spec.runnerGroups[0].minListeners"),
        ("threshold: 20}", "threshold: 20, reclaimQuota: true}", "spec.runnerGroups[0].priorityTiers[1].reclaimQuota"),
        ("maxWorkers: 30", "maxWorkers: 30\n      maxPodsPerNode: 0", "spec.runnerGroups[1].maxPodsPerNode"),
        ("maxWorkers: 30", "maxWorkers: 30\n      maxPodsPerNode: 1001", "spec.runnerGroups[1].maxPodsPerNode"),
    ])
    func rejectedInputsNameTheirField(original: String, replacement: String, field: String) throws {
        let yaml = Self.example.replacingFirst(original, with: replacement)
        #expect(yaml != Self.example, "the test edit applied")
        let found = try problems(yaml)
        #expect(found.contains { $0.hasPrefix(field + ":") }, "\(found)")
    }

    @Test func listenerBoundsAreKeptUpToAThousand() throws {
        let yaml = Self.example.replacingFirst("maxListeners: 10", with: "maxListeners: 1000\n      minListeners: 0")
        let gateway = try ActionsGateway.parse(yaml: yaml).validated(in: platform).get()
        #expect(gateway.groups[0].maxListeners == 1000 && gateway.groups[0].minListeners == 0)
        #expect(gateway.groups[1].minListeners == 1, "the default baseline is one session")
    }

    @Test func reclaimAndThePerNodeLimitAreKept() throws {
        let yaml = Self.example.replacingFirst("threshold: 5}", with: "threshold: 5, reclaimQuota: true}")
            .replacingFirst("maxWorkers: 30", with: "maxWorkers: 30\n      maxPodsPerNode: 4")
        let gateway = try ActionsGateway.parse(yaml: yaml).validated(in: platform).get()
        #expect(gateway.groups[0].reclaimQuota && !gateway.groups[1].reclaimQuota)
        #expect(gateway.groups[1].maxPodsPerNode == 4 && gateway.groups[0].maxPodsPerNode == nil)
    }

    @Test func allowedTeamsAreTheGatewaysOwnOrganisationsTeams() throws {
        func teams(_ list: String, onError: String? = nil) -> String {
            Self.example.replacingFirst("maxWorkers: 30", with: "maxWorkers: 30\n      allowedTeams: \(list)"
                                        + (onError.map { "\n      allowedTeamsOnError: \($0)" } ?? ""))
        }
        let gateway = try ActionsGateway.parse(yaml: teams("[team-a-org/builders, Team-A-Org/release, team-a-org/builders]")).validated(in: platform).get()
        #expect(gateway.groups[1].allowedTeams.map(\.description) == ["team-a-org/builders", "Team-A-Org/release"], "a repeat is kept once")
        #expect(!gateway.groups[1].allowedTeamsFailOpen && gateway.groups[0].allowedTeams.isEmpty)
        #expect(try ActionsGateway.parse(yaml: teams("[team-a-org/builders]", onError: "allow")).validated(in: platform).get()
            .groups[1].allowedTeamsFailOpen)
        #expect(try problems(teams("[other-org/builders]")) == [
            "spec.runnerGroups[1].allowedTeams[0]: must be a team of team-a-org, the gateway's organisation",
        ], "another tenant's organisation")
        for bad in ["builders", "team-a-org/Builders", "team-a-org/a/b", "team-a-org/../x", "team-a-org/", "/x", "team-a-org/x y"] {
            #expect(try problems(teams("['\(bad)']")).first?.hasPrefix("spec.runnerGroups[1].allowedTeams[0]: must be org/team-slug") == true, "\(bad)")
        }
        #expect(try problems(teams("[team-a-org/x]", onError: "maybe")) == ["spec.runnerGroups[1].allowedTeamsOnError: must be deny or allow"])
        let many = "[" + (0...50).map { "team-a-org/t\($0)" }.joined(separator: ", ") + "]"
        #expect(try problems(teams(many)) == ["spec.runnerGroups[1].allowedTeams: at most 50 teams"])
        let enterprise = teams("[team-a-org/x]").replacingFirst("https://github.com/team-a-org", with: "https://github.com/enterprises/big")
        #expect(try problems(enterprise) == ["spec.runnerGroups[1].allowedTeams: needs spec.gitHubURL to name an organisation"])
    }

    @Test func maxWorkersMustEqualTheLastThreshold() throws {
        let yaml = Self.example.replacingFirst("maxListeners: 10", with: "maxListeners: 10\n      maxWorkers: 19")
        #expect(try problems(yaml).contains { $0.contains("must equal the last tier threshold (20)") })
        let equal = Self.example.replacingFirst("maxListeners: 10", with: "maxListeners: 10\n      maxWorkers: 20")
        #expect(try problems(equal).isEmpty)
    }

    @Test func priorityClassesNeedThePlatformAllowlist() throws {
        #expect(try problems(Self.example, GatewayEnvironment()).count == 2, "empty allowlist: none allowed")
        let podClass = Self.example.replacingFirst("podTemplate: {spec: {containers", with: "podTemplate: {spec: {priorityClassName: runner-gold, containers")
        #expect(try problems(podClass).contains { $0.hasPrefix("spec.runnerGroups[0].podTemplate.spec.priorityClassName") })
    }

    @Test func privilegedProfileNeedsTheNamespaceLabel() throws {
        let yaml = Self.example.replacingFirst("gitHubURL:", with: "securityProfile: privileged\n  gitHubURL:")
        #expect(try problems(yaml).contains { $0.hasPrefix("spec.securityProfile") })
        let labelled = GatewayEnvironment(
            allowedPriorityClasses: platform.allowedPriorityClasses,
            namespaceLabels: [GatewayEnvironment.privilegedLabel: "allowed"])
        #expect(try problems(yaml, labelled).isEmpty)
        #expect(try problems(Self.example.replacingFirst("gitHubURL:", with: "securityProfile: root\n  gitHubURL:")).count == 1)
    }

    @Test func proxyReplicaBoundsAndEveryProblemReported() throws {
        let yaml = Self.example.replacingFirst("gitHubURL: https://github.com/team-a-org",
            with: "gitHubURL: ftp://x\n  proxy: {minReplicas: 5, maxReplicas: 3, extraAllowedHosts: [\"Bad Host\"]}")
        let found = try problems(yaml)
        #expect(found.contains { $0.hasPrefix("spec.gitHubURL") })
        #expect(found.contains { $0.hasPrefix("spec.proxy.maxReplicas") })
        #expect(found.contains { $0.hasPrefix("spec.proxy.extraAllowedHosts[0]") })
    }
}

extension String {
    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let range = firstRange(of: target) else { return self }
        return replacingCharacters(in: range, with: replacement)
    }
}
