import EgressLoop
import EgressPosix

/// `connect-flood serve`: a loopback echo server on EgressLoop, one SO_REUSEPORT listener per
/// loop. It echoes every byte until the client's FIN, then closes: the far end of every tunnel
/// in every mode (a 64-byte round trip, a 2 GiB stream each way, an idle held tunnel).
final class EchoListener: LoopHandler {
    private let loop: EventLoop
    private var listener: Socket
    private var registration: Registration?

    init(loop: EventLoop, socket: consuming Socket) throws(IOError) {
        self.loop = loop
        let fd = socket.descriptor
        listener = socket
        registration = try loop.register(fd, events: [.readable], handler: self)
    }

    func handle(events: EpollEvents, tag: UInt32) {
        while listener.isOpen {
            var peer: SocketAddress?
            let accepted: Socket?
            do {
                accepted = try listener.accept(peer: &peer)
            } catch {
                return
            }
            guard let socket = accepted else { return }
            EchoConnection.start(socket: socket, loop: loop)
        }
    }
}

/// One echoed connection: read into a pooled buffer, write it back; stop reading while the
/// peer is not taking bytes (backpressure), hold no buffer while idle.
final class EchoConnection: LoopHandler {
    private var socket: Socket
    private let loop: EventLoop
    private var registration: Registration?
    private var buffer: IOBuffer?
    private var readable = true
    private var writable = true
    private var sawEOF = false

    static func start(socket: consuming Socket, loop: EventLoop) {
        try? socket.setNoDelay()
        let fd = socket.descriptor
        let connection = EchoConnection(socket: socket, loop: loop)
        connection.registration = try? loop.register(fd, events: [.readable, .writable, .readHangup], handler: connection)
        if connection.registration == nil { connection.close() }
    }

    private init(socket: consuming Socket, loop: EventLoop) {
        self.socket = socket
        self.loop = loop
    }

    func handle(events: EpollEvents, tag: UInt32) {
        if !events.isDisjoint(with: [.readable, .readHangup, .hangup, .error]) { readable = true }
        if !events.isDisjoint(with: [.writable, .hangup, .error]) { writable = true }
        pump()
    }

    private func pump() {
        while socket.isOpen {
            if let held = buffer, !held.isEmpty {
                guard writable else { return }
                switch try? socket.write(from: held.pending) {
                case .processed(let count)?: held.readIndex += count
                case .wouldBlock?: writable = false
                case nil: close(); return
                }
                continue
            }
            if sawEOF {
                close()
                return
            }
            guard readable else {
                if let held = buffer { loop.buffers.release(held) }
                buffer = nil
                return
            }
            let held = buffer ?? loop.buffers.acquire()
            buffer = held
            held.reset()
            switch try? socket.read(into: held.free) {
            case .processed(0)?: sawEOF = true
            case .processed(let count)?: held.writeIndex += count
            case .wouldBlock?: readable = false
            case nil: close(); return
            }
        }
    }

    private func close() {
        if let registration { loop.deregister(registration) }
        registration = nil
        if let held = buffer { loop.buffers.release(held) }
        buffer = nil
        socket.close()
    }
}
