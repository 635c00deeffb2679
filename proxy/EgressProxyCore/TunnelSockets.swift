import EgressLoop
import EgressPosix

/// A tunnel's two descriptors and their registrations with its loop, owned together so the
/// order that keeps a reused descriptor number safe is written once: deregister, then close
/// (a report already queued for the old registration is then dropped by its generation, and
/// the kernel can hand the number to a new socket without the loop confusing the two).
///
/// `~Copyable` like the sockets in it: one owner, the tunnel; anything left open when it
/// goes away is closed by the sockets' own `deinit`.
struct TunnelSockets: ~Copyable {
    /// The tag each registration reports with, so one handler tells its two sockets apart.
    static let clientTag: UInt32 = 0
    static let upstreamTag: UInt32 = 1

    private(set) var client: Socket
    /// Closed until a dial opens it (and again after a failed candidate or a refusal).
    var upstream: Socket = .closed
    private var clientRegistration: Registration?
    private var upstreamRegistration: Registration?

    init(client: consuming Socket) { self.client = client }

    /// Edge-triggered for both directions and the peer's half-close, registered once: the
    /// relay never changes interest (see `RelayStateMachine`).
    private static let interest: EpollEvents = [.readable, .writable, .readHangup]

    mutating func registerClient(on loop: EventLoop, handler: LoopHandler) throws(IOError) {
        clientRegistration = try loop.register(client.descriptor, events: Self.interest, handler: handler, tag: Self.clientTag)
    }

    /// Registers the socket a dial just opened.
    mutating func registerUpstream(on loop: EventLoop, handler: LoopHandler) throws(IOError) {
        upstreamRegistration = try loop.register(upstream.descriptor, events: Self.interest, handler: handler, tag: Self.upstreamTag)
    }

    /// Closes the upstream side (a failed candidate, a refusal, the end); idempotent.
    mutating func closeUpstream(loop: EventLoop) {
        if let upstreamRegistration { loop.deregister(upstreamRegistration) }
        upstreamRegistration = nil
        upstream.close()
    }

    /// Closes both; idempotent.
    mutating func closeAll(loop: EventLoop) {
        closeUpstream(loop: loop)
        if let clientRegistration { loop.deregister(clientRegistration) }
        clientRegistration = nil
        client.close()
    }
}
