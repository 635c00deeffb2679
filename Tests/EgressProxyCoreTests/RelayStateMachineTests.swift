import Testing

@testable import EgressProxyCore

typealias Relay = RelayStateMachine

/// Runs the machine until it waits, answering each action from a scripted "kernel":
/// `reads[direction]` is consumed one result per read, `writeCapacity[direction]` bytes are
/// accepted before writes would block. Returns the actions in order.
struct FakeKernel {
    enum ReadResult: Equatable { case bytes(Int), eof, wouldBlock, reset }
    var reads: [Relay.Direction: [ReadResult]] = [:]
    var writeCapacity: [Relay.Direction: Int] = [.upstream: .max, .downstream: .max]
    var delivered: [Relay.Direction: Int] = [.upstream: 0, .downstream: 0]
    var shutdowns: [Relay.Direction] = []
    var pipesAvailable = true

    mutating func run(_ machine: inout Relay, limit: Int = 100) -> [Relay.Action] {
        var actions: [Relay.Action] = []
        for _ in 0..<limit {
            let action = machine.nextAction()
            actions.append(action)
            switch action {
            case .wait, .close:
                return actions
            case .read(let direction):
                var queue = reads[direction] ?? []
                let next = queue.isEmpty ? ReadResult.wouldBlock : queue.removeFirst()
                reads[direction] = queue
                switch next {
                case .bytes(let count): machine.handle(.didRead(direction, count))
                case .eof: machine.handle(.readEOF(direction))
                case .wouldBlock: machine.handle(.readWouldBlock(direction))
                case .reset: machine.handle(.failed)
                }
            case .write(let direction):
                let pending = machine.pending(direction)
                let capacity = writeCapacity[direction, default: 0]
                if capacity == 0 {
                    machine.handle(.writeWouldBlock(direction))
                } else {
                    let count = min(pending, capacity)
                    writeCapacity[direction] = capacity - count
                    delivered[direction, default: 0] += count
                    machine.handle(.didWrite(direction, count))
                }
            case .shutdownWrite(let direction):
                shutdowns.append(direction)
                machine.handle(.didShutdown(direction))
            case .releaseBuffer:
                break
            case .usePipe(let direction):
                machine.handle(pipesAvailable ? .pipeTaken(direction) : .pipeUnavailable(direction))
            }
        }
        Issue.record("machine did not settle")
        return actions
    }
}

@Suite struct RelayStateMachineTests {
    @Test func replyAndEarlyDataGoOutFirstThenBuffersAreReleased() {
        var machine = Relay(earlyBytes: 517, replyBytes: 39)
        var kernel = FakeKernel()
        let actions = kernel.run(&machine)
        #expect(kernel.delivered[.upstream] == 517, "eager ClientHello forwarded")
        #expect(kernel.delivered[.downstream] == 39, "200 reply written")
        #expect(actions.contains(.releaseBuffer(.upstream)) && actions.contains(.releaseBuffer(.downstream)))
        #expect(actions.last == .wait)
        #expect(!machine.holdsBuffer(.upstream) && !machine.holdsBuffer(.downstream), "idle tunnel holds no buffer")
    }

