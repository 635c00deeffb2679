import EgressLoop
import EgressPosix
import Histogram

/// What a run is made of: where to connect, what to ask for, and what to do once the tunnel is up.
struct FloodTarget: Sendable {
    /// The proxy, or the echo server itself with `--direct`.
    var connectTo: SocketAddress
    /// `host:port` for the CONNECT line; nil with `--direct`.
    var connectAuthority: String?
    /// Bytes sent through the tunnel and expected back (echo).
    var payload: Int
}

/// Failure kinds, counted separately in the report.
enum FloodFailure: String, CaseIterable, Sendable {
    case connect, status, reset, timeout, short
}

/// Per-loop results, merged after the loops stop.
struct FloodResults: Sendable {
    var completed = 0
    var failures: [String: Int] = [:]
    var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var bytes: UInt64 = 0

    mutating func merge(_ other: FloodResults) {
        completed += other.completed
        for (kind, count) in other.failures { failures[kind, default: 0] += count }
        latency.add(other.latency)
        bytes += other.bytes
    }
}

/// One client tunnel: connect, CONNECT (unless direct), send `payload` bytes, read them back,
/// then hand over to its driver (close and start the next, or hold). Latency runs from
/// `scheduled` (the open-loop schedule slot, or the closed-loop start), so queueing in the
/// generator or the proxy is not hidden.
final class FloodTunnel: LoopHandler, TimerTarget {
    /// Where the tunnel is in its one exchange.
    enum Phase { case connecting, awaitingReply, streaming, holding, done }

    let driver: FloodDriver
    let scheduled: Instant
    private var socket: Socket = .closed
    private var registration: Registration?
    private(set) var phase = Phase.connecting
    private var headMatch = 0
    private var statusBytes: [UInt8] = []
    private var sent = 0
    private var received = 0
    private var sendTarget = 0
    private var readable = false
    private var writable = false
    private var timer: TimerHandle?

    init(driver: FloodDriver, scheduled: Instant) {
        self.driver = driver
        self.scheduled = scheduled
    }

    func start() {
        do {
            socket = try Socket.tcp(family: driver.target.connectTo.family)
            try socket.setNoDelay()
            _ = try socket.connect(to: driver.target.connectTo)
            registration = try driver.loop.register(socket.descriptor, events: [.readable, .writable, .readHangup], handler: self)
        } catch {
            fail(.connect)
            return
        }
        timer = driver.loop.schedule(after: driver.timeout, target: self)
    }

    func timerFired(_ token: UInt64) {
        timer = nil
        if phase != .holding { fail(.timeout) }
    }

    func handle(events: EpollEvents, tag: UInt32) {
        if !events.isDisjoint(with: [.readable, .readHangup, .hangup, .error]) { readable = true }
        if !events.isDisjoint(with: [.writable, .hangup, .error]) { writable = true }
        advance()
    }

    private func advance() {
        switch phase {
        case .connecting:
            guard writable else { return }
            if socket.pendingError() != nil {
                fail(.connect)
                return
            }
            if let authority = driver.target.connectAuthority {
                let request = Array("CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n\r\n".utf8)
                guard case .processed(let count)? = request.withUnsafeBytes({ try? socket.write(from: $0) }), count == request.count else {
                    fail(.connect)
                    return
                }
                phase = .awaitingReply
                advance()
            } else {
                beginStreaming()
            }
        case .awaitingReply:
            readReply()
        case .streaming:
            stream()
        case .holding:
            // A held tunnel should see nothing; EOF means the proxy closed it.
            if readable, case .processed(0)? = driver.withScratch({ try? socket.read(into: $0) }) { fail(.reset) }
            readable = false
        case .done:
            break
        }
    }

    private func readReply() {
        while readable && phase == .awaitingReply {
            let result = driver.withScratch { scratch -> (IOResult<Int>?, [UInt8]) in
                let outcome = try? socket.read(into: scratch)
                if case .processed(let count)? = outcome { return (outcome, Array(scratch[0..<count])) }
                return (outcome, [])
            }
            switch result.0 {
            case .wouldBlock?: readable = false
            case .processed(0)?, nil: fail(.reset); return
            case .processed?:
                for (index, byte) in result.1.enumerated() {
                    if statusBytes.count < 12 { statusBytes.append(byte) }
                    headMatch = (byte == (headMatch % 2 == 0 ? 13 : 10)) ? headMatch + 1 : (byte == 13 ? 1 : 0)
                    if headMatch == 4 {
                        guard statusBytes.count >= 12, statusBytes[9] == 0x32, statusBytes[10] == 0x30, statusBytes[11] == 0x30 else {
                            fail(.status)
                            return
                        }
                        if index + 1 < result.1.count { fail(.status); return }  // nothing may follow the reply yet
                        beginStreaming()
                        return
                    }
                }
            }
        }
    }

    private func beginStreaming() {
        phase = .streaming
        sendTarget = driver.target.payload
        stream()
    }

