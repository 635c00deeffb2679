import Dispatch
import EgressLoop
import Synchronization
import Testing

/// What the pool's threads did, in order (appended from any thread).
final class Journal: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
    func count(prefix: String) -> Int { all.filter { $0.hasPrefix(prefix) }.count }
}

/// The pool runs real threads; every wait here is a semaphore with a deadline, never a sleep.
@Suite struct FairWorkerPoolTests {

    func waited(_ semaphore: DispatchSemaphore) -> Bool {
        semaphore.wait(timeout: .now() + .seconds(10)) == .success
    }

    @Test func aKeyWhoseJobsNeverFinishLeavesThreadsForOtherKeys() throws {
        let pool = try FairWorkerPool(name: "t-starve", limits: .init(threads: 4, perKeyInFlight: 2, perKeyQueued: 64))
        let journal = Journal()
        let gate = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
        let holeStarted = DispatchSemaphore(value: 0)
        for index in 0..<40 {
            #expect(pool.submit(key: "black-holed", ticket: WorkTicket()) {
                journal.add("hole-\(index)")
                holeStarted.signal()
                gate.wait()
                finished.signal()
            })
        }
        for _ in 0..<2 { #expect(waited(holeStarted), "the stuck key gets its share of threads") }
        let other = DispatchSemaphore(value: 0)
        for index in 0..<5 {
            #expect(pool.submit(key: "victim", ticket: WorkTicket()) {
                journal.add("victim-\(index)")
                other.signal()
            })
        }
        for _ in 0..<5 { #expect(waited(other), "the other key's jobs run while the first key's hang") }
        #expect(journal.count(prefix: "hole-") == 2, "exactly perKeyInFlight jobs of the stuck key started")
        for _ in 0..<40 { gate.signal() }
        for _ in 0..<40 { #expect(waited(finished)) }
        // Two threads start jobs concurrently, so only "each exactly once" is deterministic here;
        // order within a key is pinned by the one-thread tests below.
        #expect(journal.all.filter { $0.hasPrefix("hole-") }.sorted() == (0..<40).map { "hole-\($0)" }.sorted())
    }

    @Test func aFullQueueRefusesOnlyItsKeyAndWithdrawnJobsMakeRoom() throws {
        let pool = try FairWorkerPool(name: "t-bound", limits: .init(threads: 1, perKeyInFlight: 1, perKeyQueued: 3))
        let journal = Journal()
        let gate = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        #expect(pool.submit(key: "a", ticket: WorkTicket()) {
            started.signal()
            gate.wait()
        })
        #expect(waited(started))
        let tickets = (0..<3).map { _ in WorkTicket() }
        for (index, ticket) in tickets.enumerated() {
            #expect(pool.submit(key: "a", ticket: ticket) { journal.add("a-\(index)") })
        }
        #expect(!pool.submit(key: "a", ticket: WorkTicket()) { journal.add("a-refused") }, "a fourth queued job is refused")
        #expect(pool.submit(key: "b", ticket: WorkTicket()) { journal.add("b-0") }, "another key still queues")
        tickets[1].cancel()
        #expect(pool.submit(key: "a", ticket: WorkTicket()) { journal.add("a-3") }, "a withdrawn job frees its place")
        let done = DispatchSemaphore(value: 0)
        gate.signal()
        #expect(pool.submit(key: "z", ticket: WorkTicket()) { done.signal() })
        #expect(waited(done))
        let sentinel = DispatchSemaphore(value: 0)
        #expect(pool.submit(key: "a", ticket: WorkTicket()) { sentinel.signal() })
        #expect(waited(sentinel))
        #expect(!journal.all.contains("a-1"), "a cancelled job never runs")
        #expect(!journal.all.contains("a-refused"))
        #expect(journal.all.filter { $0.hasPrefix("a-") } == ["a-0", "a-2", "a-3"])
    }

    @Test func freeThreadsTakeKeysInTurn() throws {
        let pool = try FairWorkerPool(name: "t-turns", limits: .init(threads: 1, perKeyInFlight: 1, perKeyQueued: 16))
        let journal = Journal()
        let gate = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        #expect(pool.submit(key: "g", ticket: WorkTicket()) {
            started.signal()
            gate.wait()
        })
        #expect(waited(started))
        let done = DispatchSemaphore(value: 0)
        for key in ["a", "b", "c"] {
            for index in 0..<3 {
                #expect(pool.submit(key: key, ticket: WorkTicket()) {
                    journal.add("\(key)\(index)")
                    done.signal()
                })
            }
        }
        gate.signal()
        for _ in 0..<9 { #expect(waited(done)) }
        #expect(journal.all == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"])
    }
}
