import CEgressShims
import Glibc
import SystemPackage

/// Owns one non-blocking TCP socket descriptor. `~Copyable`, so exactly one owner can close it;
/// `deinit` closes it if the owner did not, which makes an early return or a thrown error on an
/// I/O path unable to leak a descriptor.
///
/// The raw descriptor is readable (`descriptor`) only for registering with epoll; nothing
/// outside this module performs I/O with it. `close()` sets it to -1, after which any I/O
/// call traps on EBADF: owners check `isOpen` first.
public struct Socket: ~Copyable {
    public private(set) var descriptor: CInt

    /// Adopts an already open descriptor; the new value owns it.
    public init(adopting descriptor: CInt) {
        self.descriptor = descriptor
    }

    /// A new non-blocking, close-on-exec TCP socket. The corresponding C function is `socket`.
    public static func tcp(family: CInt) throws(IOError) -> Socket {
        let fd = try Syscall.value("socket") { Int(cegress_socket(family)) }
        return Socket(adopting: CInt(fd))
    }

    deinit {
        // Never retried on EINTR: the descriptor is released either way (see close(2), Linux notes).
        if descriptor >= 0 { _ = Glibc.close(descriptor) }
    }

    public var isOpen: Bool { descriptor >= 0 }

    /// Closes now (idempotent). The corresponding C function is `close`.
    public mutating func close() {
        guard descriptor >= 0 else { return }
        _ = Glibc.close(descriptor)
        descriptor = -1
    }

    /// A placeholder that owns nothing (for owners whose socket comes later).
    public static var closed: Socket { Socket(adopting: -1) }

