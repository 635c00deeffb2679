import EgressLoop
import EgressPosix
import TestSupport
import Testing

@testable import EgressProxyCore

/// An established CONNECT tunnel's relay (`TunnelRelay`, the code the proxy runs) between two
/// scripted peers: readiness is handed in as the loop would report it, and every answer a
/// socket gives comes from the script. What is asserted is what each peer received and which
/// calls it saw, never the relay's own counters alone.
struct RelayHarness {
    let wire = ScriptedWire()
    let client: ScriptedStream
    let upstream: ScriptedStream
    let pools: RelayPools
    var relay: TunnelRelay
    var recorder = TunnelRecorder(slot: 0)
    var stats = LoopStats()
    var now = Instant(nanoseconds: 1_000_000_000)

    /// - Parameters:
    ///   - early: bytes the client sent after its CONNECT head (already read with it).
    ///   - splice: the `splice` config key.
    ///   - maxPipes: the loop's pipe budget (0: no pipe can be had).
    init(early: [UInt8] = [], splice: Bool = false, bufferSize: Int = 1024, maxPipes: Int = .max) throws {
        client = ScriptedStream("client", wire: wire)
        upstream = ScriptedStream("upstream", wire: wire)
        let pipes = PipePool()
        pipes.maxPipes = maxPipes
        pools = RelayPools(buffers: BufferPool(bufferSize: bufferSize), pipes: pipes)
        _ = stats.slot(for: "tenant")
        relay = TunnelRelay(now: now)
        if !early.isEmpty {
            let buffer = pools.buffers.acquire()
            early.withUnsafeBytes { _ = buffer.append($0) }
            relay.up.buffer = buffer
        }
        var parser = RequestHeadParser(limit: 8192)
        guard case .complete(let head, _) = Array("CONNECT example.test:443 HTTP/1.1\r\n\r\n".utf8).withUnsafeBytes({ parser.parse($0) })
        else { throw HarnessError.badHead }
        let started = relay.begin(for: head, now: now, splice: splice, pools: pools)
        guard case .success(let replyBytes) = started else { throw HarnessError.refused }
        recorder.replyBytesUncounted = replyBytes
    }

    enum HarnessError: Error { case badHead, refused }

    /// Both sides readable and writable, as right after the dial: the 200 and early data go out.
    mutating func start() -> TunnelRelay.End? { drive() }

    /// One readiness report for `side`, then the relay runs until it waits or ends.
    mutating func ready(_ side: RelayStateMachine.Side, readable: Bool = false, writable: Bool = false) -> TunnelRelay.End? {
        relay.ready(side, readable: readable, writable: writable)
        return drive()
    }

    private mutating func drive() -> TunnelRelay.End? {
        relay.drive(client: client, upstream: upstream, in: .init(pools: pools, now: now), recorder: &recorder, stats: &stats)
    }

    var reply: [UInt8] { ProxyResponse.connectEstablished }
}

extension ScriptedStream {
    var reads: Int { calls.filter { $0 == .read }.count }
}

private func bytes(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) } }

@Suite struct TunnelRelayDriveTests {
    @Test func replyThenEarlyDataThenBothWaysAndBuffersGoBack() throws {
        let hello = bytes(517, seed: 1)
        var harness = try RelayHarness(early: hello)
        #expect(harness.start() == nil)
        #expect(harness.client.received == harness.reply, "our 200 reaches the client first")
        #expect(harness.upstream.received == hello, "the eager ClientHello follows the CONNECT")
        #expect(harness.pools.buffers.inUse == 0, "an idle tunnel holds no buffer")
        #expect(harness.recorder.bytesDown == 0, "our own 200 is not a destination byte")
    }

