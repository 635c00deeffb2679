import COpenSSL
import EgressLoop
import EgressProxyCore
import Foundation

/// The webhook router's decisions, with no socket and no clock of its own (issue 18, item 1):
/// what a delivery to `POST /webhook` is answered and where a `workflow_job` `queued` event
/// goes. Everything in a delivery is hostile until its signature checks out, so the order is
/// fixed: size, then the host's secret, then the signature over the raw bytes, then replay,
/// and only then is a byte of JSON parsed.
public enum Webhook {
    /// GitHub's own cap on a delivery's payload.
    public static let maxBodyBytes = 25 << 20
    /// A delivery id seen within this window is a replay.
    public static let replayWindow: Duration = .seconds(600)

    /// What one delivery asked for, as the HTTP layer read it.
    public struct Delivery: Sendable {
        /// `X-GitHub-Enterprise-Host`, or nil for github.com.
        public var enterpriseHost: String?
        /// `X-GitHub-Event`.
        public var event: String?
        /// `X-GitHub-Delivery`.
        public var deliveryID: String?
        /// `X-Hub-Signature-256`: `sha256=` and 64 hex digits.
        public var signature: String?
        public var body: [UInt8]

        public init(enterpriseHost: String?, event: String?, deliveryID: String?, signature: String?, body: [UInt8]) {
            self.enterpriseHost = enterpriseHost
            self.event = event
            self.deliveryID = deliveryID
            self.signature = signature
            self.body = body
        }

        /// The GitHub host the delivery claims to come from (lowercased; github.com without the header).
        public var host: String {
            guard let enterpriseHost, !enterpriseHost.isEmpty else { return "github.com" }
            return enterpriseHost.lowercased()
        }
    }

    /// The answer, and the `outcome` label of the deliveries counter.
    public enum Outcome: Equatable, Sendable {
        case tooLarge
        case unknownHost
        case badSignature
        case malformed(String)
        case replayed
        case pong
        case ignored(String)
        case unrouted
        case routed(Route)

        public var status: Int {
            switch self {
            case .tooLarge: return 413
            case .unknownHost, .badSignature: return 401
            case .malformed: return 400
            case .replayed: return 409
            case .pong: return 200
            case .ignored, .unrouted, .routed: return 202
            }
        }

        public var label: String {
            switch self {
            case .tooLarge: return "too_large"
            case .unknownHost: return "unknown_host"
            case .badSignature: return "bad_signature"
            case .malformed: return "malformed"
            case .replayed: return "replayed"
            case .pong: return "ping"
            case .ignored: return "ignored"
            case .unrouted: return "unrouted"
            case .routed: return "routed"
            }
        }
    }

    /// Where a queued job goes: the gateway and the runner group whose labels it asked for.
    public struct Route: Equatable, Sendable {
        public var namespace: String
        public var gateway: String
        public var runnerGroup: String
        public var jobID: Int64
        public var runID: Int64?
        /// GitHub's own clock: when the job was queued (the queue-time metric's start).
        public var queuedAt: String?
        /// `owner/name`, and the job's display name: how an AGC matches the job it acquires
        /// (a classic job message carries neither the numeric job id nor GitHub's queue time).
        public var repository: String?
        public var jobName: String?
    }

    /// A gateway as the router sees it: which GitHub host and organisation it serves, and each
    /// runner group's labels (its name and `runnerLabels`), lowercased.
    public struct Target: Sendable, Equatable {
        /// A runner group: its name and every label a job may ask it for.
        public struct Group: Sendable, Equatable {
            public var name: String
            public var labels: Set<String>
        }

        public var namespace: String
        public var gateway: String
        public var host: String
        public var organization: String
        public var groups: [Group]

        /// Hosts, organisations and labels are kept lowercased: GitHub compares them so.
        public init(namespace: String, gateway: String, host: String, organization: String, groups: [(name: String, labels: Set<String>)]) {
            self.namespace = namespace
            self.gateway = gateway
            self.host = host.lowercased()
            self.organization = organization.lowercased()
            self.groups = groups.map { Group(name: $0.name, labels: Set($0.labels.map { $0.lowercased() })) }
        }
    }

    /// The whole decision for one delivery. `secrets` maps a host to its webhook secret;
    /// `replays` remembers delivery ids (and is only updated for deliveries whose signature
    /// checked out, so a forger cannot fill it).
    public static func decide(_ delivery: Delivery, secrets: [String: [UInt8]], replays: inout ReplayGuard, now: Instant,
                              targets: [Target]) -> Outcome {
        guard delivery.body.count <= maxBodyBytes else { return .tooLarge }
        guard let secret = secrets[delivery.host] else { return .unknownHost }
        guard Signature.verify(body: delivery.body, header: delivery.signature, secret: secret) else { return .badSignature }
        guard let id = delivery.deliveryID, !id.isEmpty, id.utf8.count <= 128 else { return .malformed("no X-GitHub-Delivery") }
        guard replays.admit(id, now: now) else { return .replayed }
        switch delivery.event {
        case "ping"?:
            return .pong
        case "workflow_job"?:
            break
        case let other?:
            return .ignored("event \(other.prefix(64))")
        case nil:
            return .malformed("no X-GitHub-Event")
        }
        let event: WorkflowJobEvent
        do {
            event = try JSONDecoder().decode(WorkflowJobEvent.self, from: Data(delivery.body))
        } catch {
            return .malformed("workflow_job payload")
        }
        guard event.action == "queued" else { return .ignored("action \(event.action.prefix(32))") }
        return route(event, host: delivery.host, targets: targets).map(Outcome.routed) ?? .unrouted
    }

