import Foundation
import OutboundPool
import Synchronization

/// The read side of an informer's cache, for reconcilers: objects by namespace and name, and
/// by the value of one index label (the gateway label, for a gateway's children). A reconcile
/// reads here instead of asking the API server, so a steady-state reconcile makes no request.
/// Written only by its informer, read from any task.
public final class Lister: Sendable {
    /// Objects by "namespace/name", and the keys under each "namespace/labelValue".
    private struct Store {
        var objects: [String: JSONObject] = [:]
        var byLabel: [String: Set<String>] = [:]
        var synced = false
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

    public func get(namespace: String?, name: String) -> JSONObject? {
        store.withLock { $0.objects["\(namespace ?? "")/\(name)"] }
    }

    /// The objects in `namespace` whose index label has `labelValue`.
    public func list(namespace: String, labelValue: String) -> [JSONObject] {
        store.withLock { store in
            (store.byLabel["\(namespace)/\(labelValue)"] ?? []).sorted().compactMap { store.objects[$0] }
        }
    }

    public var count: Int { store.withLock { $0.objects.count } }

    /// Every cached object's "namespace/name".
    public var keys: [String] { store.withLock { Array($0.objects.keys).sorted() } }

    private func labelKey(_ key: String, _ object: JSONObject) -> String? {
        guard let indexLabel, let value = ((object["metadata"] as? JSONObject)?["labels"] as? JSONObject)?[indexLabel] as? String
        else { return nil }
        return "\(key.split(separator: "/", maxSplits: 1).first ?? "")/\(value)"
    }

    /// Replaces everything (a relist); returns what disappeared, with its last state.
    func replace(with fresh: [String: JSONObject]) -> [(String, JSONObject)] {
        store.withLock { store in
            let removed = store.objects.filter { fresh[$0.key] == nil }.map { ($0.key, $0.value) }
            store.objects = fresh
            store.byLabel = [:]
            for (key, object) in fresh { if let label = labelKey(key, object) { store.byLabel[label, default: []].insert(key) } }
            store.synced = true
            return removed
        }
    }

    func upsert(_ key: String, _ object: JSONObject) {
        store.withLock { store in
            if let old = store.objects[key], let label = labelKey(key, old) { store.byLabel[label]?.remove(key) }
            store.objects[key] = object
            if let label = labelKey(key, object) { store.byLabel[label, default: []].insert(key) }
        }
    }

