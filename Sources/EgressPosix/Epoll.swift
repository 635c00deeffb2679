import CEgressShims
import Glibc

/// Readiness flags as epoll reports them.
public struct EpollEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// EPOLLIN: readable (or a pending accept).
    public static let readable = EpollEvents(rawValue: CEGRESS_EPOLLIN)
    /// EPOLLOUT: writable (or a non-blocking connect finished).
    public static let writable = EpollEvents(rawValue: CEGRESS_EPOLLOUT)
    /// EPOLLERR: an error is pending on the socket.
    public static let error = EpollEvents(rawValue: CEGRESS_EPOLLERR)
    /// EPOLLHUP: both directions are closed.
    public static let hangup = EpollEvents(rawValue: CEGRESS_EPOLLHUP)
    /// EPOLLRDHUP: the peer shut down its writing half.
    public static let readHangup = EpollEvents(rawValue: CEGRESS_EPOLLRDHUP)
    /// EPOLLET: edge-triggered.
    public static let edgeTriggered = EpollEvents(rawValue: CEGRESS_EPOLLET)
}

/// One epoll report: the 64-bit token given at registration and the flags.
public typealias EpollReport = cegress_event

/// Owns an epoll instance. One per loop thread; only that thread calls `wait`, while `add`,
/// `modify` and `remove` are made by the same thread too (the loop serialises them).
public struct Epoll: ~Copyable {
    public let descriptor: CInt

    /// The corresponding C function is `epoll_create1`.
    public init() throws(IOError) {
        descriptor = CInt(try Syscall.value("epoll_create1") { Int(cegress_epoll_create()) })
    }

    deinit { _ = Glibc.close(descriptor) }

    /// The corresponding C function is `epoll_ctl` (EPOLL_CTL_ADD).
    public func add(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError) {
        _ = try Syscall.value("epoll_ctl") {
            Int(cegress_epoll_ctl(descriptor, CEGRESS_EPOLL_CTL_ADD, fd, events.rawValue, token))
        }
    }

    /// The corresponding C function is `epoll_ctl` (EPOLL_CTL_MOD).
    public func modify(_ fd: CInt, events: EpollEvents, token: UInt64) throws(IOError) {
        _ = try Syscall.value("epoll_ctl") {
            Int(cegress_epoll_ctl(descriptor, CEGRESS_EPOLL_CTL_MOD, fd, events.rawValue, token))
        }
    }

    /// The corresponding C function is `epoll_ctl` (EPOLL_CTL_DEL). Closing a descriptor also
    /// removes it, so this is only needed when the descriptor lives on.
    public func remove(_ fd: CInt) throws(IOError) {
        _ = try Syscall.value("epoll_ctl") {
            Int(cegress_epoll_ctl(descriptor, CEGRESS_EPOLL_CTL_DEL, fd, 0, 0))
        }
    }