    @Test func clientClosesFirstThenUpstreamFinishes() throws {
        var harness = try RelayHarness()
        _ = harness.start()
        let request = bytes(300, seed: 2), response = bytes(2_000, seed: 3)
        harness.client.inputs = [.bytes(request), .eof]
        #expect(harness.ready(.client, readable: true) == nil, "the other direction is still open")
        #expect(harness.upstream.received == request)
        #expect(harness.upstream.shutdowns == 1, "the client's FIN is passed on")
        #expect(harness.client.shutdowns == 0)
        harness.upstream.inputs = [.bytes(response), .eof]
        #expect(harness.ready(.upstream, readable: true) == .completed)
        #expect(harness.client.received == harness.reply + response)
        #expect(harness.client.shutdowns == 1)
        #expect(harness.relay.machine.firstEOF == .client)
        harness.relay.releaseAll(pools: harness.pools)
        #expect(harness.pools.buffers.inUse == 0)
    }

    @Test func upstreamClosesFirstThenClientFinishes() throws {
        var harness = try RelayHarness()
        _ = harness.start()
        let response = bytes(1_500, seed: 4)
        harness.upstream.inputs = [.bytes(response), .eof]
        #expect(harness.ready(.upstream, readable: true) == nil)
        #expect(harness.client.received == harness.reply + response)
        #expect(harness.client.shutdowns == 1 && harness.upstream.shutdowns == 0)
        let late = bytes(40, seed: 5)
        harness.client.inputs = [.bytes(late), .eof]
        #expect(harness.ready(.client, readable: true) == .completed)
        #expect(harness.upstream.received == late, "a half-closed tunnel still carries the other way")
        #expect(harness.relay.machine.firstEOF == .upstream)
    }

    @Test func eagainMidWriteHoldsTheRestAndStopsReadingUntilWritable() throws {
        var harness = try RelayHarness(bufferSize: 1024)
        _ = harness.start()
        let readsAtStart = harness.client.reads
        let data = bytes(3_000, seed: 6)
        harness.client.inputs = [.bytes(data)]
        harness.upstream.outputs = [.accept(100), .wouldBlock]
        #expect(harness.ready(.client, readable: true) == nil)
        #expect(harness.upstream.received == Array(data.prefix(100)), "only what the socket took")
        #expect(harness.client.reads - readsAtStart == 1, "no second read while 924 bytes wait (backpressure)")
        // Readable again: still full, so still no read.
        #expect(harness.ready(.client, readable: true) == nil)
        #expect(harness.client.reads - readsAtStart == 1)
        #expect(harness.ready(.upstream, writable: true) == nil)
        #expect(harness.upstream.received == data, "the rest follows, in order, once writable")
    }