    func remove(_ key: String) {
        store.withLock { store in
            if let old = store.objects.removeValue(forKey: key), let label = labelKey(key, old) { store.byLabel[label]?.remove(key) }
        }
    }
}

/// List-then-watch for one resource: keeps a cache of objects by "namespace/name" and calls
/// `onChange` with the key of everything that changed. Resumes a broken watch from the last
/// resourceVersion it saw (bookmarks keep that fresh), and relists when the server says the
/// version is gone (410) or after any error, with backoff. Runs until its task is cancelled.
public actor Informer {
    /// What changed: an object added or modified, or deleted (with its last known state, so a
    /// handler can still read its labels).
    public enum Change: Sendable {
        case upserted(key: String, object: JSONObject)
        case deleted(key: String, lastKnown: JSONObject?)

        public var key: String {
            switch self {
            case .upserted(let key, _), .deleted(let key, _): return key
            }
        }

        public var object: JSONObject? {
            switch self {
            case .upserted(_, let object): return object
            case .deleted(_, let object): return object
            }
        }
    }

    public let resource: KubeResource
    private let client: KubeClient
    private let labelSelector: String?
    private let onChange: @Sendable (Change) async -> Void
    /// The cache reconcilers read (updated before `onChange` sees a change).
    public nonisolated let lister: Lister
    /// Keep only each object's metadata (and ask the server for just that), for kinds whose
    /// content is none of our business: the GMC needs to know a tenant's Secret exists, never its data.
    private let metadataOnly: Bool
    private let clock: any ControllerClock
    private var resourceVersion = ""

    public init(
        resource: KubeResource, client: KubeClient, labelSelector: String? = nil, indexLabel: String? = nil,
        metadataOnly: Bool = false, clock: any ControllerClock = SystemControllerClock(),
        onChange: @escaping @Sendable (Change) async -> Void = { _ in }
    ) {
        self.clock = clock
        self.resource = resource
        self.client = client
        self.labelSelector = labelSelector
        self.onChange = onChange
        self.metadataOnly = metadataOnly
        lister = Lister(resource: resource, indexLabel: indexLabel)
    }

    /// What the cache keeps of an object: never `metadata.managedFields` (server-side apply's
    /// bookkeeping, often the largest part of an object, which no controller here reads), and
    /// only the metadata for metadata-only kinds.
    private func kept(_ object: JSONObject) -> JSONObject {
        var metadata = object["metadata"] as? JSONObject ?? [:]
        metadata["managedFields"] = nil
        guard !metadataOnly else {
            var slim: JSONObject = ["metadata": metadata]
            if let kind = object["kind"] { slim["kind"] = kind }
            return slim
        }
        var trimmed = object
        trimmed["metadata"] = metadata
        return trimmed
    }

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

    static func key(_ object: JSONObject) -> String? {
        guard let metadata = object["metadata"] as? JSONObject, let name = metadata["name"] as? String else { return nil }
        return "\(metadata["namespace"] as? String ?? "")/\(name)"
    }

    private func relist() async throws {
        let list = try await client.listResponse(resource.path(namespace: nil), labelSelector: labelSelector,
                                                 accept: metadataOnly ? KubeClient.metadataListAccept : nil)
        let items = (list["items"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        var fresh: [String: JSONObject] = [:]
        for item in items { if let key = Self.key(item) { fresh[key] = kept(item) } }
        let removed = lister.replace(with: fresh)
        resourceVersion = (list["metadata"] as? JSONObject)?["resourceVersion"] as? String ?? ""
        for (key, last) in removed { await onChange(.deleted(key: key, lastKnown: last)) }
        for (key, object) in fresh { await onChange(.upserted(key: key, object: object)) }
    }

    /// Follows one watch until the server ends it. An error (a 410 for a compacted
    /// resourceVersion, as a status or as an ERROR event, or a broken connection) is thrown,
    /// and `run` relists.
    private func watchOnce() async throws {
        let stream = client.watch(resource.path(namespace: nil), resourceVersion: resourceVersion, labelSelector: labelSelector,
                                  accept: metadataOnly ? KubeClient.metadataAccept : nil)
        for try await line in stream.lines where !line.isEmpty {
            let event = try KubeClient.decode(Array(line.utf8))
            guard let type = event["type"] as? String, let object = event["object"] as? JSONObject else { continue }
            if type == "ERROR" {
                throw OutboundError(kind: .other, detail: "watch error \(object["code"] ?? ""): \(object["message"] ?? "")")
            }
            if let version = (object["metadata"] as? JSONObject)?["resourceVersion"] as? String { resourceVersion = version }
            if type == "BOOKMARK" { continue }
            guard let key = Self.key(object) else { continue }
            let cached = kept(object)
            if type == "DELETED" {
                lister.remove(key)
                await onChange(.deleted(key: key, lastKnown: cached))
            } else {
                lister.upsert(key, cached)
                await onChange(.upserted(key: key, object: cached))
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
    private var waiters: [CheckedContinuation<String, Never>] = []
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
            waiter.resume(returning: key)
        } else {
            queue.append(key)
        }
    }

    /// The next key to work on (suspends while there is none).
    public func next() async -> String {
        if !queue.isEmpty {
            let key = queue.removeFirst()
            queued.remove(key)
            active.insert(key)
            return key
        }
        return await withCheckedContinuation { waiters.append($0) }
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
