import COpenSSL
import EgressPosix

/// SHA-256 through libcrypto's EVP interface.
public enum SHA256Digest {
    public static func hash<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        let input = Array(bytes)
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = input.withUnsafeBytes { raw in
            digest.withUnsafeMutableBufferPointer { out in
                EVP_Digest(raw.baseAddress, raw.count, out.baseAddress, &length, EVP_sha256(), nil)
            }
        }
        precondition(ok == 1 && length == 32, "EVP_Digest(sha256) failed")
        return digest
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses 64 hex digits (validated by the config parser) into 32 bytes.
    public static func fromHex(_ text: String) -> [UInt8]? {
        let bytes = Array(text.utf8)
        guard bytes.count == 64 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(32)
        var index = 0
        while index < 64 {
            guard let high = nibble(bytes[index]), let low = nibble(bytes[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

/// Comparison whose running time does not depend on where two inputs differ: it always reads
/// every byte of both and folds the differences together, with no early exit. Only ever used on
/// equal-length SHA-256 digests, so the length check leaks nothing.
public enum ConstantTime {
    public static func equals<A: Collection, B: Collection>(_ a: A, _ b: B) -> Bool
    where A.Element == UInt8, B.Element == UInt8 {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        var left = a.startIndex
        var right = b.startIndex
        while left != a.endIndex {
            difference |= a[left] ^ b[right]
            left = a.index(after: left)
            right = b.index(after: right)
        }
        return difference == 0
    }
}

/// `Proxy-Authorization: Basic base64(name:secret)`, decoded. The secret never leaves this
/// value except as its SHA-256.
public struct BasicCredentials: Sendable, Equatable {
    public let name: String
    public let secretDigest: [UInt8]

    /// nil when the header is absent, not Basic, not base64, or has no colon.
    public static func parse(_ header: String?) -> BasicCredentials? {
        guard let header else { return nil }
        let trimmed = header.drop { $0 == " " }
        guard trimmed.count > 6, trimmed.prefix(6).lowercased() == "basic " else { return nil }
        let encoded = trimmed.dropFirst(6).drop { $0 == " " }
        guard let decoded = Base64.decode(String(encoded)), let colon = decoded.firstIndex(of: UInt8(ascii: ":")) else {
            return nil
        }
        let name = String(decoding: decoded[..<colon], as: UTF8.self)
        return BasicCredentials(name: name, secretDigest: SHA256Digest.hash(decoded[(colon + 1)...]))
    }
}

/// Strict RFC 4648 base64 (with padding) decoding.
public enum Base64 {
    public static func decode(_ text: String) -> [UInt8]? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count % 4 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x41...0x5a: return c - 0x41
            case 0x61...0x7a: return c - 0x61 + 26
            case 0x30...0x39: return c - 0x30 + 52
            case UInt8(ascii: "+"): return 62
            case UInt8(ascii: "/"): return 63
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count / 4 * 3)
        var index = 0
        while index < bytes.count {
            let isLast = index + 4 == bytes.count
            let c2 = bytes[index + 2]
            let c3 = bytes[index + 3]
            guard let a = value(bytes[index]), let b = value(bytes[index + 1]) else { return nil }
            out.append(a << 2 | b >> 4)
            if c2 == UInt8(ascii: "=") {
                guard isLast, c3 == UInt8(ascii: "="), b & 0x0f == 0 else { return nil }
            } else {
                guard let c = value(c2) else { return nil }
                out.append((b & 0x0f) << 4 | c >> 2)
                if c3 == UInt8(ascii: "=") {
                    guard isLast, c & 0x03 == 0 else { return nil }
                } else {
                    guard let d = value(c3) else { return nil }
                    out.append((c & 0x03) << 6 | d)
                }
            }
            index += 4
        }
        return out
    }
}
