import KubeKit
import OutboundPool
import TestSupport

/// The Python fake API server with a client on its own pool, and namespaces made up front:
/// what every KubeKit test against a real wire starts from. The pool shuts down with it.
final class FakeAPIServer: Sendable {
    let server: PythonFake
    let pool: OutboundPool
    let client: KubeClient

    init(namespaces: [String] = ["k"]) async throws {
        server = try PythonFake("kube_apiserver.py")
        pool = try OutboundPool()
        client = KubeClient(server: server.url, pool: pool)
        for name in namespaces { _ = try await client.create("/api/v1/namespaces", ["metadata": ["name": name] as JSONObject]) }
    }

    deinit { pool.shutdown() }
}
