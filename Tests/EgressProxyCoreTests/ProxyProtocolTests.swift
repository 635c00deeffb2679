import EgressPosix
import Testing

@testable import EgressProxyCore

/// PROXY protocol v1 and v2 headers, parsed without a socket (HAProxy's proxy-protocol.txt).
struct ProxyProtocolTests {
    func parse(_ bytes: [UInt8]) -> ProxyProtocolHeader.Outcome { bytes.withUnsafeBytes { ProxyProtocolHeader.parse($0) } }

    static let v2Prefix: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]

    @Test func versionOneNamesTheSource() {
        let line = Array("PROXY TCP4 203.0.113.7 10.0.0.1 51234 3128\r\nCONNECT x:443 HTTP/1.1\r\n".utf8)
        #expect(parse(line) == .parsed(source: SocketAddress(parsing: "203.0.113.7:51234"), length: 44))
        let six = Array("PROXY TCP6 2001:db8::7 2001:db8::1 443 3128\r\n".utf8)
        #expect(parse(six) == .parsed(source: SocketAddress(parsing: "[2001:db8::7]:443"), length: six.count))
        #expect(parse(Array("PROXY UNKNOWN\r\n".utf8)) == .parsed(source: nil, length: 15))
        #expect(parse(Array("PROXY TCP4 203.0.113.7 10.0.0.1 51234".utf8)) == .needMore)
        #expect(parse(Array("PRO".utf8)) == .needMore)
    }

    @Test func versionOneRejectsWhatIsNotAHeader() {
        for bad in ["PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "PROXY TCP4 203.0.113.7 10.0.0.1 70000 2\r\n", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
                    "PROXY TCP4 1.2.3.4\r\n", "PROXY " + String(repeating: "x", count: 120)] {
            guard case .invalid = parse(Array(bad.utf8)) else {
                Issue.record("accepted: \(bad)")
                continue
            }
        }
    }

    @Test func versionTwoNamesTheSource() {
        // PROXY command, TCP over IPv4, 12 bytes of addresses and a 3-byte TLV that is skipped.
        let v4 = Self.v2Prefix + [0x21, 0x11, 0x00, 15, 203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x0c, 0x38, 0x04, 0x00, 0x00] + Array("CONNECT".utf8)
        #expect(parse(v4) == .parsed(source: SocketAddress(parsing: "203.0.113.7:51234"), length: 31))
        var v6 = Self.v2Prefix + [0x21, 0x21, 0x00, 36]
        v6 += [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [7]
        v6 += Array(repeating: 0, count: 15) + [1] + [0x01, 0xbb, 0x0c, 0x38]
        #expect(parse(v6) == .parsed(source: SocketAddress(parsing: "[2001:db8::7]:443"), length: 52))
        #expect(parse(Self.v2Prefix + [0x20, 0x00, 0x00, 0x00]) == .parsed(source: nil, length: 16), "LOCAL: a health check")
        #expect(parse(Array(v4.prefix(20))) == .needMore)
    }

    @Test func versionTwoRejectsBadHeaders() {
        #expect(parse(Self.v2Prefix + [0x11, 0x11, 0x00, 12] + Array(repeating: 0, count: 12)) == .invalid("v2 version"))
        #expect(parse(Self.v2Prefix + [0x2f, 0x11, 0x00, 12] + Array(repeating: 0, count: 12)) == .invalid("v2 command"))
        #expect(parse(Self.v2Prefix + [0x21, 0x11, 0x00, 4, 1, 2, 3, 4]) == .invalid("v2 IPv4 block"))
        #expect(parse(Self.v2Prefix + [0x21, 0x11, 0xff, 0xff]) == .invalid("v2 header too long"))
        #expect(parse(Self.v2Prefix + [0x21, 0x31, 0x00, 0]) == .invalid("v2 family"), "AF_UNIX is not a client we can name")
    }

    @Test func anHTTPRequestIsNoHeader() {
        #expect(parse(Array("CONNECT github.com:443 HTTP/1.1\r\n".utf8)) == .absent)
        #expect(parse(Array("\r\n\r\nGET".utf8)) == .absent)
    }
}