    @Test func clientHalfClosesFirst() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        _ = kernel.run(&machine)
        kernel.reads[.upstream] = [.bytes(100), .eof]
        machine.handle(.readable(.client))
        let first = kernel.run(&machine)
        #expect(kernel.delivered[.upstream] == 100)
        #expect(kernel.shutdowns == [.upstream], "client FIN becomes shutdown(SHUT_WR) on upstream")
        #expect(first.last == .wait, "tunnel stays open for the other direction")
        #expect(machine.firstEOF == .client)
        // The destination still answers, then closes.
        kernel.reads[.downstream] = [.bytes(4000), .bytes(10), .eof]
        machine.handle(.readable(.upstream))
        let second = kernel.run(&machine)
        #expect(kernel.delivered[.downstream] == 4010)
        #expect(kernel.shutdowns == [.upstream, .downstream])
        #expect(second.last == .close(.completed))
    }

    @Test func upstreamHalfClosesFirst() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        _ = kernel.run(&machine)
        kernel.reads[.downstream] = [.bytes(50), .eof]
        machine.handle(.readable(.upstream))
        #expect(kernel.run(&machine).last == .wait)
        #expect(kernel.shutdowns == [.downstream])
        #expect(machine.firstEOF == .upstream)
        // The client keeps sending after the server's FIN: still relayed.
        kernel.reads[.upstream] = [.bytes(7), .eof]
        machine.handle(.readable(.client))
        #expect(kernel.run(&machine).last == .close(.completed))
        #expect(kernel.delivered[.upstream] == 7)
    }

    @Test func eagainMidWriteStopsReadingUntilWritable() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        _ = kernel.run(&machine)
        kernel.writeCapacity[.downstream] = 1000
        kernel.reads[.downstream] = [.bytes(16384), .bytes(16384)]
        machine.handle(.readable(.upstream))
        let actions = kernel.run(&machine)
        #expect(kernel.delivered[.downstream] == 1000)
        #expect(machine.pending(.downstream) == 15384)
        #expect(actions.filter { $0 == .read(.downstream) }.count == 1, "no second read while bytes are pending (backpressure)")
        #expect(actions.last == .wait)
        #expect(machine.holdsBuffer(.downstream))
        // Client becomes writable: the rest goes out, then the next read happens.
        kernel.writeCapacity[.downstream] = .max
        machine.handle(.writable(.client))
        let resumed = kernel.run(&machine)
        #expect(kernel.delivered[.downstream] == 32768)
        #expect(resumed.first == .write(.downstream))
        #expect(!machine.holdsBuffer(.downstream))
    }

    @Test func resetAfterConnectCloses() {
        var machine = Relay(earlyBytes: 0, replyBytes: 39)
        var kernel = FakeKernel()
        kernel.reads[.upstream] = [.reset]
        let actions = kernel.run(&machine)
        #expect(actions.last == .close(.failed))
        #expect(machine.nextAction() == .wait, "closed machines stay closed")
    }

    @Test func writableBeforeAnyDataDoesNothing() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        _ = kernel.run(&machine)
        machine.handle(.writable(.client))
        machine.handle(.writable(.upstream))
        #expect(kernel.run(&machine) == [.wait])
    }

    @Test func bothSidesCloseAtOnce() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        kernel.reads[.upstream] = [.eof]
        kernel.reads[.downstream] = [.eof]
        let actions = kernel.run(&machine)
        #expect(Set(kernel.shutdowns.map { "\($0)" }) == ["upstream", "downstream"])
        #expect(actions.last == .close(.completed))
    }

    @Test func forwardingStopsAtTheBodyBudgetWithoutFin() {
        // Head of 100 bytes plus a 20-byte body; the client pipelines 30 more bytes.
        var machine = Relay(earlyBytes: 100, replyBytes: 0, upstreamBudget: 120)
        var kernel = FakeKernel()
        kernel.reads[.upstream] = [.bytes(20)]
        _ = kernel.run(&machine)
        #expect(machine.readLimit(.upstream) == 0)
        #expect(kernel.delivered[.upstream] == 120)
        #expect(kernel.shutdowns.isEmpty, "no FIN upstream after a forwarded request")
        kernel.reads[.upstream] = [.bytes(30)]
        machine.handle(.readable(.client))
        let actions = kernel.run(&machine)
        #expect(!actions.contains(.read(.upstream)), "bytes after the request are never forwarded")
        kernel.reads[.downstream] = [.bytes(500), .eof]
        machine.handle(.readable(.upstream))
        #expect(kernel.run(&machine).last == .close(.completed))
        #expect(kernel.delivered[.downstream] == 500)
    }

    @Test func directionsAlternate() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        _ = kernel.run(&machine)
        kernel.reads[.upstream] = Array(repeating: .bytes(10), count: 5)
        kernel.reads[.downstream] = Array(repeating: .bytes(10), count: 5)
        machine.handle(.readable(.client))
        machine.handle(.readable(.upstream))
        let reads = kernel.run(&machine).compactMap { action -> Relay.Direction? in
            if case .read(let direction) = action { return direction }
            return nil
        }
        #expect(Array(reads.prefix(4)) == [.downstream, .upstream, .downstream, .upstream] || Array(reads.prefix(4)) == [.upstream, .downstream, .upstream, .downstream])
    }

    @Test func asksForAPipeOnceTheThresholdIsReachedAndOnlyWithNothingPending() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0, spliceAfter: 1_000)
        var kernel = FakeKernel()
        _ = kernel.run(&machine)
        kernel.reads[.downstream] = [.bytes(600), .bytes(600), .bytes(600)]
        kernel.writeCapacity[.downstream] = 1_000  // the second read's bytes are still partly pending
        machine.handle(.readable(.upstream))
        let first = kernel.run(&machine)
        #expect(!first.contains(.usePipe(.downstream)), "1,200 read but 200 still pending: no switch with bytes in the buffer")
        kernel.writeCapacity[.downstream] = .max
        machine.handle(.writable(.client))
        let second = kernel.run(&machine)
        let switched = second.firstIndex(of: .usePipe(.downstream))
        let thirdRead = second.firstIndex(of: .read(.downstream))
        #expect(switched != nil && thirdRead != nil && switched! < thirdRead!, "the pipe comes before the next read")
        #expect(kernel.delivered[.downstream] == 1_800, "nothing lost across the switch")
    }

    @Test func withoutAThresholdNeverAsksForAPipe() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0)
        var kernel = FakeKernel()
        kernel.reads[.upstream] = Array(repeating: .bytes(100_000), count: 10)
        let actions = kernel.run(&machine)
        #expect(!actions.contains(.usePipe(.upstream)) && !actions.contains(.usePipe(.downstream)))
        #expect(kernel.delivered[.upstream] == 1_000_000)
    }

    @Test func aRefusedPipeIsAskedForAgainOnlyAfterTheNextRead() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0, spliceAfter: 100)
        var kernel = FakeKernel()
        kernel.pipesAvailable = false
        kernel.reads[.upstream] = [.bytes(100), .bytes(50), .bytes(50)]
        let actions = kernel.run(&machine)
        #expect(actions.filter { $0 == .usePipe(.upstream) }.count == 3, "after each read past the threshold, not in a loop")
        #expect(!machine.isPiped(.upstream))
        #expect(kernel.delivered[.upstream] == 200)
    }

    @Test func goingIdleGivesThePipeBack() {
        var machine = Relay(earlyBytes: 0, replyBytes: 0, spliceAfter: 10)
        var kernel = FakeKernel()
        kernel.reads[.upstream] = [.bytes(10), .bytes(10), .wouldBlock]
        let actions = kernel.run(&machine)
        #expect(actions.contains(.usePipe(.upstream)))
        #expect(actions.last == .wait)
        #expect(actions.contains(.releaseBuffer(.upstream)) && !machine.isPiped(.upstream) && !machine.holdsBuffer(.upstream))
    }
}
