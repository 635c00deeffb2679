import Foundation

/// Lease-based leader election (coordination.k8s.io/v1 Lease): the holder renews every
/// `duration / 3`; anyone may take the Lease once `renewTime + leaseDurationSeconds` has
/// passed. Updates carry the resourceVersion they read, so two candidates cannot both win:
/// the slower one gets 409 and stays a follower.
public actor LeaderElector {
    public let identity: String
    private let client: KubeClient
    private let namespace: String
    private let name: String
    private let duration: Duration
    private let clock: any ControllerClock
    public private(set) var isLeader = false

    public init(
        client: KubeClient, namespace: String, name: String, identity: String, duration: Duration = .seconds(15),
        clock: any ControllerClock = SystemControllerClock()
    ) {
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.clock = clock
    }

    private func now() -> Date { clock.wallNow() }

    static let resource = KubeResource(group: "coordination.k8s.io", version: "v1", plural: "leases")

    static func microTime(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }

    static func parse(_ text: String?) -> Date? {
        guard let text else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }

    /// One attempt to acquire or renew; returns whether we lead afterwards.
    @discardableResult
    public func tryAcquireOrRenew() async -> Bool {
        let path = Self.resource.path(namespace: namespace, name: name)
        let seconds = Int64(duration.components.seconds)
        let stamp = Self.microTime(now())
        do {
            guard let lease = try await client.get(path) else {
                _ = try await client.create(Self.resource.path(namespace: namespace), [
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": ["name": name, "namespace": namespace] as JSONObject,
                    "spec": ["holderIdentity": identity, "leaseDurationSeconds": seconds, "acquireTime": stamp, "renewTime": stamp,
                             "leaseTransitions": Int64(0)] as JSONObject,
                ])
                isLeader = true
                return true
            }
            let spec = lease["spec"] as? JSONObject ?? [:]
            let holder = spec["holderIdentity"] as? String
            let renewed = Self.parse(spec["renewTime"] as? String) ?? .distantPast
            let leaseSeconds = Double(spec["leaseDurationSeconds"] as? Int64 ?? seconds)
            let expired = now().timeIntervalSince(renewed) > leaseSeconds
            guard holder == identity || expired || holder == nil || holder == "" else {
                isLeader = false
                return false
            }
            let transitions = (spec["leaseTransitions"] as? Int64 ?? 0) + (holder == identity ? 0 : 1)
            let version = (lease["metadata"] as? JSONObject)?["resourceVersion"] as? String ?? ""
            var newSpec: JSONObject = ["holderIdentity": identity, "leaseDurationSeconds": seconds, "renewTime": stamp,
                                       "leaseTransitions": transitions]
            newSpec["acquireTime"] = holder == identity ? (spec["acquireTime"] as? String ?? stamp) : stamp
            _ = try await client.mergePatch(path, ["metadata": ["resourceVersion": version] as JSONObject, "spec": newSpec])
            isLeader = true
            return true
        } catch {
            isLeader = false
            return false
        }
    }

    /// Keeps trying until leading, then calls `lead` and keeps renewing while it runs; if a
    /// renewal fails past the lease duration, cancels `lead` (another replica may lead now).
    public func run(lead: @escaping @Sendable () async -> Void) async {
        let interval = duration / 3
        while !Task.isCancelled {
            if await tryAcquireOrRenew() { break }
            try? await clock.sleep(for: interval)
        }
        let leading = Task { await lead() }
        var lastRenewal = clock.now()
        while !Task.isCancelled {
            try? await clock.sleep(for: interval)
            if await tryAcquireOrRenew() {
                lastRenewal = clock.now()
            } else if clock.now() - lastRenewal > duration {
                leading.cancel()
                return
            }
        }
        leading.cancel()
    }
}
