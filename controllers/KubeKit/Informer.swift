import Foundation
import OutboundPool
import Synchronization

/// What an informer can cache: an object decoded from the API server's JSON, keyed by its
/// namespace and name, with labels for the cache's index. The typed subsets (`KubeKind`)
/// decode straight from the bytes into their few fields; `UntypedObject` keeps everything the
/// server sent, for readers that need fields no subset models.
public protocol Cacheable: Sendable {
    /// A list response: the items (those that do not decode are counted, not fatal) and the
    /// resourceVersion a watch resumes from.
    static func decodeList(_ body: [UInt8], metadataOnly: Bool) throws -> CachedList<Self>
    /// One line of a watch stream.
    static func decodeEvent(_ line: [UInt8], metadataOnly: Bool) throws -> WatchEvent<Self>
    var cacheName: String? { get }
    var cacheNamespace: String? { get }
    var cacheResourceVersion: String? { get }
    func cacheLabel(_ key: String) -> String?
}

extension Cacheable {
    /// "namespace/name" ("/name" for cluster-scoped kinds): the work-queue key.
    public var cacheKey: String? { cacheName.map { "\(cacheNamespace ?? "")/\($0)" } }
}

/// A decoded list response.
public struct CachedList<Object: Sendable>: Sendable {
    public var items: [Object]
    public var resourceVersion: String
    /// Items that did not decode into `Object` (a typed subset meeting a shape it does not
    /// expect); they are left out of the cache and counted by the informer.
    public var undecodable: Int
}

/// One watch event, decoded.
public enum WatchEvent<Object: Sendable>: Sendable {
    case upserted(Object)
    case deleted(Object)
    /// Only moves the resourceVersion forward.
    case bookmark(resourceVersion: String)
    /// An object that did not decode; its resourceVersion still counts (nil when even that was unreadable).
    case undecodable(resourceVersion: String?)
    /// The server ended the watch with a Status (410 Gone for a compacted resourceVersion).
    case error(code: Int?, message: String)
}

/// A Kubernetes object as untyped JSON, for caches that must keep fields no subset models
/// (the GMC's drift check compares what it wants with everything the server holds).
/// `managedFields` is always dropped (server-side apply's bookkeeping, often the largest part
/// of an object, which no controller here reads); metadata-only caches keep only metadata.
public struct UntypedObject: Cacheable {
    public var json: JSONObject

    public init(_ json: JSONObject) { self.json = json }

    var metadata: JSONObject? { json["metadata"] as? JSONObject }
    public var cacheName: String? { metadata?["name"] as? String }
    public var cacheNamespace: String? { metadata?["namespace"] as? String }
    public var cacheResourceVersion: String? { metadata?["resourceVersion"] as? String }
    public func cacheLabel(_ key: String) -> String? { (metadata?["labels"] as? JSONObject)?[key] as? String }

    static func kept(_ object: JSONObject, metadataOnly: Bool) -> UntypedObject {
        var metadata = object["metadata"] as? JSONObject ?? [:]
        metadata["managedFields"] = nil
        guard !metadataOnly else {
            var slim: JSONObject = ["metadata": metadata]
            if let kind = object["kind"] { slim["kind"] = kind }
            return UntypedObject(slim)
        }
        var trimmed = object
        trimmed["metadata"] = metadata
        return UntypedObject(trimmed)
    }

