import Foundation
import KubeKit
import OutboundPool
import TestSupport
import Testing

@testable import GatewayManager

@Suite(.serialized) struct ReconcilerTests {
    static let gateway: JSONObject = [
        "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway",
        "metadata": ["name": "gw"] as JSONObject,
        "spec": [
            "gitHubAppRef": ["name": "app"] as JSONObject, "gitHubURL": "https://github.com/org",
            "runnerGroups": [["name": "cpu", "runnerLabels": ["self-hosted"] as [any Sendable], "maxWorkers": Int64(5)] as JSONObject]
                as [any Sendable],
        ] as JSONObject,
    ]

    struct Cluster {
        let server: PythonFake
        let pool: OutboundPool
        let client: KubeClient
        let reconciler: GatewayReconciler

        init() throws {
            server = try PythonFake("kube_apiserver.py")
            pool = try OutboundPool()
            client = KubeClient(server: server.url, pool: pool)
            reconciler = GatewayReconciler(client: client, allowedPriorityClasses: [])
        }

        func writes() async throws -> Int64 {
            let stats = try KubeClient.decode(try await pool.send(OutboundRequest(url: server.url + "/fake/stats")).body)
            return stats["writes"] as? Int64 ?? -1
        }

        func tenant(_ namespace: String) async throws {
            _ = try await client.create("/api/v1/namespaces", ["metadata": ["name": namespace] as JSONObject])
            _ = try await client.create(KubeResource.actionsGateways.path(namespace: namespace), ReconcilerTests.gateway)
        }
    }

