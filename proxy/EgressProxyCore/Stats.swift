import GatewayOps
import Vocabulary

/// Outcome of a request (the `result` label of egress_proxy_tunnels_total).
public enum TunnelResult: Int, CaseIterable, Sendable {
    case established, denied, authFailed, rateLimited, overLimit, dialFailed, dnsFailed, badRequest, timeout

    public var label: String {
        switch self {
        case .established: return "established"
        case .denied: return "denied"
        case .authFailed: return "auth_failed"
        case .rateLimited: return "rate_limited"
        case .overLimit: return "over_limit"
        case .dialFailed: return "dial_failed"
        case .dnsFailed: return "dns_failed"
        case .badRequest: return "bad_request"
        case .timeout: return "timeout"
        }
    }
}

/// One tenant's counters on one loop. Plain integers, written only by the owning loop;
/// other threads see copies made on that loop (`gather`), so no atomics on the hot path.
public struct TenantStats: Sendable {
    public var active = 0
    public var results = [UInt64](repeating: 0, count: TunnelResult.allCases.count)
    public var denied = [UInt64](repeating: 0, count: DenyReason.allCases.count)
    /// Report mode: what enforce would have denied, by the same reasons.
    public var reported = [UInt64](repeating: 0, count: DenyReason.allCases.count)
    public var bytesUp: UInt64 = 0
    public var bytesDown: UInt64 = 0
    public var connectSeconds = Histogram(bounds: Histogram.latencyBounds)
    public var tunnelSeconds = Histogram(bounds: Histogram.lifetimeBounds)

    public init() {}

    public mutating func merge(_ other: TenantStats) {
        active += other.active
        for index in results.indices { results[index] += other.results[index] }
        for index in denied.indices { denied[index] += other.denied[index] }
        for index in reported.indices { reported[index] += other.reported[index] }
        bytesUp += other.bytesUp
        bytesDown += other.bytesDown
        connectSeconds.merge(other.connectSeconds)
        tunnelSeconds.merge(other.tunnelSeconds)
    }
}

extension DenyReason: CaseIterable {
    public static var allCases: [DenyReason] { [.notAllowed, .privateAddress, .tenantDisabled, .portNotAllowed] }

    var ordinal: Int {
        switch self {
        case .notAllowed: return 0
        case .privateAddress: return 1
        case .tenantDisabled: return 2
        case .portNotAllowed: return 3
        }
    }
}

/// A loop's counters, one slot per tenant name. Slots are only ever added (a reload that
/// removes a tenant keeps its slot), so a tunnel's slot index stays valid for its lifetime
/// and the hot path indexes an array instead of hashing a name.
public struct LoopStats: Sendable {
    public private(set) var names: [String] = []
    public var tenants: [TenantStats] = []

    public init() {}

    /// The slot for a tenant name, created on first use.
    public mutating func slot(for name: String) -> Int {
        if let index = names.firstIndex(of: name) { return index }
        names.append(name)
        tenants.append(TenantStats())
        return names.count - 1
    }

    /// Sums loops' stats by tenant name.
    public static func merged(_ all: [LoopStats]) -> [(name: String, stats: TenantStats)] {
        var order: [String] = []
        var byName: [String: TenantStats] = [:]
        for loop in all {
            for (index, name) in loop.names.enumerated() {
                if byName[name] == nil {
                    order.append(name)
                    byName[name] = TenantStats()
                }
                byName[name]?.merge(loop.tenants[index])
            }
        }
        return order.map { ($0, byName[$0] ?? TenantStats()) }
    }
}
