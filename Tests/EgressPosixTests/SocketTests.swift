import EgressPosix
import Glibc
import Testing

/// The syscall seam against the real kernel, on loopback only: what each wrapper returns for
/// the conditions the loops depend on (would-block, end of stream, half-close, splice).
@Suite struct SocketTests {
    /// Both ends of one loopback connection (tuples cannot hold `~Copyable` values).
    struct Pair: ~Copyable {
        var client: Socket
        var server: Socket
    }

    /// A connected pair on 127.0.0.1, both non-blocking.
    func pair() throws -> Pair {
        let listener = try Socket.listening(on: try #require(SocketAddress(parsing: "127.0.0.1:0")), reusePort: false)
        let client = try Socket.tcp(family: AF_INET)
        _ = try client.connect(to: try listener.localAddress())
        var peer: SocketAddress?
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if let server = try listener.accept(peer: &peer) { return Pair(client: client, server: server) }
        }
        throw IOError(errno: .timedOut, function: "accept4")
    }

    func read(_ socket: borrowing Socket, count: Int = 4096) throws -> IOResult<[UInt8]> {
        var bytes = [UInt8](repeating: 0, count: count)
        let result = try bytes.withUnsafeMutableBytes { try socket.read(into: $0) }
        switch result {
        case .wouldBlock: return .wouldBlock
        case .processed(let n): return .processed(Array(bytes.prefix(n)))
        }
    }

    /// Reads until `count` bytes came (loopback delivers at once, but not in one read by contract).
    func readAll(_ socket: borrowing Socket, count: Int) throws -> [UInt8] {
        var got: [UInt8] = []
        let deadline = ContinuousClock.now + .seconds(5)
        while got.count < count, ContinuousClock.now < deadline {
            if case .processed(let bytes) = try read(socket) { got += bytes }
        }
        return got
    }

    @Test func anEmptySocketWouldBlockAndBytesArriveIntact() throws {
        let pair = try pair()
        #expect(try read(pair.server) == .wouldBlock, "would-block is a value, not an error")
        let message = Array("hello through the seam".utf8)
        #expect(try message.withUnsafeBytes { try pair.client.write(from: $0) } == .processed(message.count))
        #expect(try readAll(pair.server, count: message.count) == message)
    }

    @Test func shutdownWriteIsEndOfStreamForThePeerOnly() throws {
        let pair = try pair()
        try pair.client.shutdownWrite()
        let deadline = ContinuousClock.now + .seconds(5)
        var result = try read(pair.server)
        while result == .wouldBlock, ContinuousClock.now < deadline { result = try read(pair.server) }
        #expect(result == .processed([]), "the FIN reads as zero bytes")
        let reply = Array("still open the other way".utf8)
        _ = try reply.withUnsafeBytes { try pair.server.write(from: $0) }
        #expect(try readAll(pair.client, count: reply.count) == reply)
    }

    @Test func aResetIsThrownWithItsErrno() throws {
        var pair = try pair()
        // SO_LINGER 0: close sends RST instead of FIN.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        #expect(setsockopt(pair.client.descriptor, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size)) == 0)
        pair.client.close()
        let stillOpen = pair.client.isOpen
        #expect(!stillOpen)
        let deadline = ContinuousClock.now + .seconds(5)
        var thrown: IOError?
        while thrown == nil, ContinuousClock.now < deadline {
            do { _ = try read(pair.server) } catch { thrown = error as? IOError }
        }
        #expect(thrown?.errno == .connectionReset)
    }

    @Test func discardInputReportsOpenUntilThePeersFin() throws {
        let pair = try pair()
        _ = try Array(repeating: UInt8(1), count: 10_000).withUnsafeBytes { try pair.client.write(from: $0) }
        let deadline = ContinuousClock.now + .seconds(5)
        var state = pair.server.discardInput()
        #expect(state == .open)
        try pair.client.shutdownWrite()
        while state == .open, ContinuousClock.now < deadline { state = pair.server.discardInput() }
        #expect(state == .closed)
    }

    @Test func spliceMovesBytesThroughAPipeWithoutLosingAny() throws {
        let first = try pair(), second = try pair()
        let pipe = try SplicePipe(capacity: 64 * 1024)
        let message = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var sent = 0
        var relayed: [UInt8] = []
        let deadline = ContinuousClock.now + .seconds(10)
        var inPipe = 0
        while relayed.count < message.count, ContinuousClock.now < deadline {
            if sent < message.count, case .processed(let n) = try message[sent...].withUnsafeBytes({ try first.client.write(from: $0) }) { sent += n }
            if case .processed(let n) = try first.server.splice(into: pipe, count: 64 * 1024) { inPipe += n }
            if inPipe > 0, case .processed(let n) = try second.client.splice(from: pipe, count: inPipe) { inPipe -= n }
            if case .processed(let bytes) = try read(second.server, count: 65_536) { relayed += bytes }
        }
        #expect(relayed == message)
        #expect(try first.server.splice(into: pipe, count: 1024) == .wouldBlock, "nothing left: would-block, not end of stream")
    }
}

/// Addresses parsed the strict way policy needs: one spelling per address.
@Suite struct AddressTests {
    @Test(arguments: ["1.2.3", "0x7f.0.0.1", "1.2.3.4.5", "256.0.0.1", "fe80::1%eth0", "", "github.com"])
    func notALiteral(text: String) { #expect(IPAddress(text) == nil) }

    @Test func mappedAddressesAreRecognised() throws {
        #expect(try #require(IPAddress("::ffff:10.1.2.3")).mappedIPv4 == 0x0a01_0203)
        #expect(try #require(IPAddress("2001:db8::1")).mappedIPv4 == nil)
    }

    @Test(arguments: [("127.0.0.1:3128", "127.0.0.1:3128"), ("[::1]:0", "[::1]:0"), ("[2001:DB8::1]:443", "[2001:db8::1]:443")])
    func listenAddressesRoundTrip(text: String, rendered: String) throws {
        let address = try #require(SocketAddress(parsing: text))
        #expect(address.description == rendered)
        #expect(SocketAddress(parsing: address.description) == address)
    }

    @Test(arguments: ["::1:80", "1.2.3.4:", "1.2.3.4:65536", "[::1]80", "[::1]:", "1.2.3.4:+80", "host:80", "1.2.3.4:٣"])
    func badListenAddresses(text: String) { #expect(SocketAddress(parsing: text) == nil) }
}
