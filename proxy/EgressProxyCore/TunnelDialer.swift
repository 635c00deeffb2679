import EgressLoop
import EgressPosix
import SystemPackage

/// A tunnel's way to its destination: the admitted candidates dialed in order, non-blocking,
/// and, for a tenant with a `parentProxy`, the CONNECT exchange with the parent once its TCP
/// connection is up. Owns no descriptor: the socket it opens is handed to the caller
/// (`dial(into:)`), which registers it and keeps it for the relay.
struct TunnelDialer {
    /// What to dial: the destination's admitted addresses, or the parent's addresses.
    private var candidates: [SocketAddress] = []
    private var next = 0
    /// The candidate whose connect is in progress or done (-1: none). An index, not a copy:
    /// a `SocketAddress` holds a whole sockaddr_storage, and every tunnel carries a dialer.
    private var dialedIndex = -1
    private var lastError: Errno?
    /// Chained tunnels: our CONNECT to the parent (kept until fully written); empty = direct.
    /// Only the request is kept, not the parent (the tenant's config has it): idle tunnels
    /// stay small.
    private var request: [UInt8] = []
    private var written = 0
    /// The dialed address after `settle` (the candidates are gone by then): an address and
    /// a port, not a 133-byte `SocketAddress`.
    private var settled: (ip: IPAddress, port: UInt16)?
    private var chained = false

    /// The outcome of one `dial`.
    enum Dial {
        /// A socket was opened and its connect is in progress (or done, `connected`).
        case opened(connected: Bool)
        /// Every candidate failed; the last error, for the audit line.
        case exhausted(detail: String)
        /// The process is out of descriptors: a 503, not a 502 (the destination is fine).
        case outOfDescriptors
    }

    /// The outcome of progress on the parent exchange.
    enum Handshake: Equatable {
        case wait
        /// The parent's 2xx head ended `headLength` bytes into the reply buffer; anything after
        /// it is the destination's and goes to the client.
        case established(headLength: Int)
        case refused(statusLine: String)
        /// The parent closed, reset, or sent more head than a proxy reply holds.
        case failed(detail: String)

        /// The 502 a failed exchange is answered with (nil while it goes on or succeeded).
        var refusal: (TunnelAdmission.Refusal, detail: String)? {
            switch self {
            case .wait, .established: return nil
            case .refused(let line): return (.init(status: 502, result: .dialFailed, why: "parent_refused"), line)
            case .failed(let detail): return (.init(status: 502, result: .dialFailed, why: "parent_failed"), detail)
            }
        }
    }

    /// Dials `destination` directly through `addresses`, or (with a parent) the parent's
    /// `parentAddresses`, asking it for `destination`.
    init(addresses: [SocketAddress], parent: ParentProxy?, parentAddresses: [SocketAddress], destination: Authority) {
        if let parent {
            candidates = parentAddresses
            request = parent.connectRequest(to: destination)
            chained = true
        } else {
            candidates = addresses
        }
    }

    init() {}

    var dialed: SocketAddress? {
        if let settled { return SocketAddress(ip: settled.ip, port: settled.port) }
        return dialedIndex >= 0 ? candidates[dialedIndex] : nil
    }

    /// Through a parent proxy.
    var isChained: Bool { chained }

    /// The tunnel is up: only the dialed address is still wanted (for the audit line), so
    /// the candidate list and our CONNECT to the parent are freed. An established tunnel
    /// then holds no heap memory for its dial, which matters for hours-long idle tunnels.
    mutating func settle() {
        if let dialed { settled = (dialed.ip, dialed.port) }
        candidates = []
        request = []
        dialedIndex = -1
    }

    /// Opens a socket to the next candidate that accepts a connect, into `upstream` (closed on
    /// entry). A candidate whose socket cannot be set up is skipped like a refused connect.
    mutating func dial(into upstream: inout Socket, egress: IPAddress?) -> Dial {
        while next < candidates.count {
            let address = candidates[next]
            next += 1
            do {
                let socket = try Socket.tcp(family: address.family)
                if let egress { try socket.bind(to: SocketAddress(ip: egress, port: 0)) }
                try socket.setNoDelay()
                let connected = try socket.connect(to: address)
                dialedIndex = next - 1
                upstream = socket
                return .opened(connected: connected)
            } catch {
                if error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem { return .outOfDescriptors }
                lastError = error.errno
            }
        }
        return .exhausted(detail: lastError.map { "\($0)" } ?? "no address")
    }

    /// The dialed candidate failed after `dial` returned (connect refused, registration failed).
    mutating func failed(_ error: Errno?) {
        lastError = error
        dialedIndex = -1
    }

    /// Where a dial stands after `dialNext` or `finishConnect`.
    enum Progress {
        /// A connect is in flight: wait for the upstream socket to become writable.
        case pending
        /// TCP is up (to the destination, or to the parent, whose exchange comes next).
        case connected
        case refused(TunnelAdmission.Refusal, detail: String?)
    }