    @Test func aFullClientNeverMakesTheRelayReadMoreFromUpstream() throws {
        var harness = try RelayHarness(bufferSize: 512)
        _ = harness.start()
        let readsAtStart = harness.upstream.reads
        harness.client.outputs = [.wouldBlock]
        harness.upstream.inputs = [.bytes(bytes(10_000, seed: 7))]
        for _ in 0..<5 { #expect(harness.ready(.upstream, readable: true) == nil) }
        #expect(harness.upstream.reads - readsAtStart == 1, "one buffer's worth read, then the kernel holds the rest")
        #expect(harness.client.received == harness.reply)
        #expect(harness.pools.buffers.inUse == 1, "one buffer held per blocked direction, no more")
    }

    @Test func resetRightAfterTheConnectEndsFailedAndReturnsEverything() throws {
        var harness = try RelayHarness(early: bytes(64, seed: 8))
        harness.upstream.inputs = [.reset]
        #expect(harness.start() == .failed)
        harness.relay.releaseAll(pools: harness.pools)
        #expect(harness.pools.buffers.inUse == 0 && harness.pools.pipes.inUse == 0)
    }

    @Test func aWriteErrorEndsFailed() throws {
        var harness = try RelayHarness()
        _ = harness.start()
        harness.upstream.outputs = [.reset]
        harness.client.inputs = [.bytes(bytes(10, seed: 9))]
        #expect(harness.ready(.client, readable: true) == .failed)
    }

    @Test func bulkBytesSwitchToAPipeAndArriveIntactAcrossEagainMidSplice() throws {
        var harness = try RelayHarness(splice: true, bufferSize: 16 * 1024)
        _ = harness.start()
        let total = Int(TunnelRelay.spliceThreshold) + 100_000
        let data = bytes(total, seed: 10)
        // In chunks, the way a socket fills: the first ones on buffers, then the machine asks for a pipe.
        harness.upstream.inputs = stride(from: 0, to: total, by: 8_192).map { .bytes(Array(data[$0..<min(total, $0 + 8_192)])) }
        // Mid-splice: the client takes part of a pipe's bytes, then blocks.
        harness.client.outputs = Array(repeating: .accept(.max), count: 9) + [.accept(1_000), .wouldBlock]
        var rounds = 0
        while harness.client.received.count < harness.reply.count + total, rounds < 1_000 {
            #expect(harness.ready(.upstream, readable: true) == nil)
            #expect(harness.ready(.client, writable: true) == nil)
            rounds += 1
        }
        #expect(harness.client.received == harness.reply + data, "every byte, in order, through buffers then the pipe")
        #expect(harness.upstream.calls.contains(.spliceIn) && harness.client.calls.contains(.spliceOut))
        #expect(harness.upstream.calls.firstIndex(of: .spliceIn).map { harness.upstream.calls[..<$0].allSatisfy { $0 == .read } } == true,
                "buffers first, pipe after the threshold")
        #expect(harness.recorder.bytesDown == UInt64(total))
        harness.upstream.inputs = [.eof]
        harness.client.inputs = [.eof]
        #expect(harness.ready(.upstream, readable: true) == nil)
        #expect(harness.ready(.client, readable: true) == .completed)
        harness.relay.releaseAll(pools: harness.pools)
        #expect(harness.pools.pipes.inUse == 0 && harness.pools.buffers.inUse == 0)
    }

    @Test func noPipeToBeHadKeepsRelayingThroughBuffers() throws {
        var harness = try RelayHarness(splice: true, bufferSize: 16 * 1024, maxPipes: 0)
        _ = harness.start()
        let total = Int(TunnelRelay.spliceThreshold) * 2
        let data = bytes(total, seed: 11)
        harness.upstream.inputs = [.bytes(data)]
        #expect(harness.ready(.upstream, readable: true) == nil)
        #expect(harness.client.received == harness.reply + data)
        #expect(!harness.upstream.calls.contains(.spliceIn), "no pipe, so plain reads all the way")
    }

    @Test func withSpliceOffNoPipeIsEverTaken() throws {
        var harness = try RelayHarness(splice: false, bufferSize: 16 * 1024)
        _ = harness.start()
        let data = bytes(Int(TunnelRelay.spliceThreshold) * 3, seed: 12)
        harness.client.inputs = [.bytes(data)]
        #expect(harness.ready(.client, readable: true) == nil)
        #expect(harness.upstream.received == data)
        #expect(harness.pools.pipes.inUse == 0 && !harness.client.calls.contains(.spliceIn))
    }

    @Test func aFailedTunnelDiscardsAPipeThatStillHoldsBytes() throws {
        var harness = try RelayHarness(splice: true, bufferSize: 16 * 1024)
        _ = harness.start()
        let total = Int(TunnelRelay.spliceThreshold) + 30_000
        harness.upstream.inputs = [.bytes(bytes(total, seed: 13))]
        harness.client.outputs = Array(repeating: .accept(.max), count: 4) + [.accept(10_000), .wouldBlock]
        #expect(harness.ready(.upstream, readable: true) == nil)
        #expect(harness.relay.machine.isPiped(.downstream) && harness.relay.machine.pending(.downstream) > 0)
        harness.client.outputs = [.reset]
        #expect(harness.ready(.client, writable: true) == .failed)
        harness.relay.releaseAll(pools: harness.pools)
        #expect(harness.pools.pipes.inUse == 0)
        #expect(harness.pools.pipes.acquire().map { harness.wire.contents(of: $0).isEmpty } == true,
                "the pool never hands out a pipe with another tunnel's bytes")
    }
}
