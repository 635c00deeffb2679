import COpenSSL
import EgressPosix

/// A GitHub App's RS256 signing key, loaded from a PEM file (PKCS#1 or PKCS#8). Owns the
/// libcrypto key; the PEM text is not kept.
public final class AppSigningKey: @unchecked Sendable {
    private let key: OpaquePointer

    /// Why a key could not be loaded (never includes key material).
    public struct LoadError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Reads the key from a mounted file (never from the environment).
    public convenience init(pemFile path: String) throws(LoadError) {
        guard let bytes = Posix.readSmallFile(path, limit: 64 * 1024) else { throw LoadError(description: "cannot read \(path)") }
        try self.init(pem: bytes)
    }

    public init(pem: [UInt8]) throws(LoadError) {
        guard let parsed = PEMPrivateKey.parse(pem) else { throw LoadError(description: "not a PEM private key") }
        guard EVP_PKEY_get_base_id(parsed) == EVP_PKEY_RSA else {
            EVP_PKEY_free(parsed)
            throw LoadError(description: "the key is not RSA (GitHub Apps sign with RS256)")
        }
        key = parsed
    }

    deinit { EVP_PKEY_free(key) }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    public func sign(_ message: [UInt8]) -> [UInt8]? { rs256Sign(key, message) }
}

/// PEM private keys (PKCS#1 or PKCS#8) through libcrypto, for every key this project loads
/// from a mounted file (the App's RS256 key, the GMC's Ed25519 wake key).
public enum PEMPrivateKey {
    /// The key, owned by the caller (`EVP_PKEY_free`); nil when the bytes are not one.
    public static func parse(_ pem: [UInt8]) -> OpaquePointer? {
        pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
    }
}

/// The JWT a GitHub App authenticates with: RS256, `iat` 60 s in the past (clock skew),
/// `exp` at most 10 minutes after issue (GitHub's limit; we use 9 to stay inside it), `iss` = app id.
public enum AppJWT {
    public static func make(appID: String, key: AppSigningKey, now epochSeconds: Int64) -> String? {
        let header = #"{"alg":"RS256","typ":"JWT"}"#
        let claims = "{\"iat\":\(epochSeconds - 60),\"exp\":\(epochSeconds + 540),\"iss\":\(jsonString(appID))}"
        let signingInput = base64URL(Array(header.utf8)) + "." + base64URL(Array(claims.utf8))
        guard let signature = key.sign(Array(signingInput.utf8)) else { return nil }
        return signingInput + "." + base64URL(signature)
    }

    /// The app id is numeric for GitHub; a non-numeric one (a client id) is sent as a string.
    static func jsonString(_ appID: String) -> String {
        if !appID.isEmpty, appID.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) { return appID }
        return "\"" + appID.filter { $0 != "\"" && $0 != "\\" } + "\""
    }

    /// base64url without padding (RFC 7515).
    public static func base64URL(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 2 < bytes.count {
            let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int(value >> UInt32(shift) & 63)]) }
            index += 3
        }
        let rest = bytes.count - index
        if rest == 1 {
            let value = UInt32(bytes[index]) << 16
            out.append(alphabet[Int(value >> 18 & 63)])
            out.append(alphabet[Int(value >> 12 & 63)])
        } else if rest == 2 {
            let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            out.append(alphabet[Int(value >> 18 & 63)])
            out.append(alphabet[Int(value >> 12 & 63)])
            out.append(alphabet[Int(value >> 6 & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