    /// Removes a descriptor that may already be closed (EBADF, ENOENT are expected, not bugs).
    public func removeIfPresent(_ fd: CInt) {
        _ = cegress_epoll_ctl(descriptor, CEGRESS_EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for reports; `timeout` in milliseconds, -1 for none. Returns how many were written.
    /// The corresponding C function is `epoll_wait`.
    public func wait(into reports: UnsafeMutableBufferPointer<EpollReport>, timeout: CInt) throws(IOError) -> Int {
        try Syscall.value("epoll_wait") {
            Int(cegress_epoll_wait(descriptor, reports.baseAddress, CInt(reports.count), timeout))
        }
    }
}

/// Owns a non-blocking eventfd: the cross-thread doorbell of a loop.
public struct EventFd: ~Copyable, @unchecked Sendable {
    public let descriptor: CInt

    /// The corresponding C function is `eventfd`.
    public init() throws(IOError) {
        descriptor = CInt(try Syscall.value("eventfd") { Int(cegress_eventfd()) })
    }

    deinit { _ = Glibc.close(descriptor) }

    /// Rings the doorbell. Safe from any thread. A full counter (EAGAIN) already means "ringing".
    public func signal() {
        var one: UInt64 = 1
        _ = try? Syscall.call("write", wouldBlockIsValue: true) {
            Glibc.write(descriptor, &one, MemoryLayout<UInt64>.size)
        }
    }

    /// Resets the counter so the next `signal` produces a new edge.
    public func drain() {
        var value: UInt64 = 0
        _ = try? Syscall.call("read", wouldBlockIsValue: true) {
            Glibc.read(descriptor, &value, MemoryLayout<UInt64>.size)
        }
    }
}

/// Owns a non-blocking CLOCK_MONOTONIC timerfd: one per loop, armed for the earliest deadline.
public struct TimerFd: ~Copyable {
    public let descriptor: CInt

    /// The corresponding C function is `timerfd_create`.
    public init() throws(IOError) {
        descriptor = CInt(try Syscall.value("timerfd_create") { Int(cegress_timerfd_create()) })
    }

    deinit { _ = Glibc.close(descriptor) }

    /// Arms for an absolute monotonic deadline (nanoseconds); 0 disarms.
    /// The corresponding C function is `timerfd_settime`.
    public func arm(deadline: UInt64) throws(IOError) {
        _ = try Syscall.value("timerfd_settime") { Int(cegress_timerfd_set_absolute(descriptor, deadline)) }
    }

    public func drain() {
        var value: UInt64 = 0
        _ = try? Syscall.call("read", wouldBlockIsValue: true) {
            Glibc.read(descriptor, &value, MemoryLayout<UInt64>.size)
        }
    }
}

/// Owns a non-blocking signalfd, so signals arrive as readiness on a loop instead of
/// interrupting arbitrary threads. The signals must be blocked in every thread first
/// (`Signals.block`, called before any thread starts).
public struct SignalFd: ~Copyable {
    public let descriptor: CInt

    /// The corresponding C function is `signalfd`.
    public init(signals: [CInt]) throws(IOError) {
        descriptor = CInt(try Syscall.value("signalfd") { Int(cegress_signalfd(signals, CInt(signals.count))) })
    }

    deinit { _ = Glibc.close(descriptor) }

    /// The next pending signal number, or nil when none is pending.
    public func next() -> CInt? {
        let signal = cegress_signalfd_read(descriptor)
        return signal > 0 ? signal : nil
    }
}

/// Process-wide signal set-up.
public enum Signals {
    public static let terminate = SIGTERM
    public static let interrupt = SIGINT
    public static let hangup = SIGHUP
    /// The signals a server handles through its loop: drain (TERM, INT) and reload (HUP).
    public static let lifecycle: [CInt] = [SIGTERM, SIGINT, SIGHUP]

    /// Blocks the given signals in the calling thread and every thread it creates afterwards,
    /// and ignores SIGPIPE. Call first thing in `main`, before any thread exists.
    public static func block(_ signals: [CInt]) {
        _ = cegress_block_signals(signals, CInt(signals.count))
        _ = cegress_ignore_sigpipe()
    }
}

/// Owns a non-blocking inotify instance watching directories (config hot reload).
public struct Inotify: ~Copyable {
    public let descriptor: CInt

    /// The corresponding C function is `inotify_init1`.
    public init() throws(IOError) {
        descriptor = CInt(try Syscall.value("inotify_init1") { Int(cegress_inotify_init()) })
    }

    deinit { _ = Glibc.close(descriptor) }

    /// Watches a directory's entries. The corresponding C function is `inotify_add_watch`.
    public func watchDirectory(_ path: String) throws(IOError) {
        _ = try Syscall.value("inotify_add_watch") { Int(cegress_inotify_watch_directory(descriptor, path)) }
    }

    /// Discards pending events; true if there were any.
    public func drain() -> Bool { cegress_inotify_drain(descriptor) == 1 }
}
