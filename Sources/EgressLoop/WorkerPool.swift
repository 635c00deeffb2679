import Dispatch
import EgressPosix
import Synchronization

/// A few OS threads for blocking work that must never run on a loop (getaddrinfo).
/// Jobs run in submission order across the threads; results go back to a loop with
/// `EventLoop.execute`, which rings that loop's eventfd.
public final class WorkerPool: Sendable {
    /// FIFO of jobs with a head index, so popping never shifts the array.
    private struct Queue {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
    }

    private let queue = Mutex(Queue())
    private let ready = DispatchSemaphore(value: 0)

    public init(name: String, threads: Int) throws(IOError) {
        for index in 0..<max(1, threads) {
            try Posix.spawnThread(name: "\(name)-\(index)") { [self] in
                while true {
                    ready.wait()
                    let job: (@Sendable () -> Void)? = queue.withLock { state in
                        guard state.head < state.jobs.count else { return nil }
                        let job = state.jobs[state.head]
                        state.head += 1
                        if state.head == state.jobs.count {
                            state.jobs.removeAll(keepingCapacity: true)
                            state.head = 0
                        }
                        return job
                    }
                    job?()
                }
            }
        }
    }

    /// Queues a job. Safe from any thread.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        queue.withLock { $0.jobs.append(job) }
        ready.signal()
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
