@testable import GatewayManager
import GatewayOps
import KubeKit
import OutboundPool
import Synchronization
import Testing
import TestSupport
import Vocabulary

/// Keys a reconcile saw, in order (appended from the runner's workers).
final class KeyLog: Sendable {
    private let keys = Mutex<[String]>([])
    func add(_ key: String) { keys.withLock { $0.append(key) } }
    var all: [String] { keys.withLock { $0 } }
    func count(prefix: String) -> Int { all.filter { $0.hasPrefix(prefix) }.count }
}

/// The work queue's scheduling on a manual clock: nothing here waits for real time to pass
/// except polls for the queue's own tasks to reach the clock.
@Suite struct ControllerRuntimeTests {
    func sleeping(_ clock: ManualControllerClock, _ count: Int) async throws -> Bool {
        try await eventually { clock.sleepers == count }
    }

    @Test func retryableFailuresBackOffExponentiallyUpToTheCap() async throws {
        let clock = ManualControllerClock()
        let queue = WorkQueue(baseDelay: .milliseconds(100), maxDelay: .milliseconds(350), clock: clock)
        await queue.add("ns/a")
        for expected in [100, 200, 350, 350] {
            #expect(await queue.next() == "ns/a")
            await queue.done("ns/a", result: .retryable)
            #expect(try await sleeping(clock, 1))
            #expect(clock.nextDeadline == clock.now() + .milliseconds(expected), "backoff \(expected) ms")
            clock.advance(by: .milliseconds(expected - 1))
            #expect(await queue.depth == 0, "not before its backoff")
            clock.advance(by: .milliseconds(1))
            #expect(try await eventually { await queue.depth == 1 })
        }
        #expect(await queue.failureCount("ns/a") == 4)
        #expect(await queue.next() == "ns/a")
        await queue.done("ns/a", result: .success)
        #expect(await queue.failureCount("ns/a") == 0, "a success resets the backoff")
        let depth = await queue.depth
        #expect(clock.sleepers == 0 && depth == 0, "and schedules nothing")
    }

    @Test func requeueWaitsItsDelayAndTerminalWaitsForAChange() async throws {
        let clock = ManualControllerClock()
        let queue = WorkQueue(clock: clock)
        await queue.add("ns/poll")
        #expect(await queue.next() == "ns/poll")
        await queue.done("ns/poll", result: .retryable)
        #expect(try await sleeping(clock, 1))
        clock.advance(by: .milliseconds(100))
        #expect(await queue.next() == "ns/poll")
        await queue.done("ns/poll", result: .requeue(after: .seconds(30)))
        #expect(await queue.failureCount("ns/poll") == 0)
        #expect(try await sleeping(clock, 1))
        #expect(clock.nextDeadline == clock.now() + .seconds(30))
        clock.advance(by: .seconds(30))
        #expect(try await eventually { await queue.depth == 1 })

        #expect(await queue.next() == "ns/poll")
        await queue.done("ns/poll", result: .terminal)
        clock.advance(by: .seconds(3600))
        let depth = await queue.depth
        #expect(clock.sleepers == 0 && depth == 0, "a terminal failure is not retried")
        await queue.add("ns/poll")
        #expect(await queue.depth == 1, "until something changes")
    }

    @Test func aKeyAddedWhileBeingWorkedOnRunsOnceMoreAfterwards() async throws {
        let queue = WorkQueue(clock: ManualControllerClock())
        await queue.add("ns/a")
        #expect(await queue.next() == "ns/a")
        await queue.add("ns/a")
        await queue.add("ns/a")
        #expect(await queue.depth == 0, "one worker per key")
        await queue.done("ns/a", result: .success)
        #expect(await queue.depth == 1, "and exactly one more run")
    }

    @Test(arguments: [
        (OutboundError.Kind.http(422), ReconcileResult.terminal), (.http(400), .terminal), (.http(409), .retryable),
        (.http(429), .retryable), (.http(500), .retryable), (.http(403), .retryable), (.connect, .retryable),
        (.timeout, .retryable),
    ])
    func errorsAreClassified(kind: OutboundError.Kind, expected: ReconcileResult) {
        #expect(GatewayController.classify(OutboundError(kind: kind, detail: "")) == expected)
    }

    @Test func cancellingASleeperWakesItWithoutAdvancing() async throws {
        let clock = ManualControllerClock()
        let task = Task { try await clock.sleep(for: .seconds(60)) }
        #expect(try await sleeping(clock, 1))
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(clock.sleepers == 0)
    }

