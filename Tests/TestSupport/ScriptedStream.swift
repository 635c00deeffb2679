import EgressPosix
import SystemPackage

/// What the pipes between scripted peers hold. A relay splices from one peer into a pipe and
/// from the pipe into the other peer; the pipe itself is a real (pooled) `SplicePipe`, but
/// scripted peers never touch its descriptors: the bytes "in" it are kept here, by identity,
/// so a test can check that what came out of a pipe is what went in, in order. The wire keeps
/// every pipe it has seen alive, so a discarded pipe's address is never reused by a new one
/// (which would make a fresh pipe look as if it held the old one's bytes).
public final class ScriptedWire {
    private var inPipes: [ObjectIdentifier: (pipe: SplicePipe, bytes: [UInt8])] = [:]

    public init() {}

    /// Bytes spliced into `pipe` and not yet spliced out.
    public func contents(of pipe: SplicePipe) -> [UInt8] { inPipes[ObjectIdentifier(pipe)]?.bytes ?? [] }

    fileprivate func put(_ bytes: ArraySlice<UInt8>, into pipe: SplicePipe) {
        inPipes[ObjectIdentifier(pipe), default: (pipe, [])].bytes.append(contentsOf: bytes)
    }

    fileprivate func take(upTo count: Int, from pipe: SplicePipe) -> [UInt8] {
        let held = contents(of: pipe)
        let taken = Array(held.prefix(count))
        inPipes[ObjectIdentifier(pipe)] = (pipe, Array(held.dropFirst(taken.count)))
        return taken
    }
}

/// One side of a tunnel with no kernel behind it: reads and splices into a pipe consume
/// `inputs` in order, writes and splices from a pipe are answered from `outputs` in order,
/// and every call is logged. Used to drive the relay's real driver (`TunnelRelay`) through
/// interleavings a kernel will not produce on demand: EAGAIN after part of a write, a reset
/// after the 200, a full socket for as long as the test wants.
///
/// Not thread-safe: a test creates, drives and inspects it on one thread.
public final class ScriptedStream: StreamEndpoint {
    /// What the next read (or splice into a pipe) returns.
    public enum Input: Equatable, Sendable {
        /// Bytes the peer sent; a read smaller than the chunk leaves the rest for the next.
        case bytes([UInt8])
        case wouldBlock
        /// The peer's FIN (every read after it returns end of stream too).
        case eof
        /// ECONNRESET.
        case reset
    }

    /// How the next write (or splice from a pipe) is answered.
    public enum Output: Equatable, Sendable {
        /// Takes at most this many bytes.
        case accept(Int)
        case wouldBlock
        /// EPIPE: the peer is gone.
        case reset
    }

    /// One call the relay made, for asserting on order (backpressure: no read while full).
    public enum Call: Equatable, Sendable {
        case read, write, spliceIn, spliceOut, shutdownWrite
    }

    public let name: String
    private let wire: ScriptedWire
    /// Consumed front first; empty means nothing more has arrived (`.wouldBlock`).
    public var inputs: [Input]
    /// Consumed front first; empty means the socket takes everything.
    public var outputs: [Output]
    public private(set) var received: [UInt8] = []
    public private(set) var calls: [Call] = []
    private var sawEOF = false

    public init(_ name: String, wire: ScriptedWire, inputs: [Input] = [], outputs: [Output] = []) {
        self.name = name
        self.wire = wire
        self.inputs = inputs
        self.outputs = outputs
    }

    /// Times the relay called `shutdownWrite` (passed a FIN on to this peer).
    public var shutdowns: Int { calls.filter { $0 == .shutdownWrite }.count }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(IOError) -> IOResult<Int> {
        calls.append(.read)
        return try nextInput(upTo: buffer.count, function: "read") { bytes in
            buffer.copyBytes(from: bytes)
        }
    }

    public func write(from buffer: UnsafeRawBufferPointer) throws(IOError) -> IOResult<Int> {
        calls.append(.write)
        return try nextOutput(offered: buffer.count, function: "send") { count in
            received.append(contentsOf: buffer.prefix(count))
        }
    }

    public func splice(into pipe: SplicePipe, count: Int) throws(IOError) -> IOResult<Int> {
        calls.append(.spliceIn)
        return try nextInput(upTo: count, function: "splice") { bytes in wire.put(bytes, into: pipe) }
    }

    public func splice(from pipe: SplicePipe, count: Int) throws(IOError) -> IOResult<Int> {
        calls.append(.spliceOut)
        let available = wire.contents(of: pipe).count
        return try nextOutput(offered: min(count, available), function: "splice") { taken in
            received.append(contentsOf: wire.take(upTo: taken, from: pipe))
        }
    }

    public func shutdownWrite() throws(IOError) {
        calls.append(.shutdownWrite)
    }

    private func nextInput(upTo limit: Int, function: String, deliver: (ArraySlice<UInt8>) -> Void) throws(IOError)
        -> IOResult<Int>
    {
        if sawEOF { return .processed(0) }
        guard let next = inputs.first else { return .wouldBlock }
        switch next {
        case .wouldBlock:
            inputs.removeFirst()
            return .wouldBlock
        case .eof:
            inputs.removeFirst()
            sawEOF = true
            return .processed(0)
        case .reset:
            inputs.removeFirst()
            throw IOError(errno: .connectionReset, function: function)
        case .bytes(let bytes):
            let count = min(limit, bytes.count)
            deliver(bytes[..<count])
            if count == bytes.count { inputs.removeFirst() } else { inputs[0] = .bytes(Array(bytes[count...])) }
            return .processed(count)
        }
    }

    private func nextOutput(offered: Int, function: String, accept: (Int) -> Void) throws(IOError) -> IOResult<Int> {
        guard let next = outputs.first else {
            accept(offered)
            return .processed(offered)
        }
        switch next {
        case .wouldBlock:
            outputs.removeFirst()
            return .wouldBlock
        case .reset:
            outputs.removeFirst()
            throw IOError(errno: .brokenPipe, function: function)
        case .accept(let limit):
            outputs.removeFirst()
            let count = min(limit, offered)
            accept(count)
            return .processed(count)
        }
    }
}