    /// The first gateway (in the order given) serving the job's host and organisation with a
    /// group that has every label the job asked for (`runs-on`; `self-hosted` is implied).
    static func route(_ event: WorkflowJobEvent, host: String, targets: [Target]) -> Route? {
        let organization = (event.organization?.login ?? event.repository?.owner?.login ?? "").lowercased()
        let wanted = Set(event.workflowJob.labels.map { $0.lowercased() }).subtracting(["self-hosted"])
        for target in targets where target.host == host && target.organization == organization {
            for group in target.groups where wanted.isSubset(of: group.labels) && !wanted.isEmpty {
                return Route(namespace: target.namespace, gateway: target.gateway, runnerGroup: group.name, jobID: event.workflowJob.id,
                             runID: event.workflowJob.runID, queuedAt: event.workflowJob.createdAt,
                             repository: event.repository?.fullName, jobName: event.workflowJob.name)
            }
        }
        return nil
    }

    /// `X-Hub-Signature-256`: HMAC-SHA256 of the raw body under the host's secret.
    public enum Signature {
        public static func verify(body: [UInt8], header: String?, secret: [UInt8]) -> Bool {
            guard let header, header.hasPrefix("sha256="), !secret.isEmpty,
                let given = SHA256Digest.fromHex(String(header.dropFirst(7)))
            else { return false }
            let expected = hmac(body, key: secret)
            // Constant time: how many leading bytes matched must not show in the timing.
            return expected.count == 32 && ConstantTime.equals(given, expected)
        }

        /// HMAC-SHA256 through libcrypto.
        public static func hmac(_ data: [UInt8], key: [UInt8]) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: 32)
            var length: UInt32 = 0
            let ok = key.withUnsafeBytes { keyBytes in
                data.withUnsafeBytes { dataBytes in
                    out.withUnsafeMutableBufferPointer { outBytes in
                        HMAC(EVP_sha256(), keyBytes.baseAddress, Int32(keyBytes.count), dataBytes.baseAddress?.assumingMemoryBound(to: UInt8.self),
                             dataBytes.count, outBytes.baseAddress, &length)
                    }
                }
            }
            return ok != nil && length == 32 ? out : []
        }
    }

    /// Delivery ids seen within `replayWindow`, oldest first, at most `capacity` of them (past
    /// it the oldest is forgotten early: a flood of valid deliveries costs bounded memory).
    public struct ReplayGuard: Sendable {
        private var seen: [String: Instant] = [:]
        private var order: [(id: String, at: Instant)] = []
        private var head = 0
        public let capacity: Int

        public init(capacity: Int = 100_000) { self.capacity = max(1, capacity) }

        public var count: Int { seen.count }

        /// True the first time `id` is seen within the window (and remembers it).
        public mutating func admit(_ id: String, now: Instant) -> Bool {
            expire(now: now)
            if seen[id] != nil { return false }
            if seen.count >= capacity, head < order.count {
                seen[order[head].id] = nil
                head += 1
            }
            seen[id] = now
            order.append((id, now))
            if head > 1024 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
            return true
        }

        private mutating func expire(now: Instant) {
            while head < order.count, now.since(order[head].at) >= Webhook.replayWindow {
                if seen[order[head].id] == order[head].at { seen[order[head].id] = nil }
                head += 1
            }
        }
    }
}

/// The fields of GitHub's `workflow_job` webhook payload the router uses; everything else is
/// ignored, and a missing required field is a malformed delivery, not a crash.
struct WorkflowJobEvent: Decodable, Sendable {
    /// `workflow_job`: GitHub's numeric job id, its run, the `runs-on` labels and when it was queued.
    struct Job: Decodable, Sendable {
        var id: Int64
        var runID: Int64?
        var labels: [String]
        var createdAt: String?
        var name: String?

        enum CodingKeys: String, CodingKey {
            case id, labels, name
            case runID = "run_id"
            case createdAt = "created_at"
        }
    }

    /// An organisation or a repository owner: only its login is read.
    struct Account: Decodable, Sendable { var login: String? }

    /// The repository: its owner when the payload names no organisation (a user's
    /// repository), and its `owner/name`.
    struct Repository: Decodable, Sendable {
        var owner: Account?
        var fullName: String?

        enum CodingKeys: String, CodingKey {
            case owner
            case fullName = "full_name"
        }
    }

    var action: String
    var workflowJob: Job
    var organization: Account?
    var repository: Repository?

    enum CodingKeys: String, CodingKey {
        case action, organization, repository
        case workflowJob = "workflow_job"
    }
}
