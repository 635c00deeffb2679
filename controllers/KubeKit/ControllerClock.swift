import Foundation
import Synchronization

/// Time for controllers, injected so tests drive backoff, requeues and lease expiry with a
/// manual clock instead of waiting. Logic never reads `Date()`, `ContinuousClock` or calls a
/// bare `Task.sleep`; it asks its clock.
public protocol ControllerClock: Sendable {
    /// Monotonic time since an arbitrary origin (for durations and deadlines).
    func now() -> Duration
    /// Wall-clock time, only for timestamps written to the API (conditions, events, leases).
    func wallNow() -> Date
    /// Suspends for `duration` of this clock's time; throws `CancellationError` when cancelled.
    func sleep(for duration: Duration) async throws
}

/// The real clocks: the one place controller code touches `Date()`, `ContinuousClock` and
/// `Task.sleep`, so that everything else can be driven by `ManualControllerClock` in tests.
public struct SystemControllerClock: ControllerClock {
    private let origin = ContinuousClock.now

    public init() {}

    public func now() -> Duration { ContinuousClock.now - origin }
    public func wallNow() -> Date { Date() }
    public func sleep(for duration: Duration) async throws { try await Task.sleep(for: duration) }
}

/// A clock that moves only when a test says so. Sleepers wake, in deadline order, when
/// `advance` passes their deadline; cancelling a sleeping task wakes it with CancellationError.
public final class ManualControllerClock: ControllerClock {
    /// Current time and the sleepers waiting for it, under one lock.
    private struct State {
        var now: Duration = .zero
        var wall: Date
        var sleepers: [UInt64: (deadline: Duration, continuation: CheckedContinuation<Void, any Error>)] = [:]
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>

    public init(wall: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        state = Mutex(State(wall: wall))
    }

    public func now() -> Duration { state.withLock { $0.now } }

    public func wallNow() -> Date { state.withLock { $0.wall } }

    /// Tasks suspended in `sleep` right now (tests wait for this before advancing).
    public var sleepers: Int { state.withLock { $0.sleepers.count } }

    /// The earliest deadline among the sleepers, if any.
    public var nextDeadline: Duration? { state.withLock { $0.sleepers.values.map(\.deadline).min() } }

    public func advance(by duration: Duration) {
        let due = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.now += duration
            state.wall += Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
            let ready = state.sleepers.filter { $0.value.deadline <= state.now }.sorted { $0.value.deadline < $1.value.deadline }
            for (id, _) in ready { state.sleepers[id] = nil }
            return ready.map(\.value.continuation)
        }
        for continuation in due { continuation.resume() }
    }

    public func sleep(for duration: Duration) async throws {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow = state.withLock { state -> Bool in
                    if Task.isCancelled || duration <= .zero { return true }
                    state.sleepers[id] = (state.now + duration, continuation)
                    return false
                }
                if resumeNow {
                    if Task.isCancelled { continuation.resume(throwing: CancellationError()) } else { continuation.resume() }
                }
            }
        } onCancel: {
            let continuation = state.withLock { $0.sleepers.removeValue(forKey: id)?.continuation }
            continuation?.resume(throwing: CancellationError())
        }
    }
}