    public func setOption(level: CInt, name: CInt, value: CInt) throws(IOError) {
        var value = value
        _ = try Syscall.value("setsockopt") {
            Int(setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<CInt>.size)))
        }
    }

    /// Disables Nagle: a tunnel relays what it reads at once, and small TLS records must not wait.
    public func setNoDelay() throws(IOError) {
        try setOption(level: CInt(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
    }

    /// The corresponding C function is `bind`.
    public func bind(to address: SocketAddress) throws(IOError) {
        _ = try Syscall.value("bind") {
            address.withSockAddr { Int(Glibc.bind(descriptor, $0, $1)) }
        }
    }

    /// The corresponding C function is `listen`.
    public func listen(backlog: CInt) throws(IOError) {
        _ = try Syscall.value("listen") { Int(Glibc.listen(descriptor, backlog)) }
    }

    /// Accepts one pending connection as a non-blocking socket; `nil` when the backlog is empty.
    /// The corresponding C function is `accept4`.
    public func accept(peer: inout SocketAddress?) throws(IOError) -> Socket? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try Syscall.call("accept4", wouldBlockIsValue: true) {
            withUnsafeMutablePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Int(cegress_accept4(descriptor, $0, &length))
                }
            }
        }
        switch result {
        case .wouldBlock: return nil
        case .processed(let fd):
            peer = SocketAddress(storage: storage, length: length)
            return Socket(adopting: CInt(fd))
        }
    }

    /// Starts a non-blocking connect: `true` when already connected, `false` when in progress
    /// (completion is reported as writability, then `pendingError()`).
    /// The corresponding C function is `connect`.
    public func connect(to address: SocketAddress) throws(IOError) -> Bool {
        do {
            _ = try Syscall.value("connect") {
                address.withSockAddr { Int(Glibc.connect(descriptor, $0, $1)) }
            }
            return true
        } catch where error.errno == .nowInProgress {
            return false
        }
    }

    /// The socket's pending error (SO_ERROR), cleared by reading it; `nil` when none.
    public func pendingError() -> Errno? {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        let result = getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &value, &length)
        if result == -1 { return Errno(rawValue: cegress_errno()) }
        return value == 0 ? nil : Errno(rawValue: value)
    }

    /// Reads into `buffer`: `.processed(0)` is end of stream (the peer's FIN).
    /// The corresponding C function is `read`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(IOError) -> IOResult<Int> {
        try Syscall.call("read", wouldBlockIsValue: true) {
            Glibc.read(descriptor, buffer.baseAddress, buffer.count)
        }
    }

    /// Writes from `buffer` without raising SIGPIPE. The corresponding C function is `send`.
    public func write(from buffer: UnsafeRawBufferPointer) throws(IOError) -> IOResult<Int> {
        try Syscall.call("send", wouldBlockIsValue: true) {
            Glibc.send(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL))
        }
    }

    /// Whether the peer may still send after `discardInput`.
    public enum InputState: Sendable, Equatable {
        /// Nothing more to read now; the peer has not closed.
        case open
        /// End of stream or an error: nothing more will come.
        case closed
    }

    /// Reads and throws away everything the peer has sent so far (a lingering close: closing
    /// with unread bytes would reset the connection and destroy a reply still in flight).
    /// Uses a stack scratch area, so it allocates nothing.
    public func discardInput() -> InputState {
        withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 16) { scratch in
            while true {
                switch try? read(into: scratch) {
                case .wouldBlock?: return .open
                case .processed(let count)? where count > 0: continue
                default: return .closed
                }
            }
        }
    }

    /// Half-closes our sending direction (the peer reads EOF).
    /// The corresponding C function is `shutdown`.
    public func shutdownWrite() throws(IOError) {
        _ = try Syscall.value("shutdown") { Int(Glibc.shutdown(descriptor, Int32(SHUT_WR))) }
    }

    public func localAddress() throws(IOError) -> SocketAddress {
        try address("getsockname", getsockname)
    }

    private func address(
        _ name: StaticString,
        _ call: (CInt, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt
    ) throws(IOError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try Syscall.value(name) {
            withUnsafeMutablePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Int(call(descriptor, $0, &length)) }
            }
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// A bound, listening, non-blocking TCP socket with SO_REUSEADDR (and SO_REUSEPORT when
    /// asked, so every loop can own a listener on the same port and the kernel spreads accepts).
    public static func listening(on address: SocketAddress, reusePort: Bool, backlog: CInt = 4096)
        throws(IOError) -> Socket
    {
        let socket = try Socket.tcp(family: address.family)
        try socket.setOption(level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        if reusePort { try socket.setOption(level: SOL_SOCKET, name: SO_REUSEPORT, value: 1) }
        if address.family == AF_INET6 { try socket.setOption(level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, value: 1) }
        try socket.bind(to: address)
        try socket.listen(backlog: backlog)
        return socket
    }
}


/// One descriptor held in reserve (open on /dev/null) so that, when the process runs out of
/// descriptors, it can still accept a client just to tell it 503 instead of leaving it hanging
/// in the backlog: release the spare, accept, answer, close, take the spare again.
public struct SpareDescriptor: ~Copyable {
    private var descriptor: CInt = -1

    public init() { restore() }

    deinit { if descriptor >= 0 { _ = Glibc.close(descriptor) } }

    public var isHeld: Bool { descriptor >= 0 }

    /// Gives the descriptor back to the kernel.
    public mutating func release() {
        if descriptor >= 0 { _ = Glibc.close(descriptor) }
        descriptor = -1
    }

    /// Takes a descriptor again (fails quietly while the process is still out of them).
    public mutating func restore() {
        guard descriptor < 0 else { return }
        descriptor = open("/dev/null", O_RDONLY | O_CLOEXEC)
    }
}

/// A non-blocking pipe used as a splice(2) buffer between two sockets, so relayed bytes stay
/// in the kernel. A class (not `~Copyable`) because pools keep them in arrays; it owns both
/// descriptors and closes them in `deinit`.
public final class SplicePipe {
    let readEnd: CInt
    let writeEnd: CInt

    /// The corresponding C functions are `pipe2` and `fcntl(F_SETPIPE_SZ)`.
    public init(capacity: Int) throws(IOError) {
        var fds: [CInt] = [-1, -1]
        _ = try Syscall.value("pipe2") { Int(cegress_pipe2(&fds)) }
        readEnd = fds[0]
        writeEnd = fds[1]
        _ = cegress_set_pipe_size(writeEnd, CInt(capacity))  // best effort: the default is 64 KiB
    }

    deinit {
        _ = Glibc.close(readEnd)
        _ = Glibc.close(writeEnd)
    }
}

extension Socket {
    /// Moves up to `count` bytes from this socket into `pipe`: `.processed(0)` is end of stream.
    /// The corresponding C function is `splice`.
    public func splice(into pipe: SplicePipe, count: Int) throws(IOError) -> IOResult<Int> {
        try Syscall.call("splice", wouldBlockIsValue: true) {
            cegress_splice(descriptor, pipe.writeEnd, count, CEGRESS_SPLICE_F_MOVE | CEGRESS_SPLICE_F_NONBLOCK)
        }
    }

    /// Moves up to `count` bytes from `pipe` into this socket. The corresponding C function is `splice`.
    public func splice(from pipe: SplicePipe, count: Int) throws(IOError) -> IOResult<Int> {
        try Syscall.call("splice", wouldBlockIsValue: true) {
            cegress_splice(pipe.readEnd, descriptor, count, CEGRESS_SPLICE_F_MOVE | CEGRESS_SPLICE_F_NONBLOCK)
        }
    }
}

/// The five calls a relay makes on each side of a tunnel, as a protocol so the relay's driver
/// can be run against a scripted peer in tests (`TestSupport.ScriptedStream`) with no kernel
/// behind it. `Socket` is the production conformer; generic callers are specialised for it,
/// so the hot path pays no dynamic dispatch.
///
/// The results mean what they mean for `Socket`: `.processed(0)` from a read or a splice into
/// a pipe is end of stream; `.wouldBlock` ends a burst on an edge-triggered loop; a thrown
/// error is a hard failure (reset, broken pipe).
public protocol StreamEndpoint: ~Copyable {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(IOError) -> IOResult<Int>
    func write(from buffer: UnsafeRawBufferPointer) throws(IOError) -> IOResult<Int>
    func splice(into pipe: SplicePipe, count: Int) throws(IOError) -> IOResult<Int>
    func splice(from pipe: SplicePipe, count: Int) throws(IOError) -> IOResult<Int>
    func shutdownWrite() throws(IOError)
}

extension Socket: StreamEndpoint {}
