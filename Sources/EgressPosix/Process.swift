import CEgressShims
import Glibc

/// Clocks, threads, name resolution and /proc: the remaining Glibc calls, kept here so the
/// rest of the package never imports Glibc for I/O.
public enum Posix {
    /// CLOCK_MONOTONIC in nanoseconds.
    public static func monotonicNanoseconds() -> UInt64 { cegress_monotonic_ns() }

    /// CLOCK_REALTIME in nanoseconds since the epoch.
    public static func wallClockNanoseconds() -> UInt64 { cegress_realtime_ns() }

    /// Caps glibc's malloc arenas (it makes up to 8 per core, each keeping its own free memory),
    /// unless the operator chose with `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES`. Call before the
    /// first threads start. Controllers, whose allocations are small and many, trade a little
    /// lock contention for a much smaller resident set.
    public static func limitMallocArenas(_ arenas: Int) {
        guard getenv("MALLOC_ARENA_MAX") == nil, getenv("GLIBC_TUNABLES") == nil else { return }
        _ = cegress_malloc_arena_max(Int32(clamping: arenas))
    }

    /// Ends the process with `status`, running exit handlers and flushing stdio (what
    /// Foundation's `exit` did; GatewayOps no longer imports Foundation, so the proxy links none).
    public static func exit(_ status: Int32) -> Never { Glibc.exit(status) }

    /// Returns free heap pages to the kernel (glibc keeps them after a burst, such as a thousand
    /// sessions opening at once, so the resident set would stay at the burst's peak).
    public static func releaseFreeMemory() { _ = cegress_malloc_trim() }

    /// Starts a detached-style OS thread running `body`; returns once the thread exists.
    /// Our loops run on their own pthreads, outside Swift concurrency, like NIO's.
    public static func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) throws(IOError) {
        /// Carries the thread's name and body through pthread_create's void pointer.
        final class Box {
            let name: String
            let body: @Sendable () -> Void
            init(_ name: String, _ body: @escaping @Sendable () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let box = Unmanaged.passRetained(Box(name, body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let box = Unmanaged<Box>.fromOpaque(argument).takeRetainedValue()
            box.name.withCString { cegress_set_thread_name($0) }
            box.body()
            return nil
        }, box)
        if result != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw IOError(errno: .init(rawValue: result), function: "pthread_create")
        }
        pthread_detach(thread)
    }

    /// A name resolution failure, with getaddrinfo's own message (for logs, never for clients).
    public struct ResolveError: Error, Sendable, CustomStringConvertible {
        public let code: CInt
        public var description: String { String(cString: gai_strerror(code)) }
    }

    /// Resolves a host name to TCP addresses with getaddrinfo. Blocking: call it off the loop.
    public static func resolve(host: String, port: UInt16) throws(ResolveError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = CInt(CEGRESS_SOCK_STREAM)
        // No AI_ADDRCONFIG: every address of the name is checked against the policy, and one
        // this host cannot reach fails fast at connect and the next candidate is tried.
        var list: UnsafeMutablePointer<addrinfo>?
        let code = getaddrinfo(host, nil, &hints, &list)
        if code != 0 { throw ResolveError(code: code) }
        defer { freeaddrinfo(list) }
        var result: [SocketAddress] = []
        var cursor = list
        while let entry = cursor {
            if let sockaddr = entry.pointee.ai_addr,
                entry.pointee.ai_family == AF_INET || entry.pointee.ai_family == AF_INET6
            {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: sockaddr, count: Int(entry.pointee.ai_addrlen)))
                }
                let address = SocketAddress(storage: storage, length: entry.pointee.ai_addrlen).withPort(port)
                if !result.contains(address) { result.append(address) }
            }
            cursor = entry.pointee.ai_next
        }
        return result
    }

    /// A whole small file (for /proc), or nil when it cannot be read.
    public static func readSmallFile(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd == -1 { return nil }
        defer { _ = Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count == -1 && cegress_errno() == EINTR { continue }
            if count <= 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return bytes
    }

    /// Number of entries in /proc/self/fd (the open descriptor count), or nil.
    public static func openDescriptorCount() -> Int? {
        guard let directory = opendir("/proc/self/fd") else { return nil }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0.first ?? 0 }
            if first != UInt8(ascii: ".") { count += 1 }
        }
        return max(0, count - 1)  // the directory stream's own descriptor
    }

    /// The soft RLIMIT_NOFILE.
    public static func maxDescriptors() -> Int? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        return Int(limit.rlim_cur)
    }

    /// Raises the soft RLIMIT_NOFILE to the hard limit (a proxy holds two descriptors a tunnel).
    public static func raiseDescriptorLimit() {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// CPUs this process may run on (sched_getaffinity), at least 1.
    public static func availableCPUs() -> Int {
        Int(cegress_available_cpus())
    }

    /// Clock ticks per second for /proc/self/stat times.
    public static func clockTicksPerSecond() -> Int { Int(sysconf(Int32(_SC_CLK_TCK))) }

    /// Page size, for /proc/self/statm.
    public static func pageSize() -> Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    public static func processID() -> Int32 { getpid() }

    /// Writes a line to stderr (for logs): one write call so lines from threads do not interleave.
    public static func writeStderr(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { writeStderr($0) }
    }

    /// Writes bytes to stderr in as few write calls as the kernel allows.
    public static func writeStderr(_ bytes: UnsafeBufferPointer<UInt8>) {
        let raw = UnsafeRawBufferPointer(bytes)
        var offset = 0
        while offset < raw.count {
            let count = Glibc.write(2, raw.baseAddress.map { $0 + offset }, raw.count - offset)
            if count == -1 && cegress_errno() == EINTR { continue }
            if count <= 0 { return }
            offset += count
        }
    }
}

