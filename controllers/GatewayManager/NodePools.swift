import EgressPosix
import Foundation
import KubeKit
import Yams

/// A pool of nodes the platform offers runner groups (issue 18, item 4): its node selector
/// and tolerations (a Karpenter NodePool's label and taint, say), and which namespaces may use
/// it. Defined by the platform (`gmc run --node-pools FILE`), named by tenants
/// (`runnerGroups[].nodePool`): a tenant picks a pool, never a node label or a toleration, so
/// it cannot place its workers on nodes kept for others.
public struct NodePool: Codable, Sendable, Equatable {
    public var name: String
    public var nodeSelector: [String: String]
    public var tolerations: [Toleration]?
    /// Namespaces whose gateways may use the pool; absent: every namespace.
    public var namespaces: [String]?

    public init(name: String, nodeSelector: [String: String], tolerations: [Toleration]? = nil, namespaces: [String]? = nil) {
        self.name = name
        self.nodeSelector = nodeSelector
        self.tolerations = tolerations
        self.namespaces = namespaces
    }

    /// The Kubernetes API's `Toleration`.
    public struct Toleration: Codable, Sendable, Equatable {
        public var key: String?
        public var `operator`: String?
        public var value: String?
        public var effect: String?
        public var tolerationSeconds: Int64?

        public init(key: String?, operator op: String? = nil, value: String? = nil, effect: String? = nil, tolerationSeconds: Int64? = nil) {
            self.key = key
            self.operator = op
            self.value = value
            self.effect = effect
            self.tolerationSeconds = tolerationSeconds
        }

        var json: JSONObject {
            var out: JSONObject = [:]
            if let key { out["key"] = key }
            if let op = self.operator { out["operator"] = op }
            if let value { out["value"] = value }
            if let effect { out["effect"] = effect }
            if let tolerationSeconds { out["tolerationSeconds"] = tolerationSeconds }
            return out
        }
    }

    public func admits(namespace: String) -> Bool { namespaces.map { $0.contains(namespace) } ?? true }
}

/// Reading and checking the platform's pool file, and what the AGC is handed.
public enum NodePools {
    public static let maxPools = 64
    /// The label every worker pod of a pool carries (its value: the pool's name).
    public static let poolLabel = "actions-gateway.github.com/pool"
    /// The key in the gateway's `<gateway>-node-pools` ConfigMap, and where the AGC reads it.
    public static let fileName = "pools.json"
    public static let mountPath = "/etc/agc/node-pools"

    /// A pools file: a YAML (or JSON) list of pools. Every problem is reported, by pool.
    public static func parse(_ text: String) -> Result<[NodePool], GatewayRejection> {
        let pools: [NodePool]
        do {
            pools = try YAMLDecoder().decode([NodePool].self, from: text)
        } catch {
            return .failure(GatewayRejection(problems: [GatewayProblem(field: "--node-pools", message: "not a list of pools: \(error)")]))
        }
        var problems: [GatewayProblem] = []
        func problem(_ field: String, _ message: String) { problems.append(GatewayProblem(field: field, message: message)) }
        if pools.count > maxPools { problem("--node-pools", "at most \(maxPools) pools") }
        var names = Set<String>()
        for (index, pool) in pools.enumerated() {
            let path = "--node-pools[\(index)]"
            if !isDNSLabel(pool.name, maxLength: 63) { problem("\(path).name", "must be a DNS label") }
            if !names.insert(pool.name).inserted { problem("\(path).name", "\(pool.name) is defined twice") }
            if pool.nodeSelector.isEmpty { problem("\(path).nodeSelector", "required: a pool is the nodes it selects") }
            for (key, value) in pool.nodeSelector where !GatewayEnvironment.isLabel(key: key, value: value) {
                problem("\(path).nodeSelector", "'\(key)=\(value)' is not a label")
            }
            for (tolerationIndex, toleration) in (pool.tolerations ?? []).enumerated() {
                let field = "\(path).tolerations[\(tolerationIndex)]"
                let op = toleration.operator ?? "Equal"
                if !["Equal", "Exists"].contains(op) { problem("\(field).operator", "must be Equal or Exists") }
                if let effect = toleration.effect, !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(effect) {
                    problem("\(field).effect", "must be NoSchedule, PreferNoSchedule or NoExecute")
                }
                if let key = toleration.key, !GatewayEnvironment.isLabel(key: key, value: toleration.value ?? "") {
                    problem("\(field).key", "'\(key)' is not a taint key")
                }
                if toleration.key == nil && op != "Exists" { problem("\(field).key", "required unless operator is Exists") }
                if toleration.key == nil && toleration.effect == nil {
                    problem(field, "tolerates every taint of every node: name a key or an effect")
                }
            }
            for namespace in pool.namespaces ?? [] where !isDNSLabel(namespace, maxLength: 63) {
                problem("\(path).namespaces", "'\(namespace)' is not a namespace name")
            }
        }
        return problems.isEmpty ? .success(pools) : .failure(GatewayRejection(problems: problems))
    }

    public static func load(path: String) -> Result<[NodePool], GatewayRejection> {
        guard let bytes = Posix.readSmallFile(path, limit: 1 << 20) else {
            return .failure(GatewayRejection(problems: [GatewayProblem(field: "--node-pools", message: "cannot read \(path)")]))
        }
        return parse(String(decoding: bytes, as: UTF8.self))
    }

    /// The pools a gateway's groups name, as the AGC's file holds them (sorted keys, so the
    /// same pools always render the same bytes).
    public static func file(_ pools: [NodePool]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(pools)).map { String(decoding: $0, as: UTF8.self) } ?? "[]"
    }

    /// Puts a worker pod's spec on its pool: the pool's selector over the template's (the
    /// template may set none when pools are defined), its tolerations added once each, and the
    /// pool label on the pod.
    public static func place(spec: inout JSONObject, labels: inout JSONObject, on pool: NodePool) {
        var selector = spec["nodeSelector"] as? JSONObject ?? [:]
        for (key, value) in pool.nodeSelector { selector[key] = value }
        spec["nodeSelector"] = selector
        var tolerations = ((spec["tolerations"] as? [any Sendable]) ?? []).compactMap { $0 as? JSONObject }
        for toleration in pool.tolerations ?? [] {
            let json = toleration.json
            if !tolerations.contains(where: { NSDictionary(dictionary: $0).isEqual(to: json) }) { tolerations.append(json) }
        }
        if !tolerations.isEmpty { spec["tolerations"] = tolerations as [any Sendable] }
        labels[poolLabel] = pool.name
    }
}
