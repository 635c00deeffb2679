import Foundation
import OutboundPool

/// Where a kind lives in the API: `/api/v1/...` for the core group, `/apis/GROUP/VERSION/...` otherwise.
public struct KubeResource: Sendable, Hashable {
    public var group: String
    public var version: String
    public var plural: String
    public var namespaced: Bool

    public init(group: String, version: String, plural: String, namespaced: Bool = true) {
        self.group = group
        self.version = version
        self.plural = plural
        self.namespaced = namespaced
    }

    /// The collection path (for list and create); `namespace` is ignored for cluster-scoped kinds.
    public func path(namespace: String?, name: String? = nil, subresource: String? = nil) -> String {
        var path = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if namespaced, let namespace { path += "/namespaces/\(namespace)" }
        path += "/\(plural)"
        if let name { path += "/\(name)" }
        if let subresource { path += "/\(subresource)" }
        return path
    }

    public static let namespaces = KubeResource(group: "", version: "v1", plural: "namespaces", namespaced: false)
    public static let pods = KubeResource(group: "", version: "v1", plural: "pods")
    public static let serviceAccounts = KubeResource(group: "", version: "v1", plural: "serviceaccounts")
    public static let configMaps = KubeResource(group: "", version: "v1", plural: "configmaps")
    public static let services = KubeResource(group: "", version: "v1", plural: "services")
    public static let secrets = KubeResource(group: "", version: "v1", plural: "secrets")
    public static let roles = KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "roles")
    public static let roleBindings = KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings")
    public static let networkPolicies = KubeResource(group: "networking.k8s.io", version: "v1", plural: "networkpolicies")
    public static let deployments = KubeResource(group: "apps", version: "v1", plural: "deployments")
    public static let podDisruptionBudgets = KubeResource(group: "policy", version: "v1", plural: "poddisruptionbudgets")
    public static let horizontalPodAutoscalers = KubeResource(group: "autoscaling", version: "v2", plural: "horizontalpodautoscalers")
    public static let actionsGateways = KubeResource(group: "actions-gateway.github.com", version: "v1alpha1", plural: "actionsgateways")
}

/// A JSON object as the API server sends it (untyped, so fields we do not model survive).
public typealias JSONObject = [String: any Sendable]

/// The Kubernetes REST client, on the process's OutboundPool (no second networking stack).
public final class KubeClient: Sendable {
    public let server: String
    private let pool: OutboundPool
    private let tokenSource: @Sendable () async -> String?

    /// - Parameters:
    ///   - server: `https://host:port` (in-cluster) or `http://127.0.0.1:PORT` (tests).
    ///   - token: a fixed bearer token, if any.
    public init(server: String, pool: OutboundPool, token: String? = nil) {
        self.server = server
        self.pool = pool
        tokenSource = { token }
    }

    /// A client whose bearer token comes from `tokenSource` on every request (an exec
    /// plugin's cache, for one).
    public init(server: String, pool: OutboundPool, tokenSource: @escaping @Sendable () async -> String?) {
        self.server = server
        self.pool = pool
        self.tokenSource = tokenSource
    }

