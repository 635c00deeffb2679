import EgressLoop
import EgressPosix
import TestSupport
import Testing

@testable import EgressProxyCore

/// The bytes before the decision, read from a scripted client: what `TunnelHeadReader.read`
/// makes of heads that arrive whole, in pieces, behind a PROXY header, or never.
@Suite struct TunnelHeadReaderTests {
    let wire = ScriptedWire()
    let pools = RelayPools(buffers: BufferPool(bufferSize: 4096), pipes: PipePool())

    func reader(trusted: Bool = false) -> TunnelHeadReader { TunnelHeadReader(headerLimit: 4096, trustsProxyHeader: trusted) }
    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func aHeadInPiecesCompletesAndLeavesTheEarlyBytes() {
        var reader = reader()
        var channel = RelayChannel()
        let client = ScriptedStream("client", wire: wire, inputs: [.bytes(bytes("CONNECT github.com:443 HT")), .wouldBlock,
                                                                   .bytes(bytes("TP/1.1\r\nHost: github.com\r\n\r\n\u{16}\u{03}"))])
        guard case .needMore = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        guard case .complete(let head) = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        #expect(head.authority.description == "github.com:443")
        #expect(channel.buffer.map { Array($0.pending) } == [0x16, 0x03], "the ClientHello's first bytes stay for the upstream")
    }

    @Test func nothingSentHoldsNoBuffer() {
        var reader = reader()
        var channel = RelayChannel()
        let client = ScriptedStream("client", wire: wire)
        guard case .needMore = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        #expect(channel.buffer == nil && pools.buffers.inUse == 0)
    }

    @Test(arguments: [(ScriptedStream.Input.eof, "client_closed_before_request"), (.reset, "client_error")])
    func aClientGoneBeforeItsHeadEndsWithoutAReply(input: ScriptedStream.Input, why: String) {
        var reader = reader()
        var channel = RelayChannel()
        let client = ScriptedStream("client", wire: wire, inputs: [.bytes(bytes("CONNECT a:1")), input])
        guard case .ended(let reason) = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        #expect(reason == why)
    }

    @Test func aProxyHeaderAndTheHeadInOneSegmentGiveTheSourceThenTheHead() {
        var reader = reader(trusted: true)
        var channel = RelayChannel()
        let segment = "PROXY TCP4 198.51.100.7 10.0.0.1 40000 3128\r\nCONNECT github.com:443 HTTP/1.1\r\n\r\n"
        let client = ScriptedStream("client", wire: wire, inputs: [.bytes(bytes(segment))])
        guard case .source(let source) = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        #expect(source.description == "198.51.100.7:40000")
        let readsSoFar = client.calls.count
        guard case .complete(let head) = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        #expect(head.authority.description == "github.com:443")
        #expect(client.calls.count == readsSoFar, "the head was already in the buffer: no read for it")
    }

    @Test func anUntrustedPeersProxyHeaderIsJustABadRequest() {
        var reader = reader(trusted: false)
        var channel = RelayChannel()
        let client = ScriptedStream("client", wire: wire, inputs: [.bytes(bytes("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n"))])
        guard case .refused(let refusal, _) = reader.read(from: client, into: &channel, pools: pools) else { return #expect(Bool(false)) }
        #expect(refusal.status == 400)
    }
}
