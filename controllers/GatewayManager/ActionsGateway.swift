import Foundation
import Yams

/// The `ActionsGateway` v1alpha1 resource (spec/gateway-api.md section 1), as the GMC reads it.
/// Optional fields stay optional here; `Defaulted` holds the values after defaults.
public struct ActionsGateway: Codable, Sendable, Equatable {
    public var apiVersion: String?
    public var kind: String?
    public var metadata: Metadata
    public var spec: Spec

    /// `ActionsGateway.Metadata` of the ActionsGateway resource, as a tenant writes it.
    public struct Metadata: Codable, Sendable, Equatable {
        public var name: String?
        public var namespace: String?
        public var generation: Int?
        public var uid: String?
        public var labels: [String: String]?
    }

    /// `ActionsGateway.Spec` of the ActionsGateway resource, as a tenant writes it.
    public struct Spec: Codable, Sendable, Equatable {
        public var gitHubAppRef: Reference?
        public var gitHubURL: String?
        public var securityProfile: String?
        public var proxy: Proxy?
        public var runnerGroups: [RunnerGroup]?
        public var oidc: OIDCSpec?
    }

    /// `ActionsGateway.Reference` of the ActionsGateway resource, as a tenant writes it.
    public struct Reference: Codable, Sendable, Equatable {
        public var name: String?
    }

    /// `ActionsGateway.Proxy` of the ActionsGateway resource, as a tenant writes it.
    public struct Proxy: Codable, Sendable, Equatable {
        public var minReplicas: Int?
        public var maxReplicas: Int?
        public var targetCPUUtilizationPercentage: Int?
        public var extraAllowedHosts: [String]?
    }

    /// `ActionsGateway.RunnerGroup` of the ActionsGateway resource, as a tenant writes it.
    public struct RunnerGroup: Codable, Sendable, Equatable {
        public var name: String?
        public var runnerLabels: [String]?
        public var maxListeners: Int?
        public var minListeners: Int?
        public var maxWorkers: Int?
        public var priorityTiers: [PriorityTier]?
        public var maxEvictionRetries: Int?
        public var completedPodTTL: String?
        public var podTemplate: WorkerPodTemplate?
        // The AGC's fields (spec/agc.md section 2).
        public var acquisition: String?
        public var gitHubRunnerGroup: String?
        public var scaleSetName: String?
        public var retryOOMKilled: Bool?
        public var pendingPodDeadline: String?
        public var maxWorkerLifetime: String?
        public var maxPodsPerNode: Int?
        /// `org/team-slug`s: a run's triggering actor must be an active member of one.
        public var allowedTeams: [String]?
        /// `deny` (default) or `allow`: what a job gets when GitHub cannot say.
        public var allowedTeamsOnError: String?
        /// A pool of the platform's `--node-pools`.
        public var nodePool: String?
    }

    /// `ActionsGateway.PriorityTier` of the ActionsGateway resource, as a tenant writes it.
    public struct PriorityTier: Codable, Sendable, Equatable {
        public var priorityClassName: String?
        public var threshold: Int?
        public var reclaimQuota: Bool?
    }

    /// Parses a CR from YAML (unknown fields are ignored here; the API server's structural
    /// schema prunes them). Duplicate keys are an error (Yams' parser refuses them).
    public static func parse(yaml: String) throws -> ActionsGateway {
        try YAMLDecoder().decode(ActionsGateway.self, from: yaml)
    }

    /// Decodes a CR as the API server returned it. A field of the wrong type or out of the
    /// integer range (a hostile or pre-schema CR) becomes a problem naming the field, so the
    /// reconcile reports it as a condition instead of failing, and retrying, forever.
    public static func decode(json: [UInt8]) -> Result<ActionsGateway, GatewayRejection> {
        do {
            return .success(try JSONDecoder().decode(ActionsGateway.self, from: Data(json)))
        } catch let error as DecodingError {
            var problem = GatewayProblem(decoding: error)
            if problem.field == "(object)" {
                // Foundation's decoder reports a number too large for its field without a
                // path; Yams (JSON is YAML) finds the field, and refuses the same value.
                do {
                    _ = try YAMLDecoder().decode(ActionsGateway.self, from: String(decoding: json, as: UTF8.self))
                } catch let located as DecodingError {
                    let retry = GatewayProblem(decoding: located)
                    if retry.field != "(object)" { problem = retry }
                } catch {}
            }
            return .failure(GatewayRejection(problems: [problem]))
        } catch {
            return .failure(GatewayRejection(problems: [GatewayProblem(field: "(object)", message: "\(error)")]))
        }
    }
}

/// A GitHub team, as `runnerGroups[].allowedTeams` names it (`org/team-slug`).
public struct TeamRef: Sendable, Hashable, CustomStringConvertible {
    public var organization: String
    public var slug: String

    public init(organization: String, slug: String) {
        self.organization = organization
        self.slug = slug
    }