    public static func decodeList(_ body: [UInt8], metadataOnly: Bool) throws -> CachedList<UntypedObject> {
        let list = try KubeClient.decode(body)
        let items = (list["items"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        return CachedList(items: items.map { kept($0, metadataOnly: metadataOnly) },
                          resourceVersion: (list["metadata"] as? JSONObject)?["resourceVersion"] as? String ?? "", undecodable: 0)
    }

    public static func decodeEvent(_ line: [UInt8], metadataOnly: Bool) throws -> WatchEvent<UntypedObject> {
        let event = try KubeClient.decode(line)
        let object = event["object"] as? JSONObject ?? [:]
        switch event["type"] as? String {
        case "ERROR":
            return .error(code: (object["code"] as? Int64).map(Int.init), message: object["message"] as? String ?? "")
        case "BOOKMARK":
            return .bookmark(resourceVersion: (object["metadata"] as? JSONObject)?["resourceVersion"] as? String ?? "")
        case "DELETED":
            return .deleted(kept(object, metadataOnly: metadataOnly))
        default:
            return .upserted(kept(object, metadataOnly: metadataOnly))
        }
    }
}

/// The typed subsets decode with JSONDecoder straight from the response bytes: no untyped
/// tree in between, and only the modelled fields are kept (a cached Pod is a few hundred bytes).
extension KubeKind {
    public var cacheName: String? { metadata.name }
    public var cacheNamespace: String? { metadata.namespace }
    public var cacheResourceVersion: String? { metadata.resourceVersion }
    public func cacheLabel(_ key: String) -> String? { metadata.labels?[key] }

    public static func decodeList(_ body: [UInt8], metadataOnly: Bool) throws -> CachedList<Self> {
        let list = try JSONDecoder().decode(TypedList<Self>.self, from: Data(body))
        let items = list.items.compactMap(\.value)
        return CachedList(items: items, resourceVersion: list.metadata?.resourceVersion ?? "", undecodable: list.items.count - items.count)
    }

    public static func decodeEvent(_ line: [UInt8], metadataOnly: Bool) throws -> WatchEvent<Self> {
        try JSONDecoder().decode(TypedWatchEvent<Self>.self, from: Data(line)).event
    }
}

/// `{"metadata": {"resourceVersion": ...}, "items": [...]}`, each item decoded on its own so
/// one odd object does not cost the whole list.
struct TypedList<Object: Decodable & Sendable>: Decodable {
    struct ListMeta: Decodable { var resourceVersion: String? }
    var metadata: ListMeta?
    var items: [Lenient<Object>]
}

/// An element that decodes to nil instead of failing its container.
struct Lenient<Object: Decodable>: Decodable {
    var value: Object?
    init(from decoder: any Decoder) throws { value = try? Object(from: decoder) }
}

/// `{"type": ..., "object": ...}`, where the object's shape depends on the type.
struct TypedWatchEvent<Object: Decodable & Sendable>: Decodable {
    var event: WatchEvent<Object>

    private enum Keys: String, CodingKey { case type, object }
    private struct Status: Decodable {
        var code: Int?
        var message: String?
    }
    private struct MetaOnly: Decodable {
        struct Meta: Decodable { var resourceVersion: String? }
        var metadata: Meta?
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "ERROR":
            let status = try? container.decode(Status.self, forKey: .object)
            event = .error(code: status?.code, message: status?.message ?? "")
        case "BOOKMARK":
            event = .bookmark(resourceVersion: (try? container.decode(MetaOnly.self, forKey: .object))?.metadata?.resourceVersion ?? "")
        case let type:
            if let object = try? container.decode(Object.self, forKey: .object) {
                event = type == "DELETED" ? .deleted(object) : .upserted(object)
            } else {
                event = .undecodable(resourceVersion: (try? container.decode(MetaOnly.self, forKey: .object))?.metadata?.resourceVersion)
            }
        }
    }
}

/// The read side of an informer's cache, for reconcilers: objects by namespace and name, and
/// by the value of one index label (the gateway label, for a gateway's children). A reconcile
/// reads here instead of asking the API server, so a steady-state reconcile makes no request.
/// Written only by its informer, read from any task.
public final class Lister<Object: Cacheable>: Sendable {
    /// Objects by "namespace/name", and the keys under each "namespace/labelValue".
    private struct Store {
        var objects: [String: Object] = [:]
        var byLabel: [String: Set<String>] = [:]
        var synced = false
        var generation: UInt64 = 0
    }

    public let resource: KubeResource
    /// The label whose value `list(namespace:labelValue:)` looks up; nil = no index.
    public let indexLabel: String?
    private let store = Mutex(Store())

