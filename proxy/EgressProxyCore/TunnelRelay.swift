import EgressLoop
import EgressPosix

/// One direction's bytes in flight: in a pooled buffer while the direction has moved little,
/// in a pooled splice pipe once it has moved `TunnelRelay.spliceThreshold` (bulk bytes then
/// never enter user space). At most one of the two holds bytes: a pipe is taken only after
/// the buffer is drained and returned, and how many bytes sit in the pipe is the relay
/// machine's `pending` count (kept once, there, not beside it).
struct RelayChannel {
    var buffer: IOBuffer?
    var pipe: SplicePipe?

    /// Returns both to their pools; a pipe that may still hold bytes is discarded instead,
    /// so no tunnel ever reads another's leftovers.
    mutating func release(pending: Int, loop: EventLoop) {
        if let buffer { loop.buffers.release(buffer) }
        if let pipe {
            // A held buffer means the pipe (if any) is empty; otherwise `pending` is in it.
            if pending == 0 || buffer != nil { loop.pipes.release(pipe) } else { loop.pipes.discard(pipe) }
        }
        buffer = nil
        pipe = nil
    }

    mutating func releaseBuffer(loop: EventLoop) {
        if let buffer { loop.buffers.release(buffer) }
        buffer = nil
    }
}

/// The established part of a tunnel: performs `RelayStateMachine`'s actions on the two
/// sockets until it waits or closes. The sockets stay the tunnel's (borrowed per call);
/// bytes written are counted through the tunnel's recorder into its loop's stats.
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

    /// The sockets and pools `drive` works with: the tunnel's, for the length of one call.
    struct Environment {
        var loop: EventLoop
        var useSplice: Bool
    }

    init(now: Instant) { lastActivity = now }

    /// Puts each direction's first bytes in place for `head`, then starts the machine. CONNECT:
    /// our 200 reply, then anything a parent proxy sent after its own reply (left in `down`),
    /// with the client's early bytes in `up`. Forwarding: the rewritten head and the body
    /// bytes already read, and only those: whatever the client sent after the body (a
    /// pipelined second request) was never decided on, so it never leaves.
    /// - Returns: the bytes of our own reply at the front of `down` (not the destination's,
    ///   so not counted), or a refusal when the rewritten head and body do not fit a buffer.
    mutating func begin(for head: RequestHead, now: Instant, loop: EventLoop) -> Result<Int, TunnelAdmission.Refusal> {
        let early = down.buffer
        down.buffer = nil
        var replyBytes = 0
        var budget: Int?
        switch head.kind {
        case .connect:
            let reply = loop.buffers.acquire()
            ProxyResponse.connectEstablished.withUnsafeBytes { _ = reply.append($0) }
            replyBytes = reply.pendingCount
            if let early {
                _ = reply.append(early.pending)  // at most `ParentReply.limit`, so it fits
                loop.buffers.release(early)
            }
            down.buffer = reply
        case .forward(let method, let authority, let path):
            let rewritten = ForwardRequest.serialize(head, method: method, authority: authority, path: path)
            let body = (try? ForwardRequest.bodyLength(head).get()) ?? 0
            let buffer = loop.buffers.acquire()
            rewritten.withUnsafeBytes { _ = buffer.append($0) }
            let wanted = min(up.buffer?.pendingCount ?? 0, body)
            let copied = up.buffer.map { buffer.append(UnsafeRawBufferPointer(rebasing: $0.pending.prefix(wanted))) } ?? 0
            up.releaseBuffer(loop: loop)
            up.buffer = buffer
            down.buffer = early
            if early?.isEmpty == true { down.releaseBuffer(loop: loop) }
            if copied < wanted { return .failure(.init(status: 431, result: .badRequest, why: "forward_head_too_large")) }
            budget = rewritten.count + body
        }
        lastActivity = now
        machine = RelayStateMachine(
            earlyBytes: up.buffer?.pendingCount ?? 0, replyBytes: down.buffer?.pendingCount ?? 0, upstreamBudget: budget)
        if up.buffer?.isEmpty == true { up.releaseBuffer(loop: loop) }
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
    mutating func flushReply(to client: borrowing Socket, loop: EventLoop) -> Flush {
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
        down.releaseBuffer(loop: loop)
        try? client.shutdownWrite()
        return .done
    }

    /// Readiness of one side, as the loop reported it.
    mutating func ready(_ side: RelayStateMachine.Side, readable: Bool, writable: Bool) {
        if readable { machine.handle(.readable(side)) }
        if writable { machine.handle(.writable(side)) }
    }

    /// Performs the machine's actions until it waits (nil) or closes.
    mutating func drive(client: borrowing Socket, upstream: borrowing Socket, in env: Environment,
                        recorder: inout TunnelRecorder, stats: inout LoopStats) -> End? {
        while true {
            switch machine.nextAction() {
            case .wait:
                return nil
            case .read(.upstream):
                if Self.read(.upstream, &up, &machine, from: client, in: env, moved: recorder.bytesUp) { lastActivity = env.loop.iterationTime }
            case .read(.downstream):
                if Self.read(.downstream, &down, &machine, from: upstream, in: env, moved: recorder.bytesDown) {
                    lastActivity = env.loop.iterationTime
                }
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
            case .releaseBuffer(let direction):
                if direction == .upstream { up.release(pending: 0, loop: env.loop) } else { down.release(pending: 0, loop: env.loop) }
            case .close(let cause):
                return cause == .completed ? .completed : .failed
            }
        }
    }

    /// Returns every buffer and pipe (the tunnel is ending).
    mutating func releaseAll(loop: EventLoop) {
        up.release(pending: machine.pending(.upstream), loop: loop)
        down.release(pending: machine.pending(.downstream), loop: loop)
    }

    /// One read (or splice) for the direction; true when it returned bytes.
    private static func read(_ direction: RelayStateMachine.Direction, _ channel: inout RelayChannel, _ machine: inout RelayStateMachine,
                             from source: borrowing Socket, in env: Environment, moved: UInt64) -> Bool {
        // The machine reads only when nothing is pending, so any buffer here is empty.
        let result: IOResult<Int>
        do {
            if env.useSplice, moved >= spliceThreshold, let pipe = pipe(&channel, loop: env.loop) {
                result = try source.splice(into: pipe, count: min(machine.readLimit(direction) ?? Int.max, env.loop.pipes.capacity))
            } else {
                let buffer = channel.buffer ?? env.loop.buffers.acquire()
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

    /// The channel's pipe (taken from the pool if needed) once its buffer is drained and
    /// released; nil while a buffer still holds bytes or when no pipe can be had (then
    /// buffers serve, and the next read tries again).
    private static func pipe(_ channel: inout RelayChannel, loop: EventLoop) -> SplicePipe? {
        if let buffer = channel.buffer {
            guard buffer.isEmpty else { return nil }
            channel.releaseBuffer(loop: loop)
        }
        if channel.pipe == nil { channel.pipe = loop.pipes.acquire() }
        return channel.pipe
    }

    private static func write(_ direction: RelayStateMachine.Direction, _ channel: RelayChannel, _ machine: inout RelayStateMachine,
                              to sink: borrowing Socket, recorder: inout TunnelRecorder, stats: inout LoopStats) {
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
