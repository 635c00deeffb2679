import COpenSSL
import Foundation

// What a classic virtual session needs of cryptography (reference/agc-protocol.md 1.4, 2.1):
// the agent's RSA key rebuilt from the JIT blob's `.credentials_rsaparams`, the RS256 client
// assertion it signs for the broker's OAuth token, and the message body decryption (RSA-OAEP
// SHA-1 unwrap of the session key, AES-256-CBC with PKCS#7). All through libcrypto's EVP API.

/// libcrypto's two-pass output: a first call without a buffer gives the length, the second fills it.
func evpOutput(_ call: (UnsafeMutablePointer<UInt8>?, inout Int) -> Int32) -> [UInt8]? {
    var length = 0
    guard call(nil, &length) == 1 else { return nil }
    var out = [UInt8](repeating: 0, count: length)
    let done = out.withUnsafeMutableBufferPointer { call($0.baseAddress, &length) }
    return done == 1 ? Array(out.prefix(length)) : nil
}

/// RSASSA-PKCS1-v1_5 with SHA-256 over `message` with an EVP key (App JWTs and agent assertions).
func rs256Sign(_ key: OpaquePointer, _ message: [UInt8]) -> [UInt8]? {
    guard let context = EVP_MD_CTX_new() else { return nil }
    defer { EVP_MD_CTX_free(context) }
    guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key) == 1 else { return nil }
    return message.withUnsafeBufferPointer { input in
        evpOutput { out, length in EVP_DigestSign(context, out, &length, input.baseAddress, input.count) }
    }
}

/// A classic agent's RSA key pair (GitHub generated it into the JIT blob). Owns the libcrypto key.
public final class AgentKey: @unchecked Sendable {
    private let key: OpaquePointer

    /// Why the blob's key could not be used (never includes key material).
    public struct LoadError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// The OpenSSL parameter names of the eight `.credentials_rsaparams` values. Static
    /// strings: the parameter builder keeps the name *pointer* until it builds, so a Swift
    /// String's temporary C copy would dangle (the import then fails without an error).
    static let names: [(json: String, openssl: StaticString)] = [
        ("modulus", "n"), ("exponent", "e"), ("d", "d"), ("p", "rsa-factor1"), ("q", "rsa-factor2"),
        ("dp", "rsa-exponent1"), ("dq", "rsa-exponent2"), ("inverseq", "rsa-coefficient1"),
    ]

    /// - Parameter components: the big-endian values by lower-cased key (`modulus`, `exponent`,
    ///   `d`, `p`, `q`, `dp`, `dq`, `inverseq`).
    public init(components: [String: [UInt8]]) throws(LoadError) {
        guard let builder = OSSL_PARAM_BLD_new() else { throw LoadError(description: "out of memory") }
        defer { OSSL_PARAM_BLD_free(builder) }
        var numbers: [OpaquePointer] = []
        defer { numbers.forEach { BN_clear_free($0) } }
        for (json, openssl) in Self.names {
            guard let bytes = components[json], !bytes.isEmpty else { throw LoadError(description: "rsaparams lacks \(json)") }
            guard let number = bytes.withUnsafeBufferPointer({ BN_bin2bn($0.baseAddress, Int32($0.count), nil) }) else {
                throw LoadError(description: "rsaparams \(json) unreadable")
            }
            numbers.append(number)
            guard OSSL_PARAM_BLD_push_BN(builder, UnsafeRawPointer(openssl.utf8Start).assumingMemoryBound(to: CChar.self), number) == 1 else { throw LoadError(description: "rsaparams \(json) refused") }
        }
        guard let params = OSSL_PARAM_BLD_to_param(builder) else { throw LoadError(description: "out of memory") }
        defer { OSSL_PARAM_free(params) }
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else { throw LoadError(description: "no RSA in libcrypto") }
        defer { EVP_PKEY_CTX_free(context) }
        var made: OpaquePointer?
        guard EVP_PKEY_fromdata_init(context) == 1, EVP_PKEY_fromdata(context, &made, cegress_evp_pkey_keypair(), params) == 1,
            let made
        else { throw LoadError(description: "rsaparams do not form an RSA key") }
        // A key whose parts do not belong together would sign garbage: check it once here.
        if let check = EVP_PKEY_CTX_new(made, nil) {
            defer { EVP_PKEY_CTX_free(check) }
            guard EVP_PKEY_pairwise_check(check) == 1 else {
                EVP_PKEY_free(made)
                throw LoadError(description: "rsaparams are not one consistent RSA key")
            }
        }
        key = made
    }

