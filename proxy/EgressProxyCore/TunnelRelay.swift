import EgressLoop
import EgressPosix

/// Where a relay's buffers and pipes come from and go back to: its loop's pools (a test's
/// own, when the relay is driven without a loop).
struct RelayPools {
    let buffers: BufferPool
    let pipes: PipePool

    init(buffers: BufferPool, pipes: PipePool) {
        self.buffers = buffers
        self.pipes = pipes
    }

    init(_ loop: EventLoop) { self.init(buffers: loop.buffers, pipes: loop.pipes) }
}

/// One direction's bytes in flight: in a pooled buffer while the direction has moved little,
/// in a pooled splice pipe once the relay machine asks for one (`.usePipe`; bulk bytes then
/// never enter user space). At most one of the two is held: the machine asks for a pipe
/// only when nothing is pending, and the empty buffer goes back first. How many bytes sit in
/// the pipe is the machine's `pending` count (kept once, there, not beside it).
struct RelayChannel {
    var buffer: IOBuffer?
    var pipe: SplicePipe?

    /// Returns both to their pools; a pipe that may still hold bytes is discarded instead,
    /// so no tunnel ever reads another's leftovers.
    mutating func release(pending: Int, pools: RelayPools) {
        if let buffer { pools.buffers.release(buffer) }
        if let pipe {
            // A held buffer means the pipe (if any) is empty; otherwise `pending` is in it.
            if pending == 0 || buffer != nil { pools.pipes.release(pipe) } else { pools.pipes.discard(pipe) }
        }
        buffer = nil
        pipe = nil
    }

    mutating func releaseBuffer(pools: RelayPools) {
        if let buffer { pools.buffers.release(buffer) }
        buffer = nil
    }

    /// Swaps the (empty) buffer for a pipe; false when the pool has none to give.
    mutating func takePipe(pools: RelayPools) -> Bool {
        guard let pipe = pools.pipes.acquire() else { return false }
        releaseBuffer(pools: pools)
        self.pipe = pipe
        return true
    }
}

/// The established part of a tunnel: performs `RelayStateMachine`'s actions on the two
/// sockets until it waits or closes. The sockets stay the tunnel's (borrowed per call, any
/// `StreamEndpoint`, so tests drive this exact code against scripted peers); bytes written
/// are counted through the tunnel's recorder into its loop's stats.
struct TunnelRelay {
    /// Bytes a direction relays through buffers before it switches to a splice pipe: small
    /// exchanges (handshakes, API calls) stay on buffers, where one read and one write beat
    /// two splices and a pipe.
    static let spliceThreshold: UInt64 = 64 * 1024

    private(set) var machine = RelayStateMachine(earlyBytes: 0, replyBytes: 0)
    /// Client-to-destination bytes; before relaying it holds the request head and early data.
    var up = RelayChannel()
    /// Destination-to-client bytes (first the 200 reply), or our error reply when lingering.
    var down = RelayChannel()
    /// When a read last returned bytes (the idle timeout's reference).
    private(set) var lastActivity: Instant

    /// Why `drive` stopped for good.
    enum End {
        case completed, failed
    }

    /// The pools `drive` works with and the loop's clock reading for this iteration.
    struct Environment {
        var pools: RelayPools
        var now: Instant
    }

    init(now: Instant) { lastActivity = now }

    /// Puts each direction's first bytes in place for `head`, then starts the machine. CONNECT:
    /// our 200 reply, then anything a parent proxy sent after its own reply (left in `down`),
    /// with the client's early bytes in `up`. Forwarding: the rewritten head and the body
    /// bytes already read, and only those: whatever the client sent after the body (a
    /// pipelined second request) was never decided on, so it never leaves.
    /// - Returns: the bytes of our own reply at the front of `down` (not the destination's,
    ///   so not counted), or a refusal when the rewritten head and body do not fit a buffer.
    /// - Parameter splice: whether bulk bytes may move through pipes (the `splice` config key).
    mutating func begin(for head: RequestHead, now: Instant, splice: Bool, pools: RelayPools)
        -> Result<Int, TunnelAdmission.Refusal>
    {
        let early = down.buffer
        down.buffer = nil
        var replyBytes = 0
        var budget: Int?
        switch head.kind {
        case .connect:
            let reply = pools.buffers.acquire()
            ProxyResponse.connectEstablished.withUnsafeBytes { _ = reply.append($0) }
            replyBytes = reply.pendingCount
            if let early {
                _ = reply.append(early.pending)  // at most `ParentReply.limit`, so it fits
                pools.buffers.release(early)
            }
            down.buffer = reply
        case .forward(let method, let authority, let path):
            let rewritten = ForwardRequest.serialize(head, method: method, authority: authority, path: path)
            let body = (try? ForwardRequest.bodyLength(head).get()) ?? 0
            let buffer = pools.buffers.acquire()
            rewritten.withUnsafeBytes { _ = buffer.append($0) }
            let wanted = min(up.buffer?.pendingCount ?? 0, body)
            let copied = up.buffer.map { buffer.append(UnsafeRawBufferPointer(rebasing: $0.pending.prefix(wanted))) } ?? 0
            up.releaseBuffer(pools: pools)
            up.buffer = buffer
            down.buffer = early
            if early?.isEmpty == true { down.releaseBuffer(pools: pools) }
            if copied < wanted { return .failure(.init(status: 431, result: .badRequest, why: "forward_head_too_large")) }
            budget = rewritten.count + body
        }
        lastActivity = now
        machine = RelayStateMachine(
            earlyBytes: up.buffer?.pendingCount ?? 0, replyBytes: down.buffer?.pendingCount ?? 0, upstreamBudget: budget,
            spliceAfter: splice ? Self.spliceThreshold : nil)
        if up.buffer?.isEmpty == true { up.releaseBuffer(pools: pools) }
        return .success(replyBytes)
    }

