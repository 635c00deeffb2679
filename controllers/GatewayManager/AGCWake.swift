import COpenSSL
import EgressLoop
import EgressPosix
import Foundation
import GitHubKit
import Vocabulary

/// The GMC's call to a gateway's AGC about a job its webhook router routed (issue 18, item 1):
/// `POST /wake` on the AGC's admin port, so a classic group opens a session for the job at
/// once and every group learns when GitHub queued it.
///
/// Signed, not shared-secret: the GMC signs each body with one Ed25519 key (`--wake-key`), and
/// every AGC holds only the public half (`--wake-public-key`, in its Deployment). Nothing secret
/// is ever written into a tenant's namespace, so a tenant who reads its own objects learns
/// nothing that lets it wake another tenant's AGC; and the body names the gateway it is for,
/// carries its issue time and a nonce, so a captured wake cannot be sent to another gateway,
/// nor replayed. The order of checks is fixed: size, signature over the raw bytes, and only
/// then is JSON parsed.
public enum AGCWake {
    public static let path = "/wake"
    /// `ed25519=` and the base64 signature of the raw body.
    public static let signatureHeader = "x-actions-gateway-signature"
    public static let maxBodyBytes = 256 << 10
    /// A wake issued further than this from the AGC's clock (either way) is refused. Below
    /// the replay window, so a nonce is remembered for as long as its wake could be accepted.
    public static let maxSkewSeconds: Int64 = 300

    /// One queued job a wake tells of. `queuedAt` is GitHub's own clock (the job's `created_at`).
    public struct Job: Codable, Equatable, Sendable {
        public var runnerGroup: String
        /// GitHub's numeric job id.
        public var jobID: Int64
        public var runID: Int64?
        /// `owner/name`.
        public var repository: String?
        /// The job's display name (matrix values included), as the classic job message names it.
        public var jobName: String?
        /// Epoch seconds.
        public var queuedAt: Int64?

        public init(runnerGroup: String, jobID: Int64, runID: Int64?, repository: String?, jobName: String?, queuedAt: Int64?) {
            self.runnerGroup = runnerGroup
            self.jobID = jobID
            self.runID = runID
            self.repository = repository
            self.jobName = jobName
            self.queuedAt = queuedAt
        }
    }

    /// What one wake says: the gateway it is for, when and once, and the jobs queued for it
    /// since the last wake (a burst of queued jobs is a few wakes, not one per job).
    public struct Request: Codable, Equatable, Sendable {
        public var namespace: String
        public var gateway: String
        /// Epoch seconds on the GMC's clock.
        public var issuedAt: Int64
        /// Unique per wake.
        public var nonce: String
        public var jobs: [Job]

        public init(namespace: String, gateway: String, issuedAt: Int64, nonce: String, jobs: [Job]) {
            self.namespace = namespace
            self.gateway = gateway
            self.issuedAt = issuedAt
            self.nonce = nonce
            self.jobs = jobs
        }
    }

    /// Jobs in one wake at most (its body stays well under `maxBodyBytes`).
    public static let maxJobs = 256

    /// The AGC's answer to a wake.
    public enum Verdict: Equatable, Sendable {
        case accepted(Request)
        case tooLarge
        case badSignature
        case malformed(String)
        /// Signed for another gateway.
        case wrongGateway
        /// Issued more than `maxSkewSeconds` away from now.
        case stale
        case replayed

        public var status: Int {
            switch self {
            case .accepted: return 202
            case .tooLarge: return 413
            case .badSignature, .stale: return 401
            case .malformed: return 400
            case .wrongGateway: return 403
            case .replayed: return 409
            }
        }

        /// The `outcome` label of `agc_wakes_total`.
        public var label: String {
            switch self {
            case .accepted: return "accepted"
            case .tooLarge: return "too_large"
            case .badSignature: return "bad_signature"
            case .malformed: return "malformed"
            case .wrongGateway: return "wrong_gateway"
            case .stale: return "stale"
            case .replayed: return "replayed"
            }
        }

        public static let labels = ["accepted", "too_large", "bad_signature", "malformed", "wrong_gateway", "stale", "replayed"]
    }

