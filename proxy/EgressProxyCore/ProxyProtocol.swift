import EgressPosix

/// The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer in front
/// of the proxy sends first on each connection, naming the client it accepted. Honoured only
/// from `proxyProtocol.trustedSources` (anyone else could claim any source and pick a
/// `sources` tenant); from them it is optional, so the balancer's own health checks and
/// direct clients inside the trusted range still work.
///
/// Pure: bytes in, a decision out; `Tunnel` consumes the header before the request head.
public enum ProxyProtocolHeader {
    public enum Outcome: Equatable, Sendable {
        /// No header here (the bytes are an HTTP request).
        case absent
        case needMore
        case invalid(String)
        /// `source` is nil for v1 `UNKNOWN` and v2 `LOCAL` (keep the connection's own peer).
        case parsed(source: SocketAddress?, length: Int)
    }

    static let v2Signature: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]
    static let v1Prefix = Array("PROXY ".utf8)
    /// v1's longest line (spec 2.1), CRLF included.
    static let v1MaxLength = 107
    /// v2 address block plus TLVs; balancers send well under this.
    static let v2MaxLength = 16 + 1024

    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        if startsLike(bytes, v2Signature) {
            return bytes.count < v2Signature.count ? .needMore : parseV2(bytes)
        }
        if startsLike(bytes, v1Prefix) {
            return bytes.count < v1Prefix.count ? .needMore : parseV1(bytes)
        }
        return .absent
    }

    /// Whether `bytes` agrees with `prefix` as far as either goes.
    private static func startsLike(_ bytes: UnsafeRawBufferPointer, _ prefix: [UInt8]) -> Bool {
        guard !bytes.isEmpty else { return true }
        let count = min(bytes.count, prefix.count)
        for index in 0..<count where bytes[index] != prefix[index] { return false }
        return true
    }

    private static func parseV1(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        var end: Int?
        for index in 1..<min(bytes.count, v1MaxLength) where bytes[index - 1] == 0x0d && bytes[index] == 0x0a {
            end = index + 1
            break
        }
        guard let end else { return bytes.count >= v1MaxLength ? .invalid("v1 line too long") : .needMore }
        let line = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[0..<(end - 2)]), as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2 else { return .invalid("v1 line") }
        if fields[1] == "UNKNOWN" { return .parsed(source: nil, length: end) }
        guard fields.count == 6, let ip = IPAddress(fields[2]), IPAddress(fields[3]) != nil, let port = UInt16(fields[4]),
            UInt16(fields[5]) != nil
        else { return .invalid("v1 fields") }
        switch (fields[1], ip) {
        case ("TCP4", .v4), ("TCP6", .v6): return .parsed(source: SocketAddress(ip: ip, port: port), length: end)
        default: return .invalid("v1 family does not match the address")
        }
    }

    private static func parseV2(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        guard bytes.count >= 16 else { return .needMore }
        let versionCommand = bytes[12]
        guard versionCommand >> 4 == 2 else { return .invalid("v2 version") }
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        guard 16 + length <= v2MaxLength else { return .invalid("v2 header too long") }
        guard bytes.count >= 16 + length else { return .needMore }
        let total = 16 + length
        switch versionCommand & 0x0f {
        case 0: return .parsed(source: nil, length: total)  // LOCAL: the balancer's own connection
        case 1: break
        default: return .invalid("v2 command")
        }
        let block = UnsafeRawBufferPointer(rebasing: bytes[16..<total])
        switch bytes[13] {
        case 0x11:  // TCP over IPv4
            guard block.count >= 12 else { return .invalid("v2 IPv4 block") }
            let address = UInt32(block[0]) << 24 | UInt32(block[1]) << 16 | UInt32(block[2]) << 8 | UInt32(block[3])
            let port = UInt16(block[8]) << 8 | UInt16(block[9])
            return .parsed(source: SocketAddress(ip: .v4(address), port: port), length: total)
        case 0x21:  // TCP over IPv6
            guard block.count >= 36 else { return .invalid("v2 IPv6 block") }
            var high: UInt64 = 0
            var low: UInt64 = 0
            for index in 0..<8 { high = high << 8 | UInt64(block[index]) }
            for index in 8..<16 { low = low << 8 | UInt64(block[index]) }
            let port = UInt16(block[32]) << 8 | UInt16(block[33])
            return .parsed(source: SocketAddress(ip: .v6(high, low), port: port), length: total)
        case 0x00:  // UNSPEC: keep the connection's own peer
            return .parsed(source: nil, length: total)
        default:
            return .invalid("v2 family")
        }
    }
}
