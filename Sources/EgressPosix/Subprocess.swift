import CEgressShims
import Glibc

/// A pipe for a child process, owning both ends until each is closed (by `closeRead`,
/// `closeWrite` or `deinit`). Both ends are close-on-exec (a child sees only the ends it is
/// handed through `ChildProcess.spawn`'s `descriptors`); only our end is non-blocking (read
/// with `poll`), because the child's end shares the flag and a runner does blocking I/O.
public struct ChildPipe: ~Copyable, Sendable {
    public private(set) var readEnd: CInt
    public private(set) var writeEnd: CInt

    /// Which end this process keeps.
    public enum End: CInt, Sendable { case read = 0, write = 1 }

    public init(ours: End) throws(IOError) {
        var fds: [CInt] = [-1, -1]
        _ = try Syscall.value("pipe2") { Int(cegress_pipe_for_child(&fds, ours.rawValue)) }
        readEnd = fds[0]
        writeEnd = fds[1]
    }

    deinit {
        if readEnd >= 0 { _ = Glibc.close(readEnd) }
        if writeEnd >= 0 { _ = Glibc.close(writeEnd) }
    }

    /// Closes our write end: once the child has spawned, so the reader sees EOF when the
    /// child's copy closes.
    public mutating func closeWrite() {
        if writeEnd >= 0 { _ = Glibc.close(writeEnd) }
        writeEnd = -1
    }

    public mutating func closeRead() {
        if readEnd >= 0 { _ = Glibc.close(readEnd) }
        readEnd = -1
    }

    /// Writes what fits now into the write end: the count written, nil when the pipe is full.
    /// A reader that has gone (EPIPE; SIGPIPE is ignored in our executables) is an error.
    public func writeAvailable(_ bytes: ArraySlice<UInt8>) throws(IOError) -> Int? {
        let descriptor = writeEnd
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(IOError) -> IOResult<Int> in
                try Syscall.call("write", wouldBlockIsValue: true) { Glibc.write(descriptor, raw.baseAddress, raw.count) }
            }
        }
        guard case .processed(let count) = try result.get() else { return nil }
        return count
    }

    /// Reads what is there now from the read end: bytes, `[]` at end of stream, nil when
    /// nothing is ready yet.
    public func readAvailable(max: Int = 65536) throws(IOError) -> [UInt8]? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max, alignment: 1)
        defer { buffer.deallocate() }
        let descriptor = readEnd
        guard case .processed(let count) = try Syscall.call("read", wouldBlockIsValue: true, { Glibc.read(descriptor, buffer.baseAddress, max) })
        else { return nil }
        return Array(buffer.prefix(count))
    }
}

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(CInt)
    case signalled(CInt)

    public var description: String {
        switch self {
        case .exited(let code): "exited with \(code)"
        case .signalled(let signal): "killed by signal \(signal)"
        }
    }
}

/// A child process this process started and must reap: waited for exactly once, by `wait`
/// or, if its owner is dropped first, killed and reaped in `deinit` so no zombie and no
/// orphan outlives its owner. Started with posix_spawn (not Foundation's Process, which
/// offers no control over the child's descriptors or signal mask). Owns a pidfd
/// (`exitDescriptor`) that turns readable when the child exits, so an exit can be awaited
/// in the same poll or epoll as the child's pipes.
public struct ChildProcess: ~Copyable, Sendable {
    public let pid: pid_t
    /// Readable once the child has exited; -1 if the kernel refused a pidfd.
    public let exitDescriptor: CInt
    private var reaped = false

    private init(pid: pid_t) {
        self.pid = pid
        exitDescriptor = cegress_pidfd_open(pid)
    }

    /// Starts `executable` (searched in PATH when it has no slash) with exactly `environment`.
    /// - Parameter descriptors: child descriptor number -> a descriptor of ours to place there
    ///   (0, 1, 2 for standard streams; 3, 4 for the runner's pipes). Standard streams not
    ///   named are inherited. Everything else is close-on-exec here, so the child gets nothing more.
    /// The child starts with an empty signal mask and default dispositions: our executables
    /// block TERM/INT for their signalfd and ignore PIPE, and exec would pass both on.
    /// - Parameter directory: the child's working directory (nil: ours).
    public static func spawn(
        _ executable: String, arguments: [String], environment: [String: String], descriptors: [CInt: CInt] = [:],
        directory: String? = nil
    ) throws(IOError) -> ChildProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let directory { _ = cegress_spawn_addchdir(&actions, directory) }
        for (child, ours) in descriptors.sorted(by: { $0.key < $1.key }) {
            posix_spawn_file_actions_adddup2(&actions, ours, child)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.sorted(by: { $0.key < $1.key }).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        // posix_spawn returns the error number instead of setting errno.
        let result = posix_spawnp(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw IOError(errno: .init(rawValue: result), function: "posix_spawnp \(executable)") }
        return ChildProcess(pid: pid)
    }

