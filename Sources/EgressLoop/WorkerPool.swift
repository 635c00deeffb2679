import Dispatch
import EgressPosix
import Synchronization

/// Whether a queued job is still wanted. The submitter cancels it when the work's reason is
/// gone (the tunnel closed or timed out); a job cancelled before a thread takes it never runs.
/// Shared between the submitting loop and the pool's threads, hence an atomic.
public final class WorkTicket: Sendable {
    private let cancelled = Atomic<Bool>(false)

    public init() {}

    public func cancel() { cancelled.store(true, ordering: .releasing) }

    public var isCancelled: Bool { cancelled.load(ordering: .acquiring) }
}

/// A few OS threads for blocking work that must never run on a loop (getaddrinfo), shared
/// fairly between keys (tenants). Results go back to a loop with `EventLoop.execute`.
///
/// Why not one FIFO: getaddrinfo cannot be interrupted, so a name whose DNS never answers
/// holds its thread for the resolver's whole timeout. With one queue, one tenant's black-holed
/// names occupy every thread and every other tenant waits behind them. Here each key has its
/// own bounded queue and at most `perKeyInFlight` jobs running, and a free thread takes the
/// keys in turn: a key slows only itself, as long as fewer than `threads / perKeyInFlight`
/// keys are stuck at once.
///
/// Ordering: jobs of one key start in submission order; across keys, round robin.
public final class FairWorkerPool: Sendable {
    /// Sizes of the pool. `perKeyInFlight` below `threads` is what keeps a key from taking them all.
    public struct Limits: Sendable {
        public var threads: Int
        public var perKeyInFlight: Int
        public var perKeyQueued: Int

        public init(threads: Int, perKeyInFlight: Int, perKeyQueued: Int) {
            self.threads = max(1, threads)
            self.perKeyInFlight = max(1, perKeyInFlight)
            self.perKeyQueued = max(1, perKeyQueued)
        }
    }

    /// One queued job and the ticket that can withdraw it.
    private struct Job {
        let ticket: WorkTicket
        let body: @Sendable () -> Void
    }

    /// A key's FIFO (with a head index, so popping never shifts) and its running count.
    private struct KeyQueue {
        var jobs: [Job] = []
        var head = 0
        var running = 0
        /// Whether the key is in `State.turns` (it is exactly while it has queued jobs).
        var inTurns = false

        var queued: Int { jobs.count - head }

        mutating func pop() -> Job? {
            while head < jobs.count {
                let job = jobs[head]
                head += 1
                if head == jobs.count {
                    jobs.removeAll(keepingCapacity: true)
                    head = 0
                }
                if !job.ticket.isCancelled { return job }
            }
            return nil
        }

        /// Drops withdrawn jobs, so a full queue of abandoned lookups makes room again.
        mutating func purgeCancelled() {
            jobs = jobs[head...].filter { !$0.ticket.isCancelled }
            head = 0
        }
    }

    /// Everything the threads and submitters share, under one mutex.
    private struct State {
        var keys: [String: KeyQueue] = [:]
        /// Keys with queued jobs, in turn order; `cursor` is whose turn is next.
        var turns: [String] = []
        var cursor = 0
        var idle: [Int]
        /// The job each thread was handed, with its key (nil while the thread is idle).
        var assigned: [(key: String, job: Job)?]
    }

    public let limits: Limits
    private let state: Mutex<State>
    private let wakeups: [DispatchSemaphore]

    public init(name: String, limits: Limits) throws(IOError) {
        self.limits = limits
        state = Mutex(State(idle: Array((0..<limits.threads).reversed()), assigned: Array(repeating: nil, count: limits.threads)))
        wakeups = (0..<limits.threads).map { _ in DispatchSemaphore(value: 0) }
        for index in 0..<limits.threads {
            try Posix.spawnThread(name: "\(name)-\(index)") { [self] in work(thread: index) }
        }
    }

