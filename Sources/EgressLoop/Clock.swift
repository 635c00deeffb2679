import EgressPosix
import Synchronization

/// A point on a monotonic time line, in nanoseconds. Only differences mean anything.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    public static func + (lhs: Instant, rhs: Duration) -> Instant {
        Instant(nanoseconds: lhs.nanoseconds &+ rhs.nanosecondsClamped)
    }

    /// `self - earlier`, zero if `earlier` is later.
    public func since(_ earlier: Instant) -> Duration {
        nanoseconds > earlier.nanoseconds ? .nanoseconds(Int64(nanoseconds - earlier.nanoseconds)) : .zero
    }

    public var description: String { "\(nanoseconds)ns" }
}

extension Duration {
    /// Non-negative nanoseconds, saturating (our durations are config timeouts).
    public var nanosecondsClamped: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return UInt64.max / 2 }
        return whole + UInt64(attoseconds / 1_000_000_000)
    }

    /// Seconds as a Double, for histograms and logs.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// Where a loop reads time. Injected so tests move time by hand instead of sleeping.
public protocol LoopClock: Sendable {
    func now() -> Instant
}

/// CLOCK_MONOTONIC: the clock of production loops; its values are the ones timerfd uses.
public struct MonotonicClock: LoopClock {
    public init() {}
    public func now() -> Instant { Instant(nanoseconds: Posix.monotonicNanoseconds()) }
}

/// A clock that moves only when a test says so.
public final class ManualClock: LoopClock {
    private let current: Mutex<UInt64>

    public init(start: UInt64 = 1_000_000_000) { current = Mutex(start) }

    public func now() -> Instant { Instant(nanoseconds: current.withLock { $0 }) }

    public func advance(by duration: Duration) {
        current.withLock { $0 &+= duration.nanosecondsClamped }
    }
}