    /// Opens and registers a socket to the next candidate that takes one, into
    /// `sockets.upstream`. A candidate whose registration fails is skipped like a refused connect.
    mutating func dialNext(_ sockets: inout TunnelSockets, loop: EventLoop, handler: LoopHandler, egress: IPAddress?) -> Progress {
        while true {
            switch dial(into: &sockets.upstream, egress: egress) {
            case .outOfDescriptors:
                return .refused(.init(status: 503, result: .overLimit, why: "out_of_descriptors"), detail: nil)
            case .exhausted(let detail):
                return .refused(.init(status: 502, result: .dialFailed, why: "dial_failed"), detail: detail)
            case .opened(let connected):
                do {
                    try sockets.registerUpstream(on: loop, handler: handler)
                } catch {
                    failed(error.errno)
                    sockets.closeUpstream(loop: loop)
                    continue
                }
                return connected ? .connected : .pending
            }
        }
    }

    /// The in-flight connect reported writable: done, or failed (then the next candidate).
    mutating func finishConnect(_ sockets: inout TunnelSockets, loop: EventLoop, handler: LoopHandler, egress: IPAddress?) -> Progress {
        guard sockets.upstream.isOpen else { return .pending }
        guard let error = sockets.upstream.pendingError() else { return .connected }
        failed(error)
        sockets.closeUpstream(loop: loop)
        return dialNext(&sockets, loop: loop, handler: handler, egress: egress)
    }

    /// Writes what is left of our CONNECT, then reads the parent's reply into `reply` until
    /// its head is complete. Call on every upstream event until it stops returning `.wait`.
    mutating func handshake(_ upstream: borrowing Socket, reply: IOBuffer) -> Handshake {
        do {
            while written < request.count {
                let result = try request.withUnsafeBytes { try upstream.write(from: UnsafeRawBufferPointer(rebasing: $0[written...])) }
                guard case .processed(let count) = result else { return .wait }
                written += count
            }
            while true {
                let space = UnsafeMutableRawBufferPointer(rebasing: reply.free.prefix(ParentReply.limit - reply.pendingCount))
                guard !space.isEmpty else { return .failed(detail: "parent reply head over \(ParentReply.limit) bytes") }
                switch try upstream.read(into: space) {
                case .wouldBlock: return .wait
                case .processed(0): return .failed(detail: "parent closed before its reply")
                case .processed(let count):
                    reply.writeIndex += count
                    switch ParentReply.parse(reply.pending) {
                    case .needMore: continue
                    case .established(let length): return .established(headLength: length)
                    case .refused(let line): return .refused(statusLine: line)
                    }
                }
            }
        } catch {
            return .failed(detail: (error as? IOError).map { "\($0.errno)" } ?? "\(error)")
        }
    }
}

/// Where a tunnel's dial addresses come from, on both legs: the destination's (always
/// screened) and, for a chained tenant, the parent's. Each is known now (an IP literal) or a
/// name to look up; one resolver job looks up both.
struct DialTargets: Sendable {
    /// One leg's addresses, or the name that gives them.
    enum Leg: Sendable {
        case known([SocketAddress])
        case lookup(host: String, port: UInt16)

        init(_ authority: Authority) {
            switch authority.host {
            case .ip(let ip): self = .known([SocketAddress(ip: ip, port: authority.port)])
            case .name(let host): self = .lookup(host: host, port: authority.port)
            }
        }

        var addresses: [SocketAddress]? {
            if case .known(let addresses) = self { return addresses }
            return nil
        }

        /// Blocks in the resolver: call on a resolver thread only.
        func resolve() -> Result<[SocketAddress], Posix.ResolveError> {
            switch self {
            case .known(let addresses): return .success(addresses)
            case .lookup(let host, let port): return Result { () throws(Posix.ResolveError) in try Posix.resolve(host: host, port: port) }
            }
        }
    }

    var destination: Leg
    /// nil: a direct dial.
    var parent: Leg?

    init(_ next: TunnelAdmission.Next, parent: ParentProxy?) {
        switch next {
        case .screen(let addresses): destination = .known(addresses)
        case .resolve(let host, let port): destination = .lookup(host: host, port: port)
        }
        self.parent = parent.map { Leg($0.authority) }
    }

    /// What one lookup job found on both legs (the parent's is empty for a direct dial).
    struct Answers: Sendable {
        var destination: Result<[SocketAddress], Posix.ResolveError>
        var parent: Result<[SocketAddress], Posix.ResolveError>
    }

    /// Looks both legs up in one resolver job, queued fairly under `key` (the tenant), and
    /// hands the answers to `answer` on `loop`. False when the tenant's queue is full.
    /// Cancelling `ticket` before the job starts keeps it off the resolver threads.
    func lookUp(on resolver: FairWorkerPool, key: String, ticket: WorkTicket, answerOn loop: EventLoop,
                _ answer: @escaping @Sendable (Answers) -> Void) -> Bool {
        resolver.submit(key: key, ticket: ticket) { [self] in
            let answers = Answers(destination: destination.resolve(), parent: parent?.resolve() ?? .success([]))
            loop.execute { answer(answers) }
        }
    }

    /// Both legs' addresses when no lookup is needed.
    var known: (destination: [SocketAddress], parent: [SocketAddress])? {
        guard let destination = destination.addresses else { return nil }
        guard let parent else { return (destination, []) }
        return parent.addresses.map { (destination, $0) }
    }
}