    /// Sends `signal` unless the child was already reaped (its pid may be someone else's by now).
    public func signal(_ signal: CInt) {
        guard !reaped else { return }
        _ = kill(pid, signal)
    }

    /// The status if the child has ended, without blocking.
    public mutating func poll() -> ExitStatus? {
        guard !reaped else { return nil }
        var status: CInt = 0
        guard (try? Syscall.value("waitpid") { Int(waitpid(pid, &status, WNOHANG)) }) == Int(pid) else { return nil }
        reaped = true
        return Self.decode(status)
    }

    /// Blocks until the child ends.
    public mutating func wait() -> ExitStatus {
        var status: CInt = 0
        _ = try? Syscall.value("waitpid") { Int(waitpid(pid, &status, 0)) }
        reaped = true
        return Self.decode(status)
    }

    private static func decode(_ status: CInt) -> ExitStatus {
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
    }

    deinit {
        if !reaped {
            _ = kill(pid, SIGKILL)
            var status: CInt = 0
            _ = try? Syscall.value("waitpid") { Int(waitpid(pid, &status, 0)) }
        }
        if exitDescriptor >= 0 { _ = Glibc.close(exitDescriptor) }
    }
}

extension Posix {
    /// poll(2) on a few descriptors: the `revents` of each, in order (all 0 on a timeout).
    public static func poll(_ entries: [(descriptor: CInt, events: Int16)], timeoutMilliseconds: CInt) -> [Int16] {
        var fds = entries.map { pollfd(fd: $0.descriptor, events: $0.events, revents: 0) }
        _ = try? Syscall.value("poll") { Int(Glibc.poll(&fds, nfds_t(fds.count), timeoutMilliseconds)) }
        return fds.map(\.revents)
    }

    public static let readable = Int16(POLLIN)
    public static let writable = Int16(POLLOUT)

    /// What `run(_:arguments:environment:timeout:outputLimit:)` saw.
    public struct RunResult: Sendable {
        public var status: ExitStatus
        public var output: [UInt8]
        /// The child was killed at the deadline (its status then says SIGKILL).
        public var timedOut: Bool
        /// It printed more than the limit; the rest was read and dropped.
        public var truncated: Bool
    }

    /// Runs a command to completion with standard input on /dev/null, its standard output
    /// collected (up to `outputLimit` bytes) and its standard error passed through. Killed
    /// with SIGKILL once `timeout` has passed, so a hung helper (a credential plugin waiting
    /// for a browser, say) cannot stall its caller for ever. Blocks the calling thread.
    public static func run(
        _ executable: String, arguments: [String], environment: [String: String],
        timeout: Duration, outputLimit: Int = 1 << 20
    ) throws(IOError) -> RunResult {
        var reader = try ChildPipe(ours: .read)
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard devNull >= 0 else { throw IOError(errno: .init(rawValue: cegress_errno()), function: "open /dev/null") }
        defer { _ = Glibc.close(devNull) }
        var child = try ChildProcess.spawn(executable, arguments: arguments, environment: environment,
                                           descriptors: [0: devNull, 1: reader.writeEnd])
        reader.closeWrite()  // EOF then arrives when the child's copy closes

        let (seconds, attoseconds) = timeout.components
        let deadline = monotonicNanoseconds() &+ UInt64(max(0, seconds)) &* 1_000_000_000 &+ UInt64(max(0, attoseconds / 1_000_000_000))
        var collected: [UInt8] = []
        var truncated = false
        var outputOpen = true
        var status: ExitStatus?
        // Until the child has exited and its output is drained (a grandchild holding stdout
        // open does not keep us: once the child is gone, what is buffered is all we read).
        while status == nil || outputOpen {
            if outputOpen {
                while let bytes = try reader.readAvailable() {
                    if bytes.isEmpty { outputOpen = false; break }
                    let room = outputLimit - collected.count
                    if bytes.count > room { truncated = true }
                    collected += bytes.prefix(max(0, room))
                }
            }
            if status == nil { status = child.poll() }
            if status != nil { break }
            let now = monotonicNanoseconds()
            guard now < deadline else {
                child.signal(SIGKILL)
                return RunResult(status: child.wait(), output: collected, timedOut: true, truncated: truncated)
            }
            var entries = [pollfd(fd: child.exitDescriptor, events: Int16(POLLIN), revents: 0)]
            if outputOpen { entries.append(pollfd(fd: reader.readEnd, events: Int16(POLLIN), revents: 0)) }
            let wait = CInt(min(1000, (deadline - now) / 1_000_000 + 1))
            _ = try? Syscall.value("poll") { Int(Glibc.poll(&entries, nfds_t(entries.count), wait)) }
        }
        if outputOpen, let rest = try? reader.readAvailable() {
            collected += rest.prefix(max(0, outputLimit - collected.count))
        }
        return RunResult(status: status ?? .signalled(SIGKILL), output: collected, timedOut: false, truncated: truncated)
    }
}