    /// Progress on the reply in `down` while lingering.
    enum Flush {
        /// The socket is full; call again when it is writable.
        case pending
        /// Sent (and our FIN after it), or there was none to send.
        case done
        case failed
    }

    /// Writes what is left of our reply to the client, then shuts down our side.
    mutating func flushReply<Client: StreamEndpoint & ~Copyable>(to client: borrowing Client, pools: RelayPools) -> Flush {
        guard let buffer = down.buffer else { return .done }
        while !buffer.isEmpty {
            do {
                switch try client.write(from: buffer.pending) {
                case .wouldBlock: return .pending
                case .processed(let count): buffer.readIndex += count
                }
            } catch {
                return .failed
            }
        }
        down.releaseBuffer(pools: pools)
        try? client.shutdownWrite()
        return .done
    }

    /// Readiness of one side, as the loop reported it.
    mutating func ready(_ side: RelayStateMachine.Side, readable: Bool, writable: Bool) {
        if readable { machine.handle(.readable(side)) }
        if writable { machine.handle(.writable(side)) }
    }

    /// Performs the machine's actions until it waits (nil) or closes.
    mutating func drive<Client: StreamEndpoint & ~Copyable, Upstream: StreamEndpoint & ~Copyable>(
        client: borrowing Client, upstream: borrowing Upstream, in env: Environment,
        recorder: inout TunnelRecorder, stats: inout LoopStats
    ) -> End? {
        while true {
            switch machine.nextAction() {
            case .wait:
                return nil
            case .read(.upstream):
                if Self.read(.upstream, &up, &machine, from: client, pools: env.pools) { lastActivity = env.now }
            case .read(.downstream):
                if Self.read(.downstream, &down, &machine, from: upstream, pools: env.pools) { lastActivity = env.now }
            case .write(.upstream):
                Self.write(.upstream, up, &machine, to: upstream, recorder: &recorder, stats: &stats)
            case .write(.downstream):
                Self.write(.downstream, down, &machine, to: client, recorder: &recorder, stats: &stats)
            case .shutdownWrite(let direction):
                do {
                    if direction == .upstream { try upstream.shutdownWrite() } else { try client.shutdownWrite() }
                    machine.handle(.didShutdown(direction))
                } catch {
                    machine.handle(.failed)
                }
            case .usePipe(let direction):
                let taken = direction == .upstream ? up.takePipe(pools: env.pools) : down.takePipe(pools: env.pools)
                machine.handle(taken ? .pipeTaken(direction) : .pipeUnavailable(direction))
            case .releaseBuffer(let direction):
                if direction == .upstream { up.release(pending: 0, pools: env.pools) } else { down.release(pending: 0, pools: env.pools) }
            case .close(let cause):
                return cause == .completed ? .completed : .failed
            }
        }
    }

    /// Returns every buffer and pipe (the tunnel is ending).
    mutating func releaseAll(pools: RelayPools) {
        up.release(pending: machine.pending(.upstream), pools: pools)
        down.release(pending: machine.pending(.downstream), pools: pools)
    }

    /// One read (or splice, once the channel has a pipe) for the direction; true when it
    /// returned bytes. The machine reads only when nothing is pending, so any buffer is empty.
    private static func read<Source: StreamEndpoint & ~Copyable>(
        _ direction: RelayStateMachine.Direction, _ channel: inout RelayChannel, _ machine: inout RelayStateMachine,
        from source: borrowing Source, pools: RelayPools
    ) -> Bool {
        let result: IOResult<Int>
        do {
            if let pipe = channel.pipe {
                result = try source.splice(into: pipe, count: min(machine.readLimit(direction) ?? Int.max, pools.pipes.capacity))
            } else {
                let buffer = channel.buffer ?? pools.buffers.acquire()
                channel.buffer = buffer
                if buffer.isEmpty { buffer.reset() }
                var space = buffer.free
                if let limit = machine.readLimit(direction), limit < space.count {
                    space = UnsafeMutableRawBufferPointer(rebasing: space[0..<max(0, limit)])
                }
                result = try source.read(into: space)
                if case .processed(let count) = result { buffer.writeIndex += count }
            }
        } catch {
            machine.handle(.failed)
            return false
        }
        switch result {
        case .wouldBlock:
            machine.handle(.readWouldBlock(direction))
        case .processed(0):
            machine.handle(.readEOF(direction))
        case .processed(let count):
            machine.handle(.didRead(direction, count))
            return true
        }
        return false
    }

    private static func write<Sink: StreamEndpoint & ~Copyable>(
        _ direction: RelayStateMachine.Direction, _ channel: RelayChannel, _ machine: inout RelayStateMachine,
        to sink: borrowing Sink, recorder: inout TunnelRecorder, stats: inout LoopStats
    ) {
        let pending = machine.pending(direction)
        let result: IOResult<Int>
        do {
            if let buffer = channel.buffer, !buffer.isEmpty {
                result = try sink.write(from: buffer.pending)
                if case .processed(let count) = result { buffer.readIndex += count }
            } else if let pipe = channel.pipe, pending > 0 {
                result = try sink.splice(from: pipe, count: pending)
            } else {
                machine.handle(.failed)
                return
            }
        } catch {
            machine.handle(.failed)
            return
        }
        switch result {
        case .wouldBlock:
            machine.handle(.writeWouldBlock(direction))
        case .processed(let count):
            machine.handle(.didWrite(direction, count))
            recorder.wrote(direction, count, stats: &stats)
        }
    }
}
