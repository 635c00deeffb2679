import EgressLoop
import EgressPosix

/// A `Selector` with no kernel behind it: it records what the loop registers (descriptor,
/// flags, token) and its `wait` returns whatever the test queued with `deliver`, at once,
/// never blocking. The numbers it is given are only keys; nothing is opened or polled.
///
/// Confined to the thread that steps the loop (`EventLoop.runIteration`).
public final class FakeSelector: Selector {
    /// One interest the loop holds.
    public struct Interest: Equatable {
        public var events: EpollEvents
        public var token: UInt64
    }

    public private(set) var interests: [CInt: Interest] = [:]
    /// Every add, modify and remove, in order, for asserting on what the loop asked.
    public private(set) var log: [String] = []
    private var queued: [EpollReport] = []

    public init() {}

    /// Queues a report for `fd` under the token it is registered with now (as the kernel
    /// would). Returns false when `fd` is not registered.
    @discardableResult
    public func deliver(fd: CInt, _ events: EpollEvents) -> Bool {
        guard let interest = interests[fd] else { return false }
        queued.append(EpollReport(data: interest.token, events: events.rawValue))
        return true
    }

    /// Queues a report under an explicit token: what the kernel does when an event was
    /// already queued for a registration that has since gone (a stale report).
    public func deliver(token: UInt64, _ events: EpollEvents) {
        queued.append(EpollReport(data: token, events: events.rawValue))
    }

    public func add(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError) {
        guard interests[fd] == nil else { throw IOError(errno: .fileExists, function: "epoll_ctl") }
        interests[fd] = Interest(events: events, token: token)
        log.append("add \(fd)")
    }

    public func modify(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError) {
        guard interests[fd] != nil else { throw IOError(errno: .noSuchFileOrDirectory, function: "epoll_ctl") }
        interests[fd] = Interest(events: events, token: token)
        log.append("modify \(fd)")
    }

    public func remove(_ fd: CInt) throws(IOError) {
        guard interests.removeValue(forKey: fd) != nil else { throw IOError(errno: .noSuchFileOrDirectory, function: "epoll_ctl") }
        log.append("remove \(fd)")
    }

    public func removeIfPresent(_ fd: CInt) {
        if interests.removeValue(forKey: fd) != nil { log.append("remove \(fd)") }
    }

    /// Forgets `fd` the way closing it would: no log line, and reports already queued for
    /// it stay queued (they carry the old token, which the loop must drop).
    public func closed(_ fd: CInt) { interests.removeValue(forKey: fd) }

    public func wait(into reports: UnsafeMutableBufferPointer<EpollReport>, timeout: CInt) throws(IOError) -> Int {
        let count = min(reports.count, queued.count)
        for index in 0..<count { reports[index] = queued[index] }
        queued.removeFirst(count)
        return count
    }
}