    /// Sends the payload and reads the echo, interleaved (a 2 GiB stream must not deadlock on
    /// full socket buffers).
    private func stream() {
        var progressed = true
        while progressed && phase == .streaming {
            progressed = false
            if writable && sent < sendTarget {
                let chunk = min(sendTarget - sent, driver.pattern.count)
                switch driver.pattern.withUnsafeBytes({ try? socket.write(from: UnsafeRawBufferPointer(rebasing: $0[0..<chunk])) }) {
                case .processed(let count)?:
                    sent += count
                    progressed = true
                case .wouldBlock?: writable = false
                case nil: fail(.reset); return
                }
            }
            if readable && received < sendTarget {
                switch driver.withScratch({ try? socket.read(into: $0) }) {
                case .processed(0)?: fail(.short); return
                case .processed(let count)?:
                    received += count
                    progressed = true
                case .wouldBlock?: readable = false
                case nil: fail(.reset); return
                }
            }
            if received >= sendTarget && sent >= sendTarget {
                succeed()
                return
            }
        }
    }

    private func succeed() {
        if let timer { driver.loop.cancel(timer) }
        timer = nil
        driver.results.latency.record(driver.loop.now().since(scheduled).nanosecondsClamped)
        driver.results.completed += 1
        driver.results.bytes += UInt64(sent)
        if driver.hold {
            phase = .holding
            driver.held(self)
        } else {
            close()
            driver.finished(self)
        }
    }

    /// Hold mode: one more round trip on a held tunnel (is it still alive?).
    func verify() {
        sent = 0
        received = 0
        phase = .streaming
        timer = driver.loop.schedule(after: driver.timeout, target: self)
        stream()
    }

    private func fail(_ kind: FloodFailure) {
        guard phase != .done else { return }
        if let timer { driver.loop.cancel(timer) }
        timer = nil
        driver.results.failures[kind.rawValue, default: 0] += 1
        close()
        driver.finished(self)
    }

    func close() {
        phase = .done
        if let timer { driver.loop.cancel(timer) }
        timer = nil
        if let registration { driver.loop.deregister(registration) }
        registration = nil
        socket.close()
    }
}

/// Runs tunnels on one loop: closed loop (keep `concurrency` in flight), open loop (start one
/// every 1/rate s on schedule), or hold (open, keep, verify).
final class FloodDriver: TimerTarget {
    let loop: EventLoop
    let target: FloodTarget
    let timeout: Duration
    let hold: Bool
    var results = FloodResults()
    let pattern: [UInt8]
    private let scratch: UnsafeMutableRawBufferPointer
    private var inFlight = 0
    private let concurrency: Int
    private let interval: Duration?
    private var deadline: Instant
    private var nextSlot: Instant
    private var toOpen: Int
    private(set) var heldTunnels: [FloodTunnel] = []
    var onIdle: (() -> Void)?
    private static let pacingToken: UInt64 = 1

    init(loop: EventLoop, target: FloodTarget, concurrency: Int, rate: Double?, duration: Duration, count: Int?, hold: Bool,
         timeout: Duration)
    {
        self.loop = loop
        self.target = target
        self.concurrency = concurrency
        self.timeout = timeout
        self.hold = hold
        interval = rate.map { .nanoseconds(Int64(1e9 / $0)) }
        let now = loop.now()
        deadline = now + duration
        nextSlot = now
        toOpen = count ?? Int.max
        pattern = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
    }

    deinit { scratch.deallocate() }

    func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R { body(scratch) }

    func begin() {
        let now = loop.now()
        deadline = now + deadline.since(nextSlot)
        nextSlot = now
        if interval != nil { pace() } else { fill() }
    }

    private var running: Bool { loop.now() < deadline && toOpen > 0 }

    private func fill() {
        while inFlight < concurrency && running { open(scheduled: loop.now()) }
        if inFlight == 0 { onIdle?() }
    }

    private func open(scheduled: Instant) {
        inFlight += 1
        toOpen -= 1
        FloodTunnel(driver: self, scheduled: scheduled).start()
    }

    /// Open loop: start every tunnel whose slot has come, each measured from its slot.
    private func pace() {
        guard let interval else { return }
        let now = loop.now()
        while nextSlot <= now && nextSlot < deadline && toOpen > 0 {
            open(scheduled: nextSlot)
            nextSlot = nextSlot + interval
        }
        if nextSlot < deadline && toOpen > 0 {
            loop.schedule(at: nextSlot, target: self, token: Self.pacingToken)
        } else if inFlight == 0 {
            onIdle?()
        }
    }

    func timerFired(_ token: UInt64) { pace() }

    func finished(_ tunnel: FloodTunnel) {
        inFlight -= 1
        if let check = verification {
            verification = (check.ok, check.failed + 1, check.completion)
            verificationStep()
            return
        }
        if interval != nil {
            if inFlight == 0 && (nextSlot >= deadline || toOpen <= 0) { onIdle?() }
        } else {
            fill()
        }
    }

    func held(_ tunnel: FloodTunnel) {
        inFlight -= 1
        heldTunnels.append(tunnel)
        if let check = verification {
            verification = (check.ok + 1, check.failed, check.completion)
            verificationStep()
            return
        }
        fill()
    }

    /// Hold mode: (answered, failed) while verifying, with what to call when all are in.
    private var verification: (ok: Int, failed: Int, completion: (Int, Int) -> Void)?

    private func verificationStep() {
        guard let check = verification, inFlight == 0 else { return }
        verification = nil
        check.completion(check.ok, check.failed)
    }

    /// Hold mode: one more round trip on every held tunnel; `completion` gets (answered, failed).
    func verifyHeld(completion: @escaping (Int, Int) -> Void) {
        let tunnels = heldTunnels
        heldTunnels = []
        guard !tunnels.isEmpty else { return completion(0, 0) }
        verification = (0, 0, completion)
        for tunnel in tunnels {
            inFlight += 1
            tunnel.verify()
        }
    }
}
