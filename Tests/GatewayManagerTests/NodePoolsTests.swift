import KubeKit
import Testing

@testable import GatewayManager

/// Node pools (issue 18, item 4): the platform's file, what a tenant may name, what the GMC
/// hands the AGC, and where a worker pod lands.
@Suite struct NodePoolsTests {
    static let file = """
        - name: gpu
          nodeSelector: {karpenter.sh/nodepool: gpu}
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
          namespaces: [team-a]
        - name: warm
          nodeSelector: {karpenter.sh/nodepool: warm, node.kubernetes.io/instance-type: m7i.2xlarge}
        - name: isolated
          nodeSelector: {pool: isolated}
          tolerations: [{key: pool, value: isolated, effect: NoSchedule}]
          namespaces: [team-b]
        """
    let platform = GatewayEnvironment(allowedPriorityClasses: ["runner-critical", "runner-standard"])

    func pools() throws -> [NodePool] { try NodePools.parse(Self.file).get() }

    func yaml(pool: String? = nil, template: String = "{spec: {containers: [{name: runner}]}}") -> String {
        ValidationTests.example.replacingFirst("maxWorkers: 30", with: "maxWorkers: 30" + (pool.map { "\n      nodePool: \($0)" } ?? ""))
            .replacingFirst("podTemplate: {spec: {containers: [{name: runner}]}}", with: "podTemplate: \(template)")
    }

    func problems(_ yaml: String, pools: [NodePool]?) throws -> [String] {
        var environment = platform
        environment.nodePools = pools
        switch try ActionsGateway.parse(yaml: yaml).validated(in: environment) {
        case .success: return []
        case .failure(let rejection): return rejection.problems.map(\.description)
        }
    }

    @Test func thePlatformsFileIsCheckedWhole() throws {
        #expect(try pools().map(\.name) == ["gpu", "warm", "isolated"])
        let bad = """
            - {name: gpu, nodeSelector: {a: b}}
            - {name: gpu, nodeSelector: {}}
            - {name: Bad_Name, nodeSelector: {"not a key": x}, tolerations: [{operator: Maybe}, {effect: Sometimes, key: k}, {}], namespaces: [NS!]}
            """
        guard case .failure(let rejection) = NodePools.parse(bad) else {
            Issue.record("refused")
            return
        }
        let fields = rejection.problems.map(\.field)
        for field in ["--node-pools[1].name", "--node-pools[1].nodeSelector", "--node-pools[2].name", "--node-pools[2].nodeSelector",
                      "--node-pools[2].tolerations[0].operator", "--node-pools[2].tolerations[1].effect", "--node-pools[2].tolerations[2]",
                      "--node-pools[2].namespaces"] {
            #expect(fields.contains(field), "\(field) in \(fields)")
        }
        #expect(rejection.problems.contains { $0.message.contains("tolerates every taint") })
        guard case .failure = NodePools.parse("not: a list") else {
            Issue.record("a map is not a list of pools")
            return
        }
    }

    @Test func aGroupNamesAPoolItsNamespaceMayUse() throws {
        let gateway = try ActionsGateway.parse(yaml: yaml(pool: "gpu")).validated(in: GatewayEnvironment(
            allowedPriorityClasses: ["runner-critical", "runner-standard"], nodePools: try pools())).get()
        #expect(gateway.groups[1].nodePool == "gpu" && gateway.groups[0].nodePool == nil)
        #expect(try problems(yaml(pool: "isolated"), pools: try pools())
            == ["spec.runnerGroups[1].nodePool: no node pool isolated for this namespace (pools: gpu, warm)"], "team-b's pool")
        #expect(try problems(yaml(pool: "nope"), pools: try pools()).first?.contains("no node pool nope") == true)
        #expect(try problems(yaml(pool: "gpu"), pools: nil) == ["spec.runnerGroups[1].nodePool: the platform defines no node pools"])
    }

    @Test func withPoolsATemplateMayNotPlaceItsWorkers() throws {
        let placing = "{spec: {nodeSelector: {gpu: yes}, tolerations: [{operator: Exists}], affinity: {nodeAffinity: {x: 1}}, containers: [{name: runner}]}}"
        #expect(try problems(yaml(template: placing), pools: nil).isEmpty, "no pools defined: as before")
        #expect(try problems(yaml(template: placing), pools: try pools()) == [
            "spec.runnerGroups[0].podTemplate.spec.nodeSelector: is the platform's: name a nodePool",
            "spec.runnerGroups[0].podTemplate.spec.tolerations: is the platform's: name a nodePool",
            "spec.runnerGroups[0].podTemplate.spec.affinity.nodeAffinity: is the platform's: name a nodePool",
        ])
        let podAffinity = "{spec: {affinity: {podAntiAffinity: {x: 1}}, containers: [{name: runner}]}}"
        #expect(try problems(yaml(template: podAffinity), pools: try pools()).isEmpty, "pod (anti-)affinity is not placement on nodes")
    }

    @Test func theAGCIsHandedOnlyThePoolsItsGroupsName() throws {
        let gateway = try ActionsGateway.parse(yaml: yaml(pool: "gpu")).validated(in: GatewayEnvironment(
            allowedPriorityClasses: ["runner-critical", "runner-standard"], nodePools: try pools())).get()
        let objects = DesiredState.objects(for: gateway, uid: nil, images: GatewayImages(nodePools: try pools()))
        let map = objects.compactMap { object -> ConfigMap? in
            if case .configMap(let map) = object, map.metadata.name == "team-a-gateway-node-pools" { return map }
            return nil
        }.first
        let handed = try NodePools.parse(try #require(map?.data[NodePools.fileName])).get()
        #expect(handed.map(\.name) == ["gpu"])
        guard case .deployment(let agc)? = objects.last else {
            Issue.record("no AGC")
            return
        }
        let args = agc.spec.template.spec.containers[0].args ?? []
        #expect(args.suffix(2) == ["--node-pools", "/etc/agc/node-pools/pools.json"] || args.contains("--node-pools"))
        #expect(agc.spec.template.spec.containers[0].volumeMounts?.contains { $0.mountPath == NodePools.mountPath } == true)
        let none = DesiredState.objects(for: gateway, uid: nil)
        let empty = none.compactMap { object -> String? in
            if case .configMap(let map) = object, map.metadata.name == "team-a-gateway-node-pools" { return map.data[NodePools.fileName] }
            return nil
        }
        #expect(empty == ["[]"], "always rendered, empty without pools")
    }

    @Test func aWorkerIsPlacedOnItsPool() throws {
        let gpu = try #require(try pools().first)
        var spec: JSONObject = ["nodeSelector": ["zone": "a"] as JSONObject,
                                "tolerations": [["key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"] as JSONObject] as [any Sendable]]
        var labels: JSONObject = ["app": "x"]
        NodePools.place(spec: &spec, labels: &labels, on: gpu)
        #expect((spec["nodeSelector"] as? JSONObject)?.count == 2 && (spec["nodeSelector"] as? JSONObject)?["karpenter.sh/nodepool"] as? String == "gpu")
        #expect((spec["tolerations"] as? [any Sendable])?.count == 1, "a toleration the spec has already is not added twice")
        #expect(labels[NodePools.poolLabel] as? String == "gpu" && labels["app"] as? String == "x")
    }
}