    /// The body the GMC sends (sorted keys: the same request always signs the same bytes).
    public static func body(_ request: Request) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(request)).map(Array.init) ?? []
    }

    public static func signatureHeaderValue(_ signature: [UInt8]) -> String {
        "ed25519=" + Data(signature).base64EncodedString()
    }

    /// The AGC's whole decision on one wake. `replays` only remembers nonces of wakes whose
    /// signature checked out (a forger cannot fill it).
    public static func check(body: [UInt8], signature: String?, key: WakeVerifyKey, namespace: String, gateway: String,
                             epochSeconds: Int64, replays: inout Webhook.ReplayGuard, now: Instant) -> Verdict {
        guard body.count <= maxBodyBytes else { return .tooLarge }
        guard let signature, signature.hasPrefix("ed25519="), let raw = Data(base64Encoded: String(signature.dropFirst(8))),
            key.verify(body, signature: Array(raw))
        else { return .badSignature }
        let request: Request
        do {
            request = try JSONDecoder().decode(Request.self, from: Data(body))
        } catch {
            return .malformed("wake body")
        }
        guard request.namespace == namespace, request.gateway == gateway else { return .wrongGateway }
        guard abs(epochSeconds - request.issuedAt) <= maxSkewSeconds else { return .stale }
        guard !request.nonce.isEmpty, request.nonce.utf8.count <= 256, !request.jobs.isEmpty, request.jobs.count <= maxJobs,
            request.jobs.allSatisfy({ $0.runnerGroup.utf8.count <= 253 })
        else {
            return .malformed("nonce or jobs")
        }
        guard replays.admit(request.nonce, now: now) else { return .replayed }
        return .accepted(request)
    }

    /// RFC 3339 (GitHub's `created_at`) to epoch seconds; nil when it does not read.
    public static func epochSeconds(_ rfc3339: String?) -> Int64? { rfc3339.flatMap(ISO8601.epochSeconds) }
}

/// The GMC's Ed25519 key for signing wakes, from a PEM file (`openssl genpkey -algorithm
/// ed25519`). Owns the libcrypto key; the PEM text is not kept.
public final class WakeSigningKey: @unchecked Sendable {
    private let key: OpaquePointer
    /// The raw 32-byte public key, which every AGC is given.
    public let publicKey: [UInt8]

    /// Why a key could not be loaded (never includes key material).
    public struct LoadError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public convenience init(pemFile path: String) throws(LoadError) {
        guard let bytes = Posix.readSmallFile(path, limit: 16 * 1024) else { throw LoadError(description: "cannot read \(path)") }
        try self.init(pem: bytes)
    }

    public init(pem: [UInt8]) throws(LoadError) {
        guard let parsed = PEMPrivateKey.parse(pem) else { throw LoadError(description: "not a PEM private key") }
        guard EVP_PKEY_get_base_id(parsed) == EVP_PKEY_ED25519 else {
            EVP_PKEY_free(parsed)
            throw LoadError(description: "the key is not Ed25519 (make one with: openssl genpkey -algorithm ed25519)")
        }
        var publicHalf = [UInt8](repeating: 0, count: 32)
        var length = 32
        guard EVP_PKEY_get_raw_public_key(parsed, &publicHalf, &length) == 1, length == 32 else {
            EVP_PKEY_free(parsed)
            throw LoadError(description: "cannot read the key's public half")
        }
        key = parsed
        publicKey = publicHalf
    }

    deinit { EVP_PKEY_free(key) }

    /// Ed25519 over `message` (64 bytes), nil only if libcrypto fails.
    public func sign(_ message: [UInt8]) -> [UInt8]? {
        guard let context = EVP_MD_CTX_new() else { return nil }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, nil, nil, key) == 1 else { return nil }
        var signature = [UInt8](repeating: 0, count: 64)
        var length = 64
        let done = message.withUnsafeBufferPointer { input in
            EVP_DigestSign(context, &signature, &length, input.baseAddress, input.count)
        }
        return done == 1 && length == 64 ? signature : nil
    }
}

/// An AGC's view of the GMC's wake key: the raw 32-byte Ed25519 public key, given base64 on
/// its command line (`--wake-public-key`; it is not a secret).
public final class WakeVerifyKey: @unchecked Sendable {
    private let key: OpaquePointer
    public let raw: [UInt8]

    public init?(raw: [UInt8]) {
        guard raw.count == 32, let made = raw.withUnsafeBufferPointer({ EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, $0.baseAddress, 32) })
        else { return nil }
        key = made
        self.raw = raw
    }

    public convenience init?(base64: String) {
        guard let data = Data(base64Encoded: base64) else { return nil }
        self.init(raw: Array(data))
    }

    public var base64: String { Data(raw).base64EncodedString() }

    deinit { EVP_PKEY_free(key) }

    public func verify(_ message: [UInt8], signature: [UInt8]) -> Bool {
        guard signature.count == 64, let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, nil, nil, key) == 1 else { return false }
        return message.withUnsafeBufferPointer { input in
            signature.withUnsafeBufferPointer { EVP_DigestVerify(context, $0.baseAddress, 64, input.baseAddress, input.count) }
        } == 1
    }
}