    public init(resource: KubeResource, indexLabel: String? = nil) {
        self.resource = resource
        self.indexLabel = indexLabel
    }

    /// True once the first list has landed: before that, "absent" means "not known yet".
    public var hasSynced: Bool { store.withLock { $0.synced } }

    /// Moves on every change to the cache (relist, upsert, removal): a reader that derives
    /// something from the whole cache rebuilds it only when this differs from the last time.
    public var generation: UInt64 { store.withLock { $0.generation } }

    public func get(namespace: String?, name: String) -> Object? {
        store.withLock { $0.objects["\(namespace ?? "")/\(name)"] }
    }

    /// The objects in `namespace` whose index label has `labelValue`, by name.
    public func list(namespace: String, labelValue: String) -> [Object] {
        store.withLock { store in
            (store.byLabel["\(namespace)/\(labelValue)"] ?? []).sorted().compactMap { store.objects[$0] }
        }
    }

    /// Every cached object, by key.
    public var all: [Object] { store.withLock { store in store.objects.keys.sorted().compactMap { store.objects[$0] } } }

    /// Every cached object, in no particular order: for sums and counts on hot paths, where
    /// sorting thousands of keys per call would dominate.
    public var unordered: [Object] { store.withLock { Array($0.objects.values) } }

    /// The objects in `namespace` whose index label has `labelValue`, in no particular order.
    public func unordered(namespace: String, labelValue: String) -> [Object] {
        store.withLock { store in (store.byLabel["\(namespace)/\(labelValue)"] ?? []).compactMap { store.objects[$0] } }
    }

    public var count: Int { store.withLock { $0.objects.count } }

    /// Every cached object's "namespace/name".
    public var keys: [String] { store.withLock { Array($0.objects.keys).sorted() } }

    private func labelKey(_ object: Object) -> String? {
        guard let indexLabel, let value = object.cacheLabel(indexLabel) else { return nil }
        return "\(object.cacheNamespace ?? "")/\(value)"
    }

    /// Replaces everything (a relist); returns what disappeared, with its last state.
    func replace(with fresh: [String: Object]) -> [(String, Object)] {
        store.withLock { store in
            let removed = store.objects.filter { fresh[$0.key] == nil }.map { ($0.key, $0.value) }
            store.objects = fresh
            store.byLabel = [:]
            for (key, object) in fresh { if let label = labelKey(object) { store.byLabel[label, default: []].insert(key) } }
            store.synced = true
            store.generation &+= 1
            return removed
        }
    }

    func upsert(_ key: String, _ object: Object) {
        store.withLock { store in
            if let old = store.objects[key], let label = labelKey(old) { store.byLabel[label]?.remove(key) }
            store.objects[key] = object
            if let label = labelKey(object) { store.byLabel[label, default: []].insert(key) }
            store.generation &+= 1
        }
    }

