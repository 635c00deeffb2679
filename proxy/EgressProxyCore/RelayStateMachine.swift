/// The byte relay of one established tunnel, as a pure state machine: the driver (`Tunnel`)
/// feeds it readiness and I/O results and performs the actions it returns, so every
/// interleaving (half-close on either side first, EAGAIN mid-write, reset, early data) is
/// testable event by event without sockets.
///
/// Edge-triggered model: readiness is latched (`sourceReadable`, `sinkWritable`) until an
/// operation reports would-block. Interest never changes after registration; backpressure
/// comes from not reading a source while its direction still has bytes pending, so the
/// kernel's receive window fills and TCP pushes back on the sender.
///
/// Buffers: a direction holds a pooled buffer only while bytes are pending or its source is
/// still readable; otherwise the machine asks for `.releaseBuffer`, so an idle tunnel holds none.
///
/// Splice: once a direction has read `spliceAfter` bytes, the machine asks for `.usePipe`
/// before its next read, at a moment when nothing is pending (so the buffer it gives up is
/// empty, and bytes are never split between a buffer and a pipe). From then on `pending` is
/// what sits in the pipe: the one count of bytes in flight, whichever holds them.
public struct RelayStateMachine: Sendable {
    /// The two sockets of a tunnel.
    public enum Side: Sendable, Equatable { case client, upstream }

    /// `upstream` carries client bytes to the destination; `downstream` the reverse.
    public enum Direction: Sendable, Equatable {
        case upstream, downstream

        public var source: Side { self == .upstream ? .client : .upstream }
        public var sink: Side { self == .upstream ? .upstream : .client }
    }

    /// What the driver tells the machine: readiness, and the result of each action it performed.
    public enum Event: Sendable, Equatable {
        case readable(Side)
        case writable(Side)
        /// A read for the direction returned this many bytes (> 0).
        case didRead(Direction, Int)
        case readEOF(Direction)
        case readWouldBlock(Direction)
        case didWrite(Direction, Int)
        case writeWouldBlock(Direction)
        case didShutdown(Direction)
        /// The direction's empty buffer went back and a pipe took its place (after `.usePipe`).
        case pipeTaken(Direction)
        /// No pipe could be had (pool cap, descriptors): buffers serve until the next read
        /// returns bytes, and then the machine asks again.
        case pipeUnavailable(Direction)
        /// A hard error on either socket (reset, EPIPE, ...).
        case failed
    }

    /// What the machine asks the driver to do next.
    public enum Action: Sendable, Equatable {
        /// Read from the direction's source into its buffer (taking one from the pool if none).
        case read(Direction)
        /// Write the direction's pending bytes to its sink.
        case write(Direction)
        /// `shutdown(SHUT_WR)` on the direction's sink: pass a FIN on.
        case shutdownWrite(Direction)
        /// Return the direction's buffer or pipe to its pool (the direction is idle or done).
        case releaseBuffer(Direction)
        /// Give back the direction's (empty) buffer and take a splice pipe for its reads and
        /// writes from now on; answer `.pipeTaken` or `.pipeUnavailable`.
        case usePipe(Direction)
        /// Both directions finished, or an error: close both sockets.
        case close(CloseCause)
        /// Nothing to do until the next readiness event.
        case wait
    }

    /// Both directions finished cleanly, or an I/O error ended the tunnel.
    public enum CloseCause: Sendable, Equatable {
        case completed
        case failed
    }

    /// One direction's bookkeeping: bytes pending, latched readiness, EOF and shutdown, buffer held.
    ///
    /// Every tunnel holds two of these for its whole life, so the fields are ordered for
    /// size (Swift lays a struct out in declaration order): the words, the optional word,
    /// then the flags packed into what is left of the last word: 32 bytes.
    struct DirectionState: Sendable {
        var pending = 0
        /// Bytes read so far (what the splice threshold is measured against).
        var moved: UInt64 = 0
        /// Forwarding mode: bytes of request body still to pass on; nil = unlimited (tunnel).
        var budget: Int?
        /// Holds a buffer, or a pipe once `piped`.
        var hasBuffer = false
        var piped = false
        /// A pipe was refused since the last read that returned bytes.
        var pipeDeclined = false
        var sourceReadable = true
        var sourceEOF = false
        var sinkWritable = true
        var shutdownSent = false
    }

    /// Bytes a direction reads through buffers before it asks for a pipe; 0: never (not an
    /// optional: the tag would cost a word in every tunnel).
    private let spliceAfter: UInt64
    private var upstream = DirectionState()
    private var downstream = DirectionState()
    private var failed = false
    private var closed = false
    /// Alternates which direction goes first, so one busy direction cannot starve the other.
    private var preferDownstream = false
    /// Which side sent the first FIN (for the audit log's "who closed first").
    public private(set) var firstEOF: Side?