    @Test func newGatewayGetsEveryChildThenZeroWritesAndDriftIsRepaired() async throws {
        let cluster = try Cluster()
        defer { cluster.pool.shutdown() }
        try await cluster.tenant("team-a")
        let first = try await cluster.reconciler.reconcile(namespace: "team-a", name: "gw")
        #expect(first.problems.isEmpty)
        #expect(first.writes == 1 + DesiredState.children.count + 1 + 1, "finalizer, every child, the namespace labels, status: \(first.writes)")
        for (resource, name) in [(KubeResource.configMaps, "gw-proxy"), (.deployments, "gw-proxy"), (.deployments, "gw-agc"),
                                 (.horizontalPodAutoscalers, "gw-proxy"), (.roles, "gw-agc"), (.networkPolicies, "gw-proxy")] {
            #expect(try await cluster.client.get(resource.path(namespace: "team-a", name: name)) != nil, "\(resource.plural)/\(name)")
        }
        let gateway = try await cluster.client.get(KubeResource.actionsGateways.path(namespace: "team-a", name: "gw"))
        let status = gateway?["status"] as? JSONObject
        let conditions = (status?["conditions"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        #expect(conditions.first { $0["type"] as? String == "CredentialsAvailable" }?["status"] as? String == "False")
        #expect(status?["observedGeneration"] as? Int64 == 1)
        let namespace = try await cluster.client.get("/api/v1/namespaces/team-a")
        #expect(((namespace?["metadata"] as? JSONObject)?["labels"] as? JSONObject)?["pod-security.kubernetes.io/enforce"] as? String == "baseline")

        let before = try await cluster.writes()
        let second = try await cluster.reconciler.reconcile(namespace: "team-a", name: "gw")
        #expect(second.writes == 0)
        #expect(try await cluster.writes() == before, "the API server saw no write")

        // Edited by hand: restored. Deleted by hand: recreated.
        _ = try await cluster.client.mergePatch(KubeResource.configMaps.path(namespace: "team-a", name: "gw-proxy"),
                                                ["data": ["config.yaml": "tampered"] as JSONObject])
        try await cluster.client.delete(KubeResource.services.path(namespace: "team-a", name: "gw-proxy"))
        let repair = try await cluster.reconciler.reconcile(namespace: "team-a", name: "gw")
        #expect(repair.writes == 2)
        let config = try await cluster.client.get(KubeResource.configMaps.path(namespace: "team-a", name: "gw-proxy"))
        #expect(((config?["data"] as? JSONObject)?["config.yaml"] as? String)?.contains("github.com") == true)
        #expect(try await cluster.client.get(KubeResource.services.path(namespace: "team-a", name: "gw-proxy")) != nil)

        // The HPA owns the proxy's replica count: a scaled Deployment is left alone.
        _ = try await cluster.client.mergePatch(KubeResource.deployments.path(namespace: "team-a", name: "gw-proxy"),
                                                ["spec": ["replicas": Int64(7)] as JSONObject])
        #expect(try await cluster.reconciler.reconcile(namespace: "team-a", name: "gw").writes == 0)
    }

    @Test func renamedSecretRollsTheAGCAndTenantsStayIndependent() async throws {
        let cluster = try Cluster()
        defer { cluster.pool.shutdown() }
        try await cluster.tenant("one")
        try await cluster.tenant("two")
        _ = try await cluster.reconciler.reconcile(namespace: "one", name: "gw")
        _ = try await cluster.reconciler.reconcile(namespace: "two", name: "gw")
        _ = try await cluster.client.mergePatch(KubeResource.actionsGateways.path(namespace: "one", name: "gw"),
                                                ["spec": ["gitHubAppRef": ["name": "rotated"] as JSONObject] as JSONObject])
        let outcome = try await cluster.reconciler.reconcile(namespace: "one", name: "gw")
        #expect(outcome.writes >= 2, "Role (secret name), AGC pod template, status")
        func annotation(_ namespace: String) async throws -> String? {
            let agc = try await cluster.client.get(KubeResource.deployments.path(namespace: namespace, name: "gw-agc"))
            let template = ((agc?["spec"] as? JSONObject)?["template"] as? JSONObject)?["metadata"] as? JSONObject
            return (template?["annotations"] as? JSONObject)?[DesiredState.secretAnnotation] as? String
        }
        #expect(try await annotation("one") == "rotated")
        #expect(try await annotation("two") == "app", "the other tenant is untouched")
        #expect(try await cluster.reconciler.reconcile(namespace: "two", name: "gw").writes == 0)
    }

    @Test func invalidSpecGetsConditionsAndNoChildren() async throws {
        let cluster = try Cluster()
        defer { cluster.pool.shutdown() }
        _ = try await cluster.client.create("/api/v1/namespaces", ["metadata": ["name": "bad"] as JSONObject])
        // The schema admits it (CEL rules, which would refuse it at admission, are not in force
        // everywhere, e.g. before the CRD was upgraded); the GMC refuses it with a condition.
        var gateway = Self.gateway
        gateway["spec"] = [
            "gitHubAppRef": ["name": "app"] as JSONObject, "gitHubURL": "https://github.com/org",
            "runnerGroups": [["name": "cpu", "runnerLabels": ["x"] as [any Sendable], "maxWorkers": Int64(19),
                              "priorityTiers": [["priorityClassName": "c", "threshold": Int64(20)] as JSONObject] as [any Sendable]]
                             as JSONObject] as [any Sendable],
        ] as JSONObject
        _ = try await cluster.client.create(KubeResource.actionsGateways.path(namespace: "bad"), gateway)
        let outcome = try await cluster.reconciler.reconcile(namespace: "bad", name: "gw")
        #expect(outcome.problems.map(\.field).contains("spec.runnerGroups[0].maxWorkers"))
        #expect(try await cluster.client.get(KubeResource.deployments.path(namespace: "bad", name: "gw-proxy")) == nil)
        let current = try await cluster.client.get(KubeResource.actionsGateways.path(namespace: "bad", name: "gw"))
        let conditions = (((current?["status"] as? JSONObject)?["conditions"]) as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        let degraded = conditions.first { $0["type"] as? String == "Degraded" }
        #expect(degraded?["status"] as? String == "True")
        #expect((degraded?["message"] as? String)?.contains("spec.runnerGroups[0].maxWorkers") == true)
    }

    @Test func disallowedPriorityClassIsRefusedWithAClearCondition() async throws {
        let cluster = try Cluster()
        defer { cluster.pool.shutdown() }
        _ = try await cluster.client.create("/api/v1/namespaces", ["metadata": ["name": "tiers"] as JSONObject])
        var gateway = Self.gateway
        gateway["spec"] = [
            "gitHubAppRef": ["name": "app"] as JSONObject, "gitHubURL": "https://github.com/org",
            "runnerGroups": [["name": "gpu", "runnerLabels": ["gpu"] as [any Sendable],
                              "priorityTiers": [["priorityClassName": "system-node-critical", "threshold": Int64(3)] as JSONObject]
                                  as [any Sendable]] as JSONObject] as [any Sendable],
        ] as JSONObject
        _ = try await cluster.client.create(KubeResource.actionsGateways.path(namespace: "tiers"), gateway)
        let outcome = try await cluster.reconciler.reconcile(namespace: "tiers", name: "gw")
        #expect(outcome.problems.contains { $0.message.contains("'system-node-critical' is not on the platform's allowed list") })
        let current = try await cluster.client.get(KubeResource.actionsGateways.path(namespace: "tiers", name: "gw"))
        let conditions = (((current?["status"] as? JSONObject)?["conditions"]) as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        #expect(conditions.first { $0["type"] as? String == "Ready" }?["status"] as? String == "False")
        #expect((conditions.first { $0["type"] as? String == "Degraded" }?["message"] as? String)?
            .contains("spec.runnerGroups[0].priorityTiers[0].priorityClassName") == true)
        #expect(try await cluster.client.get(KubeResource.deployments.path(namespace: "tiers", name: "gw-agc")) == nil)
        let events = try await cluster.client.list("/api/v1/namespaces/tiers/events")
        #expect(events.count == 1)
        #expect(events.first?["reason"] as? String == "InvalidSpec" && events.first?["type"] as? String == "Warning")
        #expect(try await cluster.reconciler.reconcile(namespace: "tiers", name: "gw").writes == 0, "no new Event for the same problem")
        #expect(try await cluster.client.list("/api/v1/namespaces/tiers/events").count == 1)
    }

    @Test func deletionCleansUpThenReleasesTheFinalizer() async throws {
        let cluster = try Cluster()
        defer { cluster.pool.shutdown() }
        try await cluster.tenant("gone")
        _ = try await cluster.client.create("/api/v1/namespaces/gone/resourcequotas", [
            "metadata": ["name": "runners"] as JSONObject, "spec": ["hard": ["pods": "10"] as JSONObject] as JSONObject,
        ])
        var neighbour = Self.gateway
        neighbour["metadata"] = ["name": "neighbour"] as JSONObject
        _ = try await cluster.client.create(KubeResource.actionsGateways.path(namespace: "gone"), neighbour)
        _ = try await cluster.reconciler.reconcile(namespace: "gone", name: "neighbour")
        _ = try await cluster.reconciler.reconcile(namespace: "gone", name: "gw")
        _ = try await cluster.client.create(KubeResource.pods.path(namespace: "gone"), [
            "metadata": ["name": "worker-1", "labels": [DesiredState.gatewayLabel: "gw"] as JSONObject] as JSONObject,
            "spec": ["containers": [["name": "runner", "image": "x"] as JSONObject] as [any Sendable]] as JSONObject,
        ])
        try await cluster.client.delete(KubeResource.actionsGateways.path(namespace: "gone", name: "gw"), propagation: "Background")
        let marked = try await cluster.client.get(KubeResource.actionsGateways.path(namespace: "gone", name: "gw"))
        #expect((marked?["metadata"] as? JSONObject)?["deletionTimestamp"] != nil, "the finalizer holds the gateway")
        let outcome = try await cluster.reconciler.reconcile(namespace: "gone", name: "gw")
        #expect(outcome.gone)
        #expect(try await cluster.client.get(KubeResource.actionsGateways.path(namespace: "gone", name: "gw")) == nil)
        #expect(try await cluster.client.get(KubeResource.pods.path(namespace: "gone", name: "worker-1")) == nil)
        #expect(try await cluster.client.get(KubeResource.deployments.path(namespace: "gone", name: "gw-agc")) == nil)
        #expect(try await cluster.client.get("/api/v1/namespaces/gone") != nil, "the namespace survives")
        #expect(try await cluster.client.get("/api/v1/namespaces/gone/resourcequotas/runners") != nil, "the platform's quota survives")
        #expect(try await cluster.client.get(KubeResource.deployments.path(namespace: "gone", name: "neighbour-agc")) != nil,
                "another gateway's children are untouched")
        #expect(try await cluster.reconciler.reconcile(namespace: "gone", name: "neighbour").writes == 0)
    }
}
