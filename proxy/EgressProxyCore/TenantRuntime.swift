import EgressLoop
import Synchronization

/// A token bucket: `burst` tokens, refilled at `perSecond`. Pure (time is passed in).
public struct TokenBucket: Sendable, Equatable {
    public let perSecond: Double
    public let burst: Double
    private var tokens: Double
    private var last: Instant?

    public init(perSecond: Double, burst: Int) {
        self.perSecond = perSecond
        self.burst = Double(burst)
        tokens = Double(burst)
    }

    /// Takes one token: nil when granted, else how long until one is available.
    public mutating func take(now: Instant) -> Duration? {
        if let last {
            tokens = min(burst, tokens + now.since(last).seconds * perSecond)
        }
        last = now
        if tokens >= 1 {
            tokens -= 1
            return nil
        }
        let wait = (1 - tokens) / perSecond
        return .nanoseconds(Int64((wait * 1e9).rounded(.up)))
    }
}

/// Per-tenant state shared by every loop and kept across reloads (looked up by name when a
/// snapshot is built): the concurrent-tunnel count and the connect-rate bucket.
public final class TenantRuntime: Sendable {
    public let name: String
    private let active = Atomic<Int>(0)
    private let bucket = Mutex<TokenBucket?>(nil)

    init(name: String) { self.name = name }

    /// Open tunnels of this tenant, all loops.
    public var activeTunnels: Int { active.load(ordering: .relaxed) }

    /// Reserves a tunnel slot; false when `limit` is reached.
    func acquire(limit: Int?) -> Bool {
        let now = active.wrappingAdd(1, ordering: .relaxed).newValue
        if let limit, now > limit {
            active.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func release() { active.wrappingSubtract(1, ordering: .relaxed) }

    /// Applies the configured rate; an unchanged rate keeps the bucket's current fill.
    func configure(rate: (perSecond: Double, burst: Int)?) {
        bucket.withLock { current in
            guard let rate else {
                current = nil
                return
            }
            if current?.perSecond != rate.perSecond || current?.burst != Double(rate.burst) {
                current = TokenBucket(perSecond: rate.perSecond, burst: rate.burst)
            }
        }
    }

    /// nil when the request may proceed, else the Retry-After.
    func takeToken(now: Instant) -> Duration? {
        bucket.withLock { current in current?.take(now: now) }
    }
}

/// Name -> runtime, so counts and buckets survive reloads. Touched only when a snapshot is built.
public final class TenantRegistry: Sendable {
    private let runtimes = Mutex<[String: TenantRuntime]>([:])

    public init() {}

    func runtime(for name: String) -> TenantRuntime {
        runtimes.withLock { table in
            if let existing = table[name] { return existing }
            let created = TenantRuntime(name: name)
            table[name] = created
            return created
        }
    }
}