    /// `org/slug`, each part a GitHub login or slug (letters, digits, '-', '_'; slugs are
    /// lowercase), so it can only ever name one API path.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let org = parts.first, let slug = parts.last, (1...39).contains(org.utf8.count), (1...100).contains(slug.utf8.count),
            org.utf8.allSatisfy({ Self.isLoginByte($0) }), slug.utf8.allSatisfy({ Self.isLoginByte($0) && !(0x41...0x5a).contains($0) }),
            org.first != "-", slug.first != "-"
        else { return nil }
        organization = String(org)
        self.slug = String(slug)
    }

    static func isLoginByte(_ byte: UInt8) -> Bool {
        (0x61...0x7a).contains(byte) || (0x41...0x5a).contains(byte) || (0x30...0x39).contains(byte) || byte == 0x2d || byte == 0x5f
    }

    public var description: String { "\(organization)/\(slug)" }
}

/// A gateway after defaults, validated: what the desired-state function builds from.
public struct DefaultedGateway: Sendable, Equatable {
    /// One runner group with every default applied.
    public struct Group: Sendable, Equatable {
        public var name: String
        public var runnerLabels: [String]
        public var maxListeners: Int
        /// classic: virtual sessions held open even when idle.
        public var minListeners = 1
        public var maxWorkers: Int
        public var tiers: [(priorityClassName: String, threshold: Int)]
        public var maxEvictionRetries: Int
        public var completedPodTTLSeconds: Int
        public var podPriorityClassName: String?
        /// `scaleSet` or `classic`.
        public var acquisition = "scaleSet"
        public var gitHubRunnerGroup = "Default"
        public var scaleSetName: String
        public var retryOOMKilled = true
        public var pendingPodDeadlineSeconds = 600
        public var maxWorkerLifetimeSeconds = 43_200
        /// The first tier deletes lower-tier workers to fit the quota (spec/agc.md section 4 step 4).
        public var reclaimQuota = false
        /// Nil: no per-node limit.
        public var maxPodsPerNode: Int?
        /// Empty: every run may use the group; else its triggering actor must be an active
        /// member of one of these teams (of the gateway's own organisation).
        public var allowedTeams: [TeamRef] = []
        /// When GitHub cannot say whether the actor is a member: run the job (true) or not.
        public var allowedTeamsFailOpen = false
        /// The platform's node pool the group's workers run on (nil: wherever the template says).
        public var nodePool: String?

        public init(
            name: String, runnerLabels: [String], maxListeners: Int, maxWorkers: Int,
            tiers: [(priorityClassName: String, threshold: Int)], maxEvictionRetries: Int, completedPodTTLSeconds: Int,
            podPriorityClassName: String?
        ) {
            scaleSetName = name
            self.name = name
            self.runnerLabels = runnerLabels
            self.maxListeners = maxListeners
            self.maxWorkers = maxWorkers
            self.tiers = tiers
            self.maxEvictionRetries = maxEvictionRetries
            self.completedPodTTLSeconds = completedPodTTLSeconds
            self.podPriorityClassName = podPriorityClassName
        }

        public static func == (lhs: Group, rhs: Group) -> Bool {
            lhs.name == rhs.name && lhs.runnerLabels == rhs.runnerLabels && lhs.maxListeners == rhs.maxListeners && lhs.minListeners == rhs.minListeners
                && lhs.maxWorkers == rhs.maxWorkers && lhs.tiers.map(\.priorityClassName) == rhs.tiers.map(\.priorityClassName)
                && lhs.tiers.map(\.threshold) == rhs.tiers.map(\.threshold) && lhs.maxEvictionRetries == rhs.maxEvictionRetries
                && lhs.completedPodTTLSeconds == rhs.completedPodTTLSeconds && lhs.podPriorityClassName == rhs.podPriorityClassName
                && lhs.acquisition == rhs.acquisition && lhs.gitHubRunnerGroup == rhs.gitHubRunnerGroup
                && lhs.scaleSetName == rhs.scaleSetName && lhs.retryOOMKilled == rhs.retryOOMKilled
                && lhs.pendingPodDeadlineSeconds == rhs.pendingPodDeadlineSeconds
                && lhs.maxWorkerLifetimeSeconds == rhs.maxWorkerLifetimeSeconds
                && lhs.reclaimQuota == rhs.reclaimQuota && lhs.maxPodsPerNode == rhs.maxPodsPerNode
                && lhs.allowedTeams == rhs.allowedTeams && lhs.allowedTeamsFailOpen == rhs.allowedTeamsFailOpen
                && lhs.nodePool == rhs.nodePool
        }
    }

    public var name: String
    public var namespace: String
    public var gitHubAppSecret: String
    public var gitHubURL: String
    /// The GitHub host (lowercase, checked by the proxy's own host rules) and its port.
    public var gitHubHost: String
    public var gitHubPort: UInt16
    public var securityProfile: String
    public var minReplicas: Int
    public var maxReplicas: Int
    public var targetCPUUtilizationPercentage: Int
    public var extraAllowedHosts: [String]
    public var groups: [Group]
    /// `spec.oidc`, checked; nil when the gateway asks for none.
    public var oidc: OIDCTrust?
    /// The organisation of `gitHubURL` (its first path segment), nil for an enterprise URL.
    public var organization: String?
}