    deinit { EVP_PKEY_free(key) }

    public func sign(_ message: [UInt8]) -> [UInt8]? { rs256Sign(key, message) }

    /// RSA-OAEP with SHA-1 and MGF1-SHA-1, no label: how the broker wraps a session's AES key.
    public func unwrap(_ wrapped: [UInt8]) -> [UInt8]? {
        guard let context = EVP_PKEY_CTX_new(key, nil) else { return nil }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_decrypt_init(context) == 1, EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_OAEP_PADDING) == 1,
            EVP_PKEY_CTX_set_rsa_oaep_md(context, EVP_sha1()) == 1, EVP_PKEY_CTX_set_rsa_mgf1_md(context, EVP_sha1()) == 1
        else { return nil }
        return wrapped.withUnsafeBufferPointer { input in
            evpOutput { out, length in EVP_PKEY_decrypt(context, out, &length, input.baseAddress, input.count) }
        }
    }
}

/// The classic broker's message body cipher: base64(16-byte IV || AES-256-CBC ciphertext, PKCS#7).
public enum BrokerCipher {
    public static func decrypt(_ body: String, key: [UInt8]) -> [UInt8]? {
        guard key.count == 32, let raw = Base64.decode(body), raw.count > 16, (raw.count - 16) % 16 == 0,
            let context = EVP_CIPHER_CTX_new()
        else { return nil }
        defer { EVP_CIPHER_CTX_free(context) }
        let iv = Array(raw.prefix(16))
        let sealed = Array(raw.dropFirst(16))
        guard EVP_DecryptInit_ex(context, EVP_aes_256_cbc(), nil, key, iv) == 1 else { return nil }
        var out = [UInt8](repeating: 0, count: sealed.count + 16)
        var written: Int32 = 0
        var final: Int32 = 0
        let ok = out.withUnsafeMutableBufferPointer { buffer -> Bool in
            guard let base = buffer.baseAddress, EVP_DecryptUpdate(context, base, &written, sealed, Int32(sealed.count)) == 1 else { return false }
            return EVP_DecryptFinal_ex(context, base + Int(written), &final) == 1  // checks the PKCS#7 padding
        }
        return ok ? Array(out.prefix(Int(written + final))) : nil
    }
}

/// Standard base64 with a base64url fallback (the .NET-written files use the standard alphabet;
/// some tools write the URL one), padding optional.
public enum Base64 {
    public static func decode(_ text: String) -> [UInt8]? {
        var cleaned = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if cleaned.contains("-") || cleaned.contains("_") {
            cleaned = cleaned.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        }
        cleaned += String(repeating: "=", count: (4 - cleaned.count % 4) % 4)
        return Data(base64Encoded: cleaned).map { [UInt8]($0) }
    }
}

/// Why a JIT config could not be read (never quotes the blob: it holds a private key).
public struct JITConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The JIT config GitHub hands out for one runner (reference section 1.4): base64 of a JSON
/// object mapping file names to base64 file contents. Only the three files a runner reads are
/// kept; any other name is ignored, and a name that is not one of them exactly (a path, a
/// traversal) is never turned into a path. Read by the AGC (the agent's key and broker) and by
/// `agc worker` (the files it writes for the runner).
public enum JITConfigFiles {
    /// The files a runner reads, by the lowercased name they may arrive under.
    static let known = [".runner": ".runner", ".credentials": ".credentials", ".credentials_rsaparams": ".credentials_rsaparams"]

    public static func decode(_ blob: String) throws(JITConfigError) -> [String: [UInt8]] {
        guard var bytes = Base64.decode(blob) else { throw JITConfigError("the JIT config is not base64") }
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }  // .NET writes a BOM
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw JITConfigError("the JIT config is not a JSON object of files")
        }
        var files: [String: [UInt8]] = [:]
        for (name, value) in object {
            // PascalCase or other casing of the same names is the same file.
            guard let canonical = known[name.lowercased()] else { continue }
            guard let text = value as? String, let content = Base64.decode(text) else {
                throw JITConfigError("the JIT config's \(canonical) is not base64")
            }
            files[canonical] = content
        }
        for name in known.values.sorted() where files[name] == nil { throw JITConfigError("the JIT config has no \(name)") }
        return files
    }
}

