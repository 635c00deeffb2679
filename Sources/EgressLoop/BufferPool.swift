import EgressPosix

/// A fixed-size byte buffer with a read and a write index: bytes in `readIndex..<writeIndex`
/// are pending. Class, so pooled instances are reused without copying; confined to one loop.
public final class IOBuffer {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public var readIndex = 0
    public var writeIndex = 0

    init(capacity: Int) {
        self.capacity = capacity
        base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    deinit { base.deallocate() }

    public var pendingCount: Int { writeIndex - readIndex }
    public var freeCount: Int { capacity - writeIndex }
    public var isEmpty: Bool { readIndex == writeIndex }

    public var pending: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + readIndex, count: writeIndex - readIndex)
    }

    public var free: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + writeIndex, count: capacity - writeIndex)
    }

    public func reset() {
        readIndex = 0
        writeIndex = 0
    }

    /// Appends bytes (callers ensure they fit; excess is dropped and reported).
    @discardableResult
    public func append(_ bytes: UnsafeRawBufferPointer) -> Int {
        let count = min(bytes.count, freeCount)
        if count > 0, let source = bytes.baseAddress {
            (base + writeIndex).copyMemory(from: source, byteCount: count)
            writeIndex += count
        }
        return count
    }

    /// Moves pending bytes to the front so `free` is as large as possible.
    public func compact() {
        guard readIndex > 0 else { return }
        let count = pendingCount
        if count > 0 { base.copyMemory(from: base + readIndex, byteCount: count) }
        readIndex = 0
        writeIndex = count
    }
}

/// A per-loop pool of equal-size buffers. Tunnels take a buffer only while bytes are in
/// flight and give it back when drained, so an idle tunnel holds none. Confined to its loop
/// (no locking); counts are read cross-thread only through the loop's counters.
public final class BufferPool {
    public let bufferSize: Int
    public let maxRetained: Int
    private var free: [IOBuffer] = []
    public private(set) var inUse = 0

    public init(bufferSize: Int = 32 * 1024, maxRetained: Int = 256) {
        self.bufferSize = bufferSize
        self.maxRetained = maxRetained
        free.reserveCapacity(maxRetained)
    }

    public func acquire() -> IOBuffer {
        inUse += 1
        return free.popLast() ?? IOBuffer(capacity: bufferSize)
    }

    public func release(_ buffer: IOBuffer) {
        inUse -= 1
        buffer.reset()
        if free.count < maxRetained { free.append(buffer) }
    }

}

/// A per-loop pool of splice pipes, the kernel-side counterpart of `BufferPool`: a tunnel
/// direction holds a pipe only while bytes sit in it. Pipes come back empty (the relay
/// tracks exactly how many bytes are inside), so any pooled pipe can serve any tunnel.
public final class PipePool {
    public let capacity: Int
    public let maxRetained: Int
    private var free: [SplicePipe] = []
    public private(set) var inUse = 0
    /// Pipes this loop may hold, in use plus pooled (the process's descriptor budget, see
    /// `DescriptorBudget`); past it `acquire` says no and the tunnel relays through buffers.
    public var maxPipes = Int.max

    public init(capacity: Int = 64 * 1024, maxRetained: Int = 256) {
        self.capacity = capacity
        self.maxRetained = maxRetained
    }

    /// A pipe, or nil when none can be created (descriptor exhaustion): the caller falls back to buffers.
    public func acquire() -> SplicePipe? {
        if let pipe = free.popLast() {
            inUse += 1
            return pipe
        }
        guard inUse + free.count < maxPipes, let pipe = try? SplicePipe(capacity: capacity) else { return nil }
        inUse += 1
        return pipe
    }

    /// Returns an empty pipe to the pool.
    public func release(_ pipe: SplicePipe) {
        inUse -= 1
        if free.count < maxRetained { free.append(pipe) }
    }

    /// Forgets a pipe that may still hold bytes (a tunnel that failed mid-stream); it closes
    /// when the last reference goes, and never serves another tunnel.
    public func discard(_ pipe: SplicePipe) {
        inUse -= 1
    }
}
