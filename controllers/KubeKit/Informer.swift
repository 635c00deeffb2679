import Foundation
import OutboundPool

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
    private var cache: [String: JSONObject] = [:]
    private var resourceVersion = ""

    public init(
        resource: KubeResource, client: KubeClient, labelSelector: String? = nil,
        onChange: @escaping @Sendable (Change) async -> Void
    ) {
        self.resource = resource
        self.client = client
        self.labelSelector = labelSelector
        self.onChange = onChange
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
                try? await Task.sleep(for: .milliseconds(delay))
            }
        }
    }

    static func key(_ object: JSONObject) -> String? {
        guard let metadata = object["metadata"] as? JSONObject, let name = metadata["name"] as? String else { return nil }
        return "\(metadata["namespace"] as? String ?? "")/\(name)"
    }

    private func relist() async throws {
        let list = try await client.listResponse(resource.path(namespace: nil), labelSelector: labelSelector)
        let items = (list["items"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        var fresh: [String: JSONObject] = [:]
        for item in items { if let key = Self.key(item) { fresh[key] = item } }
        let removed = Set(cache.keys).subtracting(fresh.keys).map { ($0, cache[$0]) }
        cache = fresh
        resourceVersion = (list["metadata"] as? JSONObject)?["resourceVersion"] as? String ?? ""
        for (key, last) in removed { await onChange(.deleted(key: key, lastKnown: last)) }
        for (key, object) in fresh { await onChange(.upserted(key: key, object: object)) }
    }

    /// Follows one watch until the server ends it. An error (a 410 for a compacted
    /// resourceVersion, as a status or as an ERROR event, or a broken connection) is thrown,
    /// and `run` relists.
    private func watchOnce() async throws {
        let stream = client.watch(resource.path(namespace: nil), resourceVersion: resourceVersion, labelSelector: labelSelector)
        for try await line in stream.lines where !line.isEmpty {
            let event = try KubeClient.decode(Array(line.utf8))
            guard let type = event["type"] as? String, let object = event["object"] as? JSONObject else { continue }
            if type == "ERROR" {
                throw OutboundError(kind: .other, detail: "watch error \(object["code"] ?? ""): \(object["message"] ?? "")")
            }
            if let version = (object["metadata"] as? JSONObject)?["resourceVersion"] as? String { resourceVersion = version }
            if type == "BOOKMARK" { continue }
            guard let key = Self.key(object) else { continue }
            if type == "DELETED" {
                cache[key] = nil
                await onChange(.deleted(key: key, lastKnown: object))
            } else {
                cache[key] = object
                await onChange(.upserted(key: key, object: object))
            }
        }
    }
}

/// A de-duplicating work queue with per-key exponential backoff: a key is handed to one worker
/// at a time; a key added while it is being worked on runs once more afterwards.
public actor WorkQueue {
    private var queue: [String] = []
    private var queued = Set<String>()
    private var active = Set<String>()
    private var dirty = Set<String>()
    private var failures: [String: Int] = [:]
    private var waiters: [CheckedContinuation<String, Never>] = []
    public let baseDelay: Duration
    public let maxDelay: Duration

    public init(baseDelay: Duration = .milliseconds(100), maxDelay: Duration = .seconds(60)) {
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
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

    /// Marks work on `key` finished. A failure re-adds it after the key's backoff.
    public func done(_ key: String, success: Bool) {
        active.remove(key)
        if success {
            failures[key] = nil
        } else {
            let count = (failures[key] ?? 0) + 1
            failures[key] = count
            let delay = min(maxDelay, baseDelay * (1 << min(count - 1, 20)))
            Task { [weak self] in
                try? await Task.sleep(for: delay)
                await self?.add(key)
            }
        }
        if dirty.remove(key) != nil { add(key) }
    }

}