    func remove(_ key: String) {
        store.withLock { store in
            if let old = store.objects.removeValue(forKey: key), let label = labelKey(old) { store.byLabel[label]?.remove(key) }
            store.generation &+= 1
        }
    }
}

/// List-then-watch for one resource: keeps a cache of objects by "namespace/name" and calls
/// `onChange` with the key of everything that changed. Resumes a broken watch from the last
/// resourceVersion it saw (bookmarks keep that fresh), and relists when the server says the
/// version is gone (410) or after any error, with backoff. Runs until its task is cancelled.
public actor Informer<Object: Cacheable> {
    /// What changed: an object added or modified, or deleted (with its last known state, so a
    /// handler can still read its labels).
    public enum Change: Sendable {
        case upserted(key: String, object: Object)
        case deleted(key: String, lastKnown: Object?)

        public var key: String {
            switch self {
            case .upserted(let key, _), .deleted(let key, _): return key
            }
        }

        public var object: Object? {
            switch self {
            case .upserted(_, let object): return object
            case .deleted(_, let object): return object
            }
        }
    }

    public let resource: KubeResource
    /// Nil = every namespace (cluster-wide RBAC); a namespaced controller watches only its own.
    private let namespace: String?
    private let client: KubeClient
    private let labelSelector: String?
    private let onChange: @Sendable (Change) async -> Void
    /// The cache reconcilers read (updated before `onChange` sees a change).
    public nonisolated let lister: Lister<Object>
    /// Ask the server for each object's metadata only, for kinds whose content is none of our
    /// business: the GMC needs to know a tenant's Secret exists, never its data.
    private let metadataOnly: Bool
    private let clock: any ControllerClock
    private var resourceVersion = ""
    /// Objects seen that did not decode (left out of the cache).
    private let undecodable = Atomic<Int>(0)

    public init(
        resource: KubeResource, client: KubeClient, namespace: String? = nil, labelSelector: String? = nil, indexLabel: String? = nil,
        metadataOnly: Bool = false, clock: any ControllerClock = SystemControllerClock(),
        onChange: @escaping @Sendable (Change) async -> Void = { _ in }
    ) {
        self.clock = clock
        self.namespace = namespace
        self.resource = resource
        self.client = client
        self.labelSelector = labelSelector
        self.onChange = onChange
        self.metadataOnly = metadataOnly
        lister = Lister(resource: resource, indexLabel: indexLabel)
    }

    /// Objects that did not decode into `Object` so far.
    public nonisolated var undecodableCount: Int { undecodable.load(ordering: .relaxed) }

    public func run() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                try await relist()
                failures = 0
                while !Task.isCancelled {
                    try await watchOnce()  // returns when the server ends the stream; resume from resourceVersion
                }
            } catch {
                failures += 1
                let delay = min(30_000, 100 << min(failures, 8))
                try? await clock.sleep(for: .milliseconds(delay))
            }
        }
    }

    private func relist() async throws {
        let body = try await client.listBody(resource.path(namespace: namespace), labelSelector: labelSelector,
                                             accept: metadataOnly ? KubeClient.metadataListAccept : nil)
        let list = try Object.decodeList(body, metadataOnly: metadataOnly)
        undecodable.add(list.undecodable, ordering: .relaxed)
        var fresh: [String: Object] = [:]
        for item in list.items { if let key = item.cacheKey { fresh[key] = item } }
        let removed = lister.replace(with: fresh)
        resourceVersion = list.resourceVersion
        for (key, last) in removed { await onChange(.deleted(key: key, lastKnown: last)) }
        for (key, object) in fresh { await onChange(.upserted(key: key, object: object)) }
    }

    /// Follows one watch until the server ends it. An error (a 410 for a compacted
    /// resourceVersion, as a status or as an ERROR event, or a broken connection) is thrown,
    /// and `run` relists.
    private func watchOnce() async throws {
        let stream = await client.watch(resource.path(namespace: namespace), resourceVersion: resourceVersion, labelSelector: labelSelector,
                                  accept: metadataOnly ? KubeClient.metadataAccept : nil)
        for try await line in stream.lines where !line.isEmpty {
            switch try Object.decodeEvent(Array(line.utf8), metadataOnly: metadataOnly) {
            case .error(let code, let message):
                throw OutboundError(kind: .other, detail: "watch error \(code.map(String.init) ?? ""): \(message)")
            case .bookmark(let version):
                if !version.isEmpty { resourceVersion = version }
            case .undecodable(let version):
                undecodable.add(1, ordering: .relaxed)
                if let version { resourceVersion = version }
            case .upserted(let object):
                if let version = object.cacheResourceVersion { resourceVersion = version }
                guard let key = object.cacheKey else { continue }
                lister.upsert(key, object)
                await onChange(.upserted(key: key, object: object))
            case .deleted(let object):
                if let version = object.cacheResourceVersion { resourceVersion = version }
                guard let key = object.cacheKey else { continue }
                lister.remove(key)
                await onChange(.deleted(key: key, lastKnown: object))
            }
        }
    }
}

