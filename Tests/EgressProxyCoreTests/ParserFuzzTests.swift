import Testing

@testable import EgressProxyCore

/// Seeded random-input testing of the request parser (the libFuzzer harness in fuzz/ does the
/// same with coverage guidance, outside CI). Properties: no crash; the outcome never depends
/// on how the bytes were split on arrival; a completed CONNECT names a normalised authority.
@Suite struct ParserFuzzTests {
    /// xorshift64*: deterministic, so a failure reproduces from its seed.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 2_685_821_657_736_338_717
        }
        mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    }

    static let seeds: [String] = [
        "CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n",
        "CONNECT [2001:db8::1]:8443 HTTP/1.0\r\n\r\n",
        "GET http://deb.debian.org/debian/ HTTP/1.1\r\nHost: deb.debian.org\r\nContent-Length: 0\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\r\n",
    ]
    static let alphabet: [UInt8] = Array("CONNECTGEThttp:/[]%@.0123456789abcdefx \r\n\t:".utf8) + [0, 0x7f, 0xff, 0xc3]

    func mutate(_ input: [UInt8], _ random: inout Random) -> [UInt8] {
        var bytes = input
        for _ in 0..<(1 + random.below(6)) {
            switch random.below(5) {
            case 0 where !bytes.isEmpty: bytes[random.below(bytes.count)] = Self.alphabet[random.below(Self.alphabet.count)]
            case 1: bytes.insert(Self.alphabet[random.below(Self.alphabet.count)], at: random.below(bytes.count + 1))
            case 2 where !bytes.isEmpty: bytes.remove(at: random.below(bytes.count))
            case 3 where bytes.count > 2:
                let start = random.below(bytes.count)
                let end = min(bytes.count, start + random.below(16))
                bytes.insert(contentsOf: bytes[start..<end], at: random.below(bytes.count))
            default: bytes[random.below(max(1, bytes.count))...].reverse()
            }
        }
        return bytes
    }

    func outcome(_ bytes: [UInt8], splits: [Int]) -> RequestHeadParser.Outcome {
        var parser = RequestHeadParser(limit: 8192)
        for end in splits + [bytes.count] {
            let result = bytes[0..<end].withUnsafeBytes { parser.parse($0) }
            if result != .needMore { return result }
        }
        return .needMore
    }

    @Test func randomAndMutatedInputs() {
        var random = Random(state: 0x9E37_79B9_7F4A_7C15)
        var completed = 0
        for iteration in 0..<20_000 {
            let base = Array(Self.seeds[iteration % Self.seeds.count].utf8)
            let input: [UInt8] = iteration % 10 == 0
                ? (0..<random.below(200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                : mutate(base, &random)
            let whole = outcome(input, splits: [])
            let cuts = (0..<random.below(4)).map { _ in random.below(input.count + 1) }.sorted()
            let split = outcome(input, splits: cuts)
            #expect(whole == split, "iteration \(iteration): split at \(cuts) changed the outcome")
            if case .complete(let head, let length) = whole {
                completed += 1
                #expect(length <= input.count)
                if case .connect(let authority) = head.kind, case .name(let name) = authority.host {
                    #expect(name == name.lowercased() && !name.hasSuffix(".") && !name.isEmpty, "\(name)")
                    #expect(authority.port > 0)
                }
            }
        }
        #expect(completed > 100, "mutations keep enough inputs valid to reach the classifier")
    }
}
