import KubeKit

/// Where a reconcile observes the cluster. In the controller: the informers' caches, so a
/// steady-state reconcile sends no request at all. Elsewhere (tests driving one reconcile,
/// tools): the API server itself.
public protocol ClusterReader: Sendable {
    /// The object, or nil when it does not exist. Cluster-scoped kinds take `namespace: nil`.
    func object(_ resource: KubeResource, namespace: String?, name: String) async throws -> JSONObject?
}

/// Reads with a GET per object.
public struct LiveReader: ClusterReader {
    let client: KubeClient

    public init(client: KubeClient) { self.client = client }

    public func object(_ resource: KubeResource, namespace: String?, name: String) async throws -> JSONObject? {
        try await client.get(resource.path(namespace: namespace, name: name))
    }
}

/// Reads informer caches. A kind without an informer, or one whose first list has not landed
/// yet (where "absent" would only mean "not known yet"), is read live instead.
public struct CacheReader: ClusterReader {
    let listers: [KubeResource: Lister<UntypedObject>]
    let live: LiveReader

    public init(listers: [Lister<UntypedObject>], client: KubeClient) {
        self.listers = Dictionary(listers.map { ($0.resource, $0) }, uniquingKeysWith: { first, _ in first })
        live = LiveReader(client: client)
    }

    public func object(_ resource: KubeResource, namespace: String?, name: String) async throws -> JSONObject? {
        guard let lister = listers[resource], lister.hasSynced else {
            return try await live.object(resource, namespace: namespace, name: name)
        }
        return lister.get(namespace: resource.namespaced ? namespace : nil, name: name)?.json
    }
}