/// How one reconcile ended, which decides when its key runs again.
public enum ReconcileResult: Sendable, Equatable {
    /// Done; the key runs again only when something changes.
    case success
    /// Done for now; run again after this long (polling what no watch reports), no backoff.
    case requeue(after: Duration)
    /// Failed in a way a retry can fix (network, 409 conflict, 5xx, 429): again after the key's
    /// exponential backoff.
    case retryable
    /// Failed in a way no retry fixes (the API refused what we sent as invalid): not retried
    /// until the next change; the failure is logged and counted.
    case terminal
}

/// A de-duplicating work queue with per-key exponential backoff: a key is handed to one worker
/// at a time; a key added while it is being worked on runs once more afterwards. Delays run
/// on the injected clock.
public actor WorkQueue {
    private var queue: [String] = []
    private var queued = Set<String>()
    private var active = Set<String>()
    private var dirty = Set<String>()
    private var failures: [String: Int] = [:]
    /// Workers suspended in `next`, by ticket (a cancelled one is found and resumed with nil).
    private var waiters: [(ticket: UInt64, continuation: CheckedContinuation<String?, Never>)] = []
    private var tickets: UInt64 = 0
    public let baseDelay: Duration
    public let maxDelay: Duration
    private let clock: any ControllerClock

    public init(baseDelay: Duration = .milliseconds(100), maxDelay: Duration = .seconds(60),
                clock: any ControllerClock = SystemControllerClock()) {
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.clock = clock
    }

    public func add(_ key: String) {
        if active.contains(key) {
            dirty.insert(key)
            return
        }
        guard queued.insert(key).inserted else { return }
        if let waiter = waiters.first {
            waiters.removeFirst()
            queued.remove(key)
            active.insert(key)
            waiter.continuation.resume(returning: key)
        } else {
            queue.append(key)
        }
    }

    /// The next key to work on (suspends while there is none); nil once the calling task is
    /// cancelled, so a controller's workers end when it stops (a worker parked here forever
    /// kept `gmc run` and `agc run` from exiting on SIGTERM).
    public func next() async -> String? {
        if Task.isCancelled { return nil }
        if !queue.isEmpty {
            let key = queue.removeFirst()
            queued.remove(key)
            active.insert(key)
            return key
        }
        tickets += 1
        let ticket = tickets
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                // Cancelled between the check above and here: the handler already ran and found nothing.
                if Task.isCancelled { return continuation.resume(returning: nil) }
                waiters.append((ticket, continuation))
            }
        } onCancel: {
            Task { await self.abandon(ticket) }
        }
    }

    private func abandon(_ ticket: UInt64) {
        guard let index = waiters.firstIndex(where: { $0.ticket == ticket }) else { return }
        waiters.remove(at: index).continuation.resume(returning: nil)
    }

    /// Keys waiting for a worker (not those being worked on or waiting out a delay).
    public var depth: Int { queue.count }

    /// The backoff the key's next retryable failure would wait.
    public func backoff(after failures: Int) -> Duration {
        min(maxDelay, baseDelay * (1 << min(max(failures, 1) - 1, 20)))
    }

    /// Marks work on `key` finished, and schedules what `result` asks for.
    public func done(_ key: String, result: ReconcileResult) {
        active.remove(key)
        switch result {
        case .success, .terminal:
            failures[key] = nil
        case .requeue(let delay):
            failures[key] = nil
            later(key, after: delay)
        case .retryable:
            let count = (failures[key] ?? 0) + 1
            failures[key] = count
            later(key, after: backoff(after: count))
        }
        if dirty.remove(key) != nil { add(key) }
    }

    /// Failures in a row for `key` (0 after a success).
    public func failureCount(_ key: String) -> Int { failures[key] ?? 0 }

    private func later(_ key: String, after delay: Duration) {
        let clock = clock
        Task { [weak self] in
            guard (try? await clock.sleep(for: delay)) != nil else { return }
            await self?.add(key)
        }
    }
}