    /// Queues `body` under `key`; false when the key already has `perKeyQueued` jobs waiting
    /// (the caller refuses the request rather than let one key's backlog grow without bound).
    /// Safe from any thread.
    public func submit(key: String, ticket: WorkTicket, _ body: @escaping @Sendable () -> Void) -> Bool {
        let limits = limits
        let (accepted, woken): (Bool, [Int]) = state.withLock { state in
            if let waiting = state.keys[key]?.queued, waiting >= limits.perKeyQueued {
                state.keys[key]?.purgeCancelled()
                if let still = state.keys[key]?.queued, still >= limits.perKeyQueued { return (false, []) }
            }
            state.keys[key, default: KeyQueue()].jobs.append(Job(ticket: ticket, body: body))
            if state.keys[key]?.inTurns == false {
                state.keys[key]?.inTurns = true
                state.turns.append(key)
            }
            return (true, Self.dispatch(&state, limits: limits))
        }
        for thread in woken { wakeups[thread].signal() }
        return accepted
    }

    private func work(thread: Int) {
        while true {
            wakeups[thread].wait()
            guard let (key, job) = state.withLock({ $0.assigned[thread] }) else { continue }
            if !job.ticket.isCancelled { job.body() }
            let limits = limits
            let woken = state.withLock { state in
                state.assigned[thread] = nil
                state.keys[key]?.running -= 1
                if let entry = state.keys[key], entry.running == 0, !entry.inTurns { state.keys[key] = nil }
                state.idle.append(thread)
                return Self.dispatch(&state, limits: limits)
            }
            for other in woken { wakeups[other].signal() }
        }
    }

    /// Hands queued jobs to idle threads, keys in turn, skipping keys at their in-flight cap.
    /// Returns the threads to wake (signalled after the lock is released). Under the lock.
    private static func dispatch(_ state: inout State, limits: Limits) -> [Int] {
        var woken: [Int] = []
        var skipped = 0  // consecutive keys passed over at their cap; all of them: stop
        while !state.idle.isEmpty, !state.turns.isEmpty, skipped < state.turns.count {
            if state.cursor >= state.turns.count { state.cursor = 0 }
            let key = state.turns[state.cursor]
            guard let running = state.keys[key]?.running else {
                state.turns.remove(at: state.cursor)
                continue
            }
            if running >= limits.perKeyInFlight {
                state.cursor += 1
                skipped += 1
                continue
            }
            guard let job = state.keys[key]?.pop() else {
                // Only withdrawn jobs were left: the key leaves the rotation.
                state.turns.remove(at: state.cursor)
                state.keys[key]?.inTurns = false
                if running == 0 { state.keys[key] = nil }
                continue
            }
            state.keys[key]?.running += 1
            let thread = state.idle.removeLast()
            state.assigned[thread] = (key, job)
            woken.append(thread)
            skipped = 0
            if state.keys[key]?.queued == 0 {
                state.turns.remove(at: state.cursor)
                state.keys[key]?.inTurns = false
            } else {
                state.cursor += 1
            }
        }
        return woken
    }
}

/// Runs `snapshot` on each loop and hands all results, in loop order, to `completion` on
/// `origin`. How one loop reads state that other loops own without locks or atomics: the
/// state never leaves its thread except as a value copy.
public func gather<T: Sendable>(
    from loops: [EventLoop],
    to origin: EventLoop,
    snapshot: @escaping @Sendable (Int) -> T,
    completion: @escaping @Sendable ([T]) -> Void
) {
    guard !loops.isEmpty else {
        origin.execute { completion([]) }
        return
    }
    // The collector is touched only on `origin`'s thread.
    let collector = GatherCollector<T>(count: loops.count)
    for (index, loop) in loops.enumerated() {
        loop.execute {
            let value = snapshot(index)
            origin.execute {
                collector.results[index] = value
                collector.remaining -= 1
                if collector.remaining == 0 { completion(collector.results.compactMap { $0 }) }
            }
        }
    }
}

/// Results of one `gather`, touched only on the origin loop's thread.
private final class GatherCollector<T>: @unchecked Sendable {
    var results: [T?]
    var remaining: Int
    init(count: Int) {
        results = Array(repeating: nil, count: count)
        remaining = count
    }
}