extension Posix {
    /// An identifier of the calling thread (pthread_self), for confinement checks.
    public static func currentThreadID() -> UInt { UInt(pthread_self()) }
}

extension Posix {
    /// An environment variable's value, or nil.
    public static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }
}

extension Posix {
    /// Every IP address configured on this host's interfaces (getifaddrs), loopback included.
    public static func localAddresses() -> [IPAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var result: [IPAddress] = []
        var cursor = list
        while let entry = cursor {
            if let address = entry.pointee.ifa_addr {
                let family = CInt(address.pointee.sa_family)
                if family == AF_INET || family == AF_INET6 {
                    var storage = sockaddr_storage()
                    let size = family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size
                    withUnsafeMutableBytes(of: &storage) { raw in
                        raw.copyMemory(from: UnsafeRawBufferPointer(start: address, count: size))
                    }
                    let ip = SocketAddress(storage: storage, length: socklen_t(size)).ip
                    if !result.contains(ip) { result.append(ip) }
                }
            }
            cursor = entry.pointee.ifa_next
        }
        return result
    }
}

extension Posix {
    /// Whether `ip` is an address of this host right now: binding a datagram socket to it
    /// succeeds exactly then (EADDRNOTAVAIL otherwise). Live, unlike a list taken at start, so
    /// an address added later counts. Any other failure (out of descriptors, a link-local
    /// address without scope, `ip_nonlocal_bind`) answers true: the caller refuses on true, so
    /// not knowing errs on the side of refusing.
    public static func isLocalAddress(_ ip: IPAddress) -> Bool {
        let address = SocketAddress(ip: ip, port: 0)
        let fd: Int
        do {
            fd = try Syscall.value("socket") { Int(Glibc.socket(address.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)) }
        } catch {
            return true
        }
        let socket = Socket(adopting: CInt(fd))
        do {
            try socket.bind(to: address)
            return true
        } catch {
            return error.errno != .addressNotAvailable
        }
    }
}

/// Writes whole small files (tests, tools). Not for the proxy's I/O paths.
public enum FileWriter {
    public static func write(_ path: String, _ bytes: [UInt8]) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if fd == -1 { return false }
        defer { _ = Glibc.close(fd) }
        return bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let count = Glibc.write(fd, raw.baseAddress.map { $0 + offset }, raw.count - offset)
                if count == -1 && cegress_errno() == EINTR { continue }
                if count <= 0 { return false }
                offset += count
            }
            return true
        }
    }
}

extension Posix {
    /// Flushes C stdio's stdout (Swift's `print` buffers when stdout is a pipe).
    public static func flushStdout() { fflush(nil) }  // nil flushes every output stream
}

extension Posix {
    /// The host name (the pod name in Kubernetes), for leader-election identities.
    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
