import Foundation
import KubeKit
import Logging
import OutboundPool
import TestSupport
import Testing

@Suite(.serialized) struct KubeClientTests {
    @Test func updateConflictsApplyAndTypedReads() async throws {
        let api = try await FakeAPIServer()
        let client = api.client
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

    /// A failure repeated within the window is one Event whose count grows (what `kubectl
    /// describe` shows as "x3 over 2m"); another message, or the same after the window, is new.
    @Test func eventRecorderCountsRepeatsIntoOneEvent() async throws {
        let api = try await FakeAPIServer()
        let client = api.client
        let clock = ManualControllerClock()
        let recorder = EventRecorder(client: client, component: "agc",
                                     involved: .init(apiVersion: "v1", kind: "ConfigMap", name: "c", namespace: "k", uid: nil),
                                     clock: clock, logger: Logger(label: "test"), window: .seconds(600))
        await recorder.setUID("u-1")
        func counts() async throws -> [Int?] {
            try await client.list(Event.self, namespace: "k").filter { $0.reason == "WorkerPodCreateFailed" }
                .sorted { ($0.count ?? 0) > ($1.count ?? 0) }.map(\.count)
        }
        // Reported every 5 s for a minute and a half: one Event, its count written once a minute.
        for _ in 0..<19 {
            await recorder.warning("WorkerPodCreateFailed", "refused")
            clock.advance(by: .seconds(5))
        }
        #expect(try await counts() == [13], "written at 0 s (1) and 60 s (13), not the 6 reports since")
        await recorder.warning("TemplateRefused", String(repeating: "x", count: 5000))
        clock.advance(by: .seconds(601))
        await recorder.warning("WorkerPodCreateFailed", "refused")
        let events = try await client.list(Event.self, namespace: "k")
        let refused = events.filter { $0.reason == "WorkerPodCreateFailed" }
        #expect(try await counts() == [13, 1], "a new Event after the window")
        #expect(refused.allSatisfy { $0.type == "Warning" && $0.involvedObject.uid == "u-1" && $0.source?.component == "agc" })
        let long = events.first { $0.reason == "TemplateRefused" }
        #expect(long?.message?.count == Event.messageLimit, "a message is bounded")
    }
}