/// A JSON object with its keys lowercased (the runner's files come in camelCase or PascalCase).
func lowercasedKeys(_ object: [String: Any]) -> [String: Any] {
    Dictionary(object.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { first, _ in first })
}

/// What a classic session needs of an agent's JIT blob: who it is, where its broker is, how it
/// gets a token, and its key. The blob itself goes to the worker untouched.
public struct AgentCredentials: Sendable {
    public var agentID: Int64
    public var agentName: String
    /// `.runner.serverUrlV2`, else `serverUrl`.
    public var brokerURL: String
    public var clientID: String
    public var authorizationURL: String
    public var key: AgentKey

    /// Why a blob could not be read.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// - Parameter encoded: base64 of a JSON object mapping file name to base64(file content);
    ///   a file may start with a UTF-8 BOM (.NET writes one) and use PascalCase keys.
    public init(encodedJITConfig encoded: String) throws(ParseError) {
        let files: [String: [UInt8]]
        do {
            files = try JITConfigFiles.decode(encoded)
        } catch {
            throw ParseError(description: error.description)
        }
        /// One file's JSON object, its keys lowercased (.NET writes PascalCase behind a BOM).
        func file(_ name: String) throws(ParseError) -> [String: Any] {
            var bytes = files[name] ?? []
            if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
            guard let parsed = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                throw ParseError(description: "the JIT config's \(name) is not a JSON object")
            }
            return lowercasedKeys(parsed)
        }
        let runner = try file(".runner")
        let credentials = try file(".credentials")
        let rsa = try file(".credentials_rsaparams")
        let data = (credentials["data"] as? [String: Any]).map(lowercasedKeys)
        guard let id = (runner["agentid"] as? NSNumber)?.int64Value ?? (runner["agentid"] as? String).flatMap({ Int64($0) }),
            let broker = (runner["serverurlv2"] as? String).flatMap({ $0.isEmpty ? nil : $0 }) ?? runner["serverurl"] as? String,
            let clientID = data?["clientid"] as? String, let authorization = data?["authorizationurl"] as? String
        else { throw ParseError(description: "the JIT config lacks agentId, serverUrl, clientId or authorizationUrl") }
        var components: [String: [UInt8]] = [:]
        for (name, value) in rsa {
            guard let text = value as? String, let bytes = Base64.decode(text) else { continue }
            components[name] = bytes
        }
        do {
            key = try AgentKey(components: components)
        } catch {
            throw ParseError(description: "the JIT config's key: \(error)")
        }
        agentID = id
        agentName = runner["agentname"] as? String ?? ""
        brokerURL = broker.hasSuffix("/") ? String(broker.dropLast()) : broker
        self.clientID = clientID
        authorizationURL = authorization
    }
}

/// The RFC 7523 client assertion an agent trades for a broker token: RS256, `typ` JWT, no
/// `kid`; `iss` = `sub` = the client id, `aud` = the authorization URL as one string,
/// `nbf` = now, `exp` = now + 5 min, `jti` a UUID, and no `iat` (reference 1.4: exactly these).
public enum ClientAssertion {
    public static func make(credentials: AgentCredentials, now: Int64, jti: String = UUID().uuidString.lowercased()) -> String? {
        struct Claims: Encodable {
            var iss: String
            var sub: String
            var aud: String
            var nbf: Int64
            var exp: Int64
            var jti: String
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let claims = Claims(iss: credentials.clientID, sub: credentials.clientID, aud: credentials.authorizationURL, nbf: now,
                            exp: now + 300, jti: jti)
        guard let body = try? encoder.encode(claims) else { return nil }
        let input = AppJWT.base64URL(Array(#"{"alg":"RS256","typ":"JWT"}"#.utf8)) + "." + AppJWT.base64URL([UInt8](body))
        guard let signature = credentials.key.sign(Array(input.utf8)) else { return nil }
        return input + "." + AppJWT.base64URL(signature)
    }
}
