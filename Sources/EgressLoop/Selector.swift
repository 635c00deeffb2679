import EgressPosix

/// What an `EventLoop` asks of the kernel's readiness interface: interest in descriptors,
/// each under a 64-bit token, and a wait that reports tokens with their flags. `EpollSelector`
/// is the one production implementation; `TestSupport.FakeSelector` lets a test deliver
/// any readiness it wants (a hangup before any data, a stale report for a reused slot) and
/// see what the loop registered, with no descriptors behind the numbers.
///
/// Confined to the loop's thread, like the loop itself. A class so the loop can hold any
/// implementation without being generic (the calls are a handful per tunnel, next to the
/// syscalls they make).
public protocol Selector: AnyObject {
    func add(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError)
    func modify(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError)
    /// Only needed for a descriptor that stays open; closing one removes it by itself.
    func remove(_ fd: CInt) throws(IOError)
    /// For descriptors someone else may already have closed (libcurl's): never fails.
    func removeIfPresent(_ fd: CInt)
    /// Waits up to `timeout` ms (-1: until something is ready); returns how many reports it wrote.
    func wait(into reports: UnsafeMutableBufferPointer<EpollReport>, timeout: CInt) throws(IOError) -> Int
}

/// The `Selector` over one epoll instance, which it owns.
public final class EpollSelector: Selector {
    private let epoll: Epoll

    public init() throws(IOError) { epoll = try Epoll() }

    public func add(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError) {
        try epoll.add(fd, events: events, token: token)
    }

    public func modify(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError) {
        try epoll.modify(fd, events: events, token: token)
    }

    public func remove(_ fd: CInt) throws(IOError) { try epoll.remove(fd) }

    public func removeIfPresent(_ fd: CInt) { epoll.removeIfPresent(fd) }

    public func wait(into reports: UnsafeMutableBufferPointer<EpollReport>, timeout: CInt) throws(IOError) -> Int {
        try epoll.wait(into: reports, timeout: timeout)
    }
}