    /// - Parameters:
    ///   - earlyBytes: bytes already in the upstream direction's buffer (the client's data
    ///     after the request head, such as an eager TLS ClientHello).
    ///   - replyBytes: bytes already in the downstream direction's buffer (the 200 reply).
    ///   - upstreamBudget: for plain-HTTP forwarding, how many client bytes after the head
    ///     belong to this request; the client direction ends after them without a FIN upstream.
    ///   - spliceAfter: bytes a direction moves through buffers before it asks for a pipe
    ///     (small exchanges stay on buffers, where one read and one write beat two splices);
    ///     nil never splices.
    public init(earlyBytes: Int, replyBytes: Int, upstreamBudget: Int? = nil, spliceAfter: UInt64? = nil) {
        self.spliceAfter = spliceAfter.map { max(1, $0) } ?? 0
        upstream.pending = earlyBytes
        upstream.hasBuffer = earlyBytes > 0
        downstream.pending = replyBytes
        downstream.hasBuffer = replyBytes > 0
        if let upstreamBudget {
            upstream.budget = max(0, upstreamBudget - earlyBytes)
            checkBudget()
        }
    }

    private subscript(direction: Direction) -> DirectionState {
        get { direction == .upstream ? upstream : downstream }
        set {
            if direction == .upstream { upstream = newValue } else { downstream = newValue }
        }
    }

    /// How many bytes the next read of `direction` may take (the forwarding budget), or nil.
    public func readLimit(_ direction: Direction) -> Int? { self[direction].budget }

    public func pending(_ direction: Direction) -> Int { self[direction].pending }

    public func holdsBuffer(_ direction: Direction) -> Bool { self[direction].hasBuffer }

    /// True once the direction relays through a pipe (until it next goes idle).
    public func isPiped(_ direction: Direction) -> Bool { self[direction].piped }

    public mutating func handle(_ event: Event) {
        switch event {
        case .readable(let side):
            let direction: Direction = side == .client ? .upstream : .downstream
            if !self[direction].sourceEOF { self[direction].sourceReadable = true }
        case .writable(let side):
            self[side == .client ? .downstream : .upstream].sinkWritable = true
        case .didRead(let direction, let count):
            self[direction].pending += count
            self[direction].moved &+= UInt64(count)
            self[direction].pipeDeclined = false
            if let budget = self[direction].budget {
                self[direction].budget = budget - count
                checkBudget()
            }
        case .readEOF(let direction):
            self[direction].sourceEOF = true
            self[direction].sourceReadable = false
            if firstEOF == nil { firstEOF = direction.source }
        case .readWouldBlock(let direction):
            self[direction].sourceReadable = false
        case .didWrite(let direction, let count):
            precondition(count <= self[direction].pending, "wrote more than pending")
            self[direction].pending -= count
        case .writeWouldBlock(let direction):
            self[direction].sinkWritable = false
        case .didShutdown(let direction):
            self[direction].shutdownSent = true
        case .pipeTaken(let direction):
            precondition(self[direction].pending == 0, "a pipe replaces only an empty buffer")
            self[direction].piped = true
            self[direction].hasBuffer = true
        case .pipeUnavailable(let direction):
            self[direction].pipeDeclined = true
        case .failed:
            failed = true
        }
    }

    /// Forwarding: once the body budget is used up the client direction is finished, but no
    /// FIN goes upstream (the request said `Connection: close`; some servers treat a FIN as abort).
    private mutating func checkBudget() {
        guard let budget = upstream.budget, budget <= 0 else { return }
        upstream.sourceEOF = true
        upstream.sourceReadable = false
        if upstream.pending == 0 { upstream.shutdownSent = true }
    }

    /// The next thing to do. Call repeatedly (feeding each action's result back through
    /// `handle`) until it returns `.wait` or `.close`.
    public mutating func nextAction() -> Action {
        if closed { return .wait }
        if failed {
            closed = true
            return .close(.failed)
        }
        preferDownstream.toggle()
        let order: (Direction, Direction) = preferDownstream ? (.downstream, .upstream) : (.upstream, .downstream)
        if let action = step(order.0) { return action }
        if let action = step(order.1) { return action }
        if upstream.shutdownSent && downstream.shutdownSent {
            closed = true
            return .close(.completed)
        }
        return .wait
    }

    private mutating func step(_ direction: Direction) -> Action? {
        let state = self[direction]
        if state.pending > 0 {
            return state.sinkWritable ? .write(direction) : nil
        }
        // Nothing pending from here on.
        if state.budget != nil && state.sourceEOF && !state.shutdownSent {
            self[direction].shutdownSent = true  // forwarding: the request is complete
            return nil
        }
        if state.sourceReadable && !state.sourceEOF {
            if spliceAfter > 0, !state.piped, !state.pipeDeclined, state.moved >= spliceAfter {
                return .usePipe(direction)
            }
            self[direction].hasBuffer = true
            return .read(direction)
        }
        if state.sourceEOF && !state.shutdownSent {
            return .shutdownWrite(direction)
        }
        if state.hasBuffer {
            self[direction].hasBuffer = false
            self[direction].piped = false
            return .releaseBuffer(direction)
        }
        return nil
    }
}