    /// A client whose bearer token is read from a file on every request: the kubelet rotates
    /// projected service-account tokens in place, and a token read once would expire.
    public init(server: String, pool: OutboundPool, tokenFile: String) {
        self.server = server
        self.pool = pool
        tokenSource = {
            guard let bytes = FileManager.default.contents(atPath: tokenFile) else { return nil }
            return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    /// The bearer token to send now.
    var token: String? { get async { await tokenSource() } }

    /// `agc/actions-gateway`, `gmc/actions-gateway`: the API server's audit log and request
    /// metrics name the caller by it.
    static let userAgent = "\(ProcessInfo.processInfo.processName)/actions-gateway"

    /// Accept headers asking for metadata only (PartialObjectMetadata, with plain JSON as the
    /// fallback for servers that do not offer it).
    public static let metadataListAccept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
    public static let metadataAccept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

    private func request(
        _ method: String, _ path: String, body: [UInt8]? = nil, contentType: String = "application/json",
        timeout: Duration = .seconds(30), accept: String? = nil
    ) async -> OutboundRequest {
        var headers: [(name: String, value: String)] = [("Accept", accept ?? "application/json"), ("User-Agent", Self.userAgent)]
        if body != nil { headers.append(("Content-Type", contentType)) }
        if let token = await token { headers.append(("Authorization", "Bearer \(token)")) }
        return OutboundRequest(method: method, url: server + path, headers: headers, body: body, timeout: timeout)
    }

    /// `?k=v&...` with keys and values percent-encoded (label selectors hold `=`, `!`, `,`).
    static func query(_ items: [(String, String?)]) -> String {
        let unreserved = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        let pairs = items.compactMap { key, value in
            value.map { "\(key)=\($0.addingPercentEncoding(withAllowedCharacters: unreserved) ?? "")" }
        }
        return pairs.isEmpty ? "" : "?" + pairs.joined(separator: "&")
    }

    /// GET; nil for 404.
    public func get(_ path: String) async throws -> JSONObject? {
        do {
            return try Self.decode(try await pool.send(await request("GET", path)).body)
        } catch let error as OutboundError where error.kind == .http(404) {
            return nil
        }
    }

    public func list(_ path: String, labelSelector: String? = nil) async throws -> [JSONObject] {
        let list = try await listResponse(path, labelSelector: labelSelector)
        return (list["items"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
    }

    /// The whole list response: items and `metadata.resourceVersion` (where a watch resumes).
    public func listResponse(_ path: String, labelSelector: String? = nil, accept: String? = nil) async throws -> JSONObject {
        try Self.decode(try await listBody(path, labelSelector: labelSelector, accept: accept))
    }

    /// A list response's bytes, for callers that decode them into their own types.
    public func listBody(_ path: String, labelSelector: String? = nil, accept: String? = nil) async throws -> [UInt8] {
        try await pool.send(await request("GET", path + Self.query([("labelSelector", labelSelector)]), accept: accept)).body
    }

    /// A watch from `resourceVersion`, with bookmarks; the server ends it after about five
    /// minutes and the caller resumes. Events arrive as newline-delimited JSON (`lines`).
    public func watch(_ path: String, resourceVersion: String, labelSelector: String? = nil, accept: String? = nil) async -> ResponseStream {
        let query = Self.query([
            ("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", "300"),
            ("resourceVersion", resourceVersion), ("labelSelector", labelSelector),
        ])
        return pool.stream(await request("GET", path + query, timeout: .seconds(330), accept: accept))
    }

    public func create(_ collectionPath: String, _ object: JSONObject) async throws -> JSONObject {
        try Self.decode(try await pool.send(await request("POST", collectionPath, body: try Self.encode(object))).body)
    }

    /// PUT: replaces the object; the server answers 409 if `object`'s resourceVersion is stale.
    public func update(_ path: String, _ object: JSONObject) async throws -> JSONObject {
        try Self.decode(try await pool.send(await request("PUT", path, body: try Self.encode(object))).body)
    }

    /// Server-side apply (the body is JSON, which is valid YAML), as `fieldManager`.
    public func apply(_ path: String, _ object: JSONObject, fieldManager: String, force: Bool = true) async throws -> JSONObject {
        let query = Self.query([("fieldManager", fieldManager), ("force", force ? "true" : nil)])
        return try Self.decode(try await pool.send(
            await request("PATCH", path + query, body: try Self.encode(object), contentType: "application/apply-patch+yaml")).body)
    }

    /// JSON merge patch (RFC 7386).
    public func mergePatch(_ path: String, _ patch: JSONObject) async throws -> JSONObject {
        try Self.decode(try await pool.send(
            await request("PATCH", path, body: try Self.encode(patch), contentType: "application/merge-patch+json")).body)
    }

    public func delete(_ path: String, propagation: String = "Background") async throws {
        do {
            _ = try await pool.send(await request("DELETE", path, body: try Self.encode(["propagationPolicy": propagation])))
        } catch let error as OutboundError where error.kind == .http(404) {
            return
        }
    }

    // MARK: typed

    /// GET of one object of a typed kind, decoded straight into its subset; nil for 404.
    public func get<T: KubeKind>(_ type: T.Type, namespace: String?, name: String) async throws -> T? {
        do {
            return try JSONDecoder().decode(T.self, from: Data(try await pool.send(await request("GET", T.resource.path(namespace: namespace, name: name))).body))
        } catch let error as OutboundError where error.kind == .http(404) {
            return nil
        }
    }

    /// The objects of a typed kind (in `namespace`, or everywhere for nil) that decode.
    public func list<T: KubeKind>(_ type: T.Type, namespace: String?, labelSelector: String? = nil) async throws -> [T] {
        try T.decodeList(try await listBody(T.resource.path(namespace: namespace), labelSelector: labelSelector), metadataOnly: false).items
    }

    /// POST of a typed object to its collection; returns what the server stored.
    public func create<T: KubeKind>(_ object: T) async throws -> T {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = Array(try encoder.encode(object))
        let reply = try await pool.send(await request("POST", T.resource.path(namespace: object.metadata.namespace), body: body))
        return try JSONDecoder().decode(T.self, from: Data(reply.body))
    }

    // MARK: JSON

    public static func decode(_ bytes: [UInt8]) throws -> JSONObject {
        guard let object = sendable(try JSONSerialization.jsonObject(with: Data(bytes))) as? JSONObject else {
            throw OutboundError(kind: .other, detail: "expected a JSON object")
        }
        return object
    }

    public static func encode(_ object: JSONObject) throws -> [UInt8] {
        Array(try JSONSerialization.data(withJSONObject: foundation(object), options: [.sortedKeys]))
    }

    /// The inverse of `sendable`: JSON null back to NSNull, which is all JSONSerialization
    /// lacks (an object that came with a null, such as `maxListeners: null` in a CR, must
    /// encode again, or its reconcile fails for ever).
    static func foundation(_ value: any Sendable) -> Any {
        switch value {
        case let object as JSONObject: return object.mapValues { foundation($0) }
        case let array as [any Sendable]: return array.map { foundation($0) }
        case is NSNullSentinel: return NSNull()
        default: return value
        }
    }

    /// Converts Foundation's JSON values to Sendable Swift values.
    static func sendable(_ value: Any) -> (any Sendable)? {
        switch value {
        case let dictionary as [String: Any]:
            var out: JSONObject = [:]
            for (key, element) in dictionary { out[key] = sendable(element) ?? NSNullSentinel() }
            return out
        case let array as [Any]: return array.map { sendable($0) ?? NSNullSentinel() }
        case let string as String: return string
        case let number as NSNumber:
            // JSON true/false arrive as NSNumber too; their Objective-C type code is "c".
            if String(cString: number.objCType) == "c" { return number.boolValue }
            if number.doubleValue == Double(number.int64Value) { return number.int64Value }
            return number.doubleValue
        case is NSNull: return NSNullSentinel()
        default: return nil
        }
    }

    /// An Encodable object as untyped JSON.
    public static func json<T: Encodable>(_ value: T) throws -> JSONObject {
        let data = try JSONEncoder().encode(value)
        guard let object = sendable(try JSONSerialization.jsonObject(with: data)) as? JSONObject else {
            throw OutboundError(kind: .other, detail: "expected a JSON object")
        }
        return object
    }
}

/// JSON null (in a merge patch: remove the field).
public struct NSNullSentinel: Sendable, Equatable {
    public init() {}
}

/// True when every field of `desired` is present in `current` with an equal value (objects
/// compared recursively, arrays element by element). What the API server added (status,
/// defaults, resourceVersion) does not count as a difference, so an unchanged object needs no write.
public func jsonContains(_ current: (any Sendable)?, _ desired: any Sendable) -> Bool {
    switch desired {
    case let object as JSONObject:
        guard let current = current as? JSONObject else { return false }
        return object.allSatisfy { key, value in jsonContains(current[key], value) }
    case let array as [any Sendable]:
        guard let current = current as? [any Sendable], current.count == array.count else { return false }
        return zip(current, array).allSatisfy { jsonContains($0, $1) }
    case let string as String: return (current as? String) == string
    case let bool as Bool: return (current as? Bool) == bool
    case let int as Int64: return (current as? Int64) == int || (current as? Double).map { $0 == Double(int) } == true
    case let double as Double: return (current as? Double) == double || (current as? Int64).map { Double($0) == double } == true
    case is NSNullSentinel: return current == nil || current is NSNullSentinel
    default: return false
    }
}