    @Test func theRunnerReconcilesListedKeysAndResyncsThemOnItsClock() async throws {
        let api = try await FakeAPIServer(namespaces: ["a", "b"])
        let client = api.client
        let clock = ManualControllerClock()
        let metrics = RunnerMetrics(prefix: "test_")
        let runner = ControllerRunner(metrics: metrics, workers: 2, resync: .seconds(60), clock: clock)
        runner.watch(Namespace.self, client: client, primary: true) { [$0.key] }
        let seen = KeyLog()
        let task = Task { await runner.run { key in seen.add(key); return .success } }
        defer { task.cancel() }
        #expect(try await eventually { seen.count(prefix: "/") == 2 }, "each listed key once")
        #expect(try await eventually { metrics.cacheSynced })
        #expect(try await eventually { clock.sleepers >= 1 }, "the resync waits on the injected clock")
        #expect(seen.count(prefix: "/") == 2, "nothing more before the resync is due")
        clock.advance(by: .seconds(60))
        #expect(try await eventually { seen.count(prefix: "/") == 4 }, "every primary key once more")
        #expect(Set(seen.all) == ["/a", "/b"])
        var out = PrometheusWriter()
        metrics.write(into: &out)
        #expect(out.text.contains("test_reconcile_total{result=\"success\"} 4"))
    }

    @Test func jsonNullsSurviveADecodeEncodeRoundTrip() throws {
        let text = #"{"a":null,"b":[null,1,{"c":null}],"d":true}"#
        let object = try KubeClient.decode(Array(text.utf8))
        let again = try KubeClient.decode(try KubeClient.encode(object))
        #expect(String(decoding: try KubeClient.encode(again), as: UTF8.self) == #"{"a":null,"b":[null,1,{"c":null}],"d":true}"#)
    }

    @Test func cachesDropManagedFieldsAndMetadataOnlyKindsKeepOnlyMetadata() async throws {
        let api = try await FakeAPIServer()
        let client = api.client
        let managed: [any Sendable] = [["manager": "kubectl", "operation": "Apply", "fieldsV1": ["f:data": [:] as JSONObject] as JSONObject]
            as JSONObject]
        _ = try await client.create("/api/v1/namespaces/k/configmaps", [
            "metadata": ["name": "c", "labels": ["owner": "g"] as JSONObject, "managedFields": managed] as JSONObject,
            "data": ["secret-ish": "value"] as JSONObject,
        ])
        let raw = try await client.get("/api/v1/namespaces/k/configmaps/c")
        #expect((raw?["metadata"] as? JSONObject)?["managedFields"] != nil, "the server has them")
        let full = Informer<UntypedObject>(resource: .configMaps, client: client, indexLabel: "owner")
        let slim = Informer<UntypedObject>(resource: .configMaps, client: client, metadataOnly: true)
        let tasks = [Task { await full.run() }, Task { await slim.run() }]
        defer { for task in tasks { task.cancel() } }
        #expect(try await eventually { full.lister.hasSynced && slim.lister.hasSynced })
        let kept = full.lister.get(namespace: "k", name: "c")?.json
        #expect((kept?["data"] as? JSONObject)?["secret-ish"] as? String == "value")
        #expect((kept?["metadata"] as? JSONObject)?["managedFields"] == nil)
        #expect(full.lister.list(namespace: "k", labelValue: "g").count == 1, "indexed by its label")
        let metadataOnly = slim.lister.get(namespace: "k", name: "c")?.json
        #expect(metadataOnly?["data"] == nil && (metadataOnly?["metadata"] as? JSONObject)?["name"] as? String == "c")
    }

    @Test func typedCachesDecodeStraightIntoTheirSubsetAndCountWhatDoesNotFit() async throws {
        let api = try await FakeAPIServer()
        let client = api.client
        _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "a", namespace: "k", labels: ["owner": "g"]), data: ["x": "1"]))
        // A number where the subset expects a string: left out of the cache and counted, never fatal.
        _ = try await client.create("/api/v1/namespaces/k/configmaps", ["metadata": ["name": "odd"] as JSONObject, "data": ["n": Int64(5)] as JSONObject])
        let informer = Informer<ConfigMap>(resource: ConfigMap.resource, client: client, indexLabel: "owner")
        let task = Task { await informer.run() }
        defer { task.cancel() }
        #expect(try await eventually { informer.lister.hasSynced })
        #expect(informer.lister.get(namespace: "k", name: "a")?.data == ["x": "1"])
        #expect(informer.lister.get(namespace: "k", name: "odd") == nil)
        #expect(informer.undecodableCount == 1)
        #expect(informer.lister.list(namespace: "k", labelValue: "g").map(\.metadata.name) == ["a"])
        // Watch events land typed too: a change, a new object, a deletion.
        _ = try await client.mergePatch("/api/v1/namespaces/k/configmaps/a", ["data": ["x": "2"] as JSONObject])
        _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "b", namespace: "k"), data: [:]))
        #expect(try await eventually { informer.lister.get(namespace: "k", name: "a")?.data["x"] == "2" && informer.lister.count == 2 })
        try await client.delete("/api/v1/namespaces/k/configmaps/a")
        #expect(try await eventually { informer.lister.keys == ["k/b"] })
        #expect(informer.lister.list(namespace: "k", labelValue: "g").isEmpty, "the index forgets a deleted object")
        // A typed list through the client decodes the same way.
        #expect(try await client.list(ConfigMap.self, namespace: "k").map(\.metadata.name) == ["b"])
    }
}
