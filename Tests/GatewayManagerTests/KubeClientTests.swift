import Foundation
import KubeKit
import OutboundPool
import TestSupport
import Testing

@Suite(.serialized) struct KubeClientTests {
    @Test func updateConflictsApplyAndTypedReads() async throws {
        let server = try PythonFake("kube_apiserver.py")
        let pool = try OutboundPool()
        defer { pool.shutdown() }
        let client = KubeClient(server: server.url, pool: pool)
        _ = try await client.create("/api/v1/namespaces", ["metadata": ["name": "k"] as JSONObject])
        let created = try await client.create("/api/v1/namespaces/k/configmaps", [
            "metadata": ["name": "c", "labels": ["app": "x"] as JSONObject] as JSONObject, "data": ["a": "1"] as JSONObject,
        ])
        var fresh = created
        fresh["data"] = ["a": "2"] as JSONObject
        let updated = try await client.update("/api/v1/namespaces/k/configmaps/c", fresh)
        #expect((updated["data"] as? JSONObject)?["a"] as? String == "2")
        do {
            _ = try await client.update("/api/v1/namespaces/k/configmaps/c", created)  // stale resourceVersion
            Issue.record("a stale update was accepted")
        } catch let error as OutboundError {
            #expect(error.kind == .http(409))
        }
        let applied = try await client.apply("/api/v1/namespaces/k/configmaps/d", [
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "d"] as JSONObject, "data": ["b": "1"] as JSONObject,
        ], fieldManager: "gmc")
        #expect((applied["metadata"] as? JSONObject)?["name"] as? String == "d", "apply creates a missing object")
        #expect(try await client.list("/api/v1/namespaces/k/configmaps", labelSelector: "app=x").count == 1)
        let typed = try await client.get(ConfigMap.self, namespace: "k", name: "c")
        #expect(typed?.data["a"] == "2")
        #expect(try await client.get(ConfigMap.self, namespace: "k", name: "missing") == nil)
    }
}
