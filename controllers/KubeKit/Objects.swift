import Foundation

/// Codable subsets of the Kubernetes objects the GMC and AGC touch: only the fields we set or
/// read, every one optional so an object round-trips without inventing values. Encoded with
/// sorted keys, so equal objects encode to equal bytes (create-or-patch compares them).

public struct ObjectMeta: Codable, Sendable, Equatable {
    public var name: String?
    public var namespace: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?
    public var ownerReferences: [OwnerReference]?
    public var finalizers: [String]?
    public var resourceVersion: String?
    public var uid: String?
    public var generation: Int?
    public var creationTimestamp: String?
    public var deletionTimestamp: String?
    public var deletionGracePeriodSeconds: Int64?

    public init(name: String? = nil, namespace: String? = nil, labels: [String: String]? = nil,
                annotations: [String: String]? = nil, ownerReferences: [OwnerReference]? = nil)
    {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.ownerReferences = ownerReferences
    }
}

/// The Kubernetes API's `OwnerReference`, reduced to the fields we write or read.
public struct OwnerReference: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var kind: String
    public var name: String
    public var uid: String
    public var controller: Bool?
    public var blockOwnerDeletion: Bool?

    public init(apiVersion: String, kind: String, name: String, uid: String, controller: Bool = true) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.name = name
        self.uid = uid
        self.controller = controller
        blockOwnerDeletion = true
    }
}

/// The Kubernetes API's `LabelSelector`, reduced to the fields we write or read.
public struct LabelSelector: Codable, Sendable, Equatable {
    public var matchLabels: [String: String]?
    public init(matchLabels: [String: String]) { self.matchLabels = matchLabels }
}

/// A typed subset of one Kubernetes kind: where it lives in the API, its kind name and its
/// metadata. Every object type KubeKit models adopts it, so paths and kinds are declared once,
/// next to the type, instead of in switches over all kinds.
public protocol KubeKind: Codable, Sendable, Equatable, Cacheable {
    static var resource: KubeResource { get }
    static var kindName: String { get }
    var metadata: ObjectMeta { get }
}

/// A Kubernetes object of one of the kinds a gateway is made of, for lists and YAML streams.
public enum KubeObject: Encodable, Sendable, Equatable {
    case namespace(Namespace)
    case serviceAccount(ServiceAccount)
    case role(Role)
    case roleBinding(RoleBinding)
    case networkPolicy(NetworkPolicy)
    case configMap(ConfigMap)
    case deployment(Deployment)
    case service(Service)
    case podDisruptionBudget(PodDisruptionBudget)
    case horizontalPodAutoscaler(HorizontalPodAutoscaler)

    /// The typed object inside (the only switch over the cases).
    public var wrapped: any KubeKind {
        switch self {
        case .namespace(let object): return object
        case .serviceAccount(let object): return object
        case .role(let object): return object
        case .roleBinding(let object): return object
        case .networkPolicy(let object): return object
        case .configMap(let object): return object
        case .deployment(let object): return object
        case .service(let object): return object
        case .podDisruptionBudget(let object): return object
        case .horizontalPodAutoscaler(let object): return object
        }
    }

    public func encode(to encoder: any Encoder) throws { try wrapped.encode(to: encoder) }

    public var kind: String { type(of: wrapped).kindName }

    public var metadata: ObjectMeta { wrapped.metadata }

    /// Where this object's kind lives.
    public var resource: KubeResource { type(of: wrapped).resource }
}

/// The Kubernetes API's `Namespace`, reduced to the fields we write or read.
public struct Namespace: Codable, Sendable, Equatable {
    public var apiVersion = "v1"
    public var kind = "Namespace"
    public var metadata: ObjectMeta
    public init(metadata: ObjectMeta) { self.metadata = metadata }
}

/// The Kubernetes API's `ServiceAccount`, reduced to the fields we write or read.
public struct ServiceAccount: Codable, Sendable, Equatable {
    public var apiVersion = "v1"
    public var kind = "ServiceAccount"
    public var metadata: ObjectMeta
    public var automountServiceAccountToken: Bool?
    public init(metadata: ObjectMeta, automountServiceAccountToken: Bool?) {
        self.metadata = metadata
        self.automountServiceAccountToken = automountServiceAccountToken
    }
}

/// The Kubernetes API's `PolicyRule`, reduced to the fields we write or read.
public struct PolicyRule: Codable, Sendable, Equatable {
    public var apiGroups: [String]
    public var resources: [String]
    public var verbs: [String]
    public var resourceNames: [String]?
    public init(apiGroups: [String], resources: [String], verbs: [String], resourceNames: [String]? = nil) {
        self.apiGroups = apiGroups
        self.resources = resources
        self.verbs = verbs
        self.resourceNames = resourceNames
    }
}

/// The Kubernetes API's `Role`, reduced to the fields we write or read.
public struct Role: Codable, Sendable, Equatable {
    public var apiVersion = "rbac.authorization.k8s.io/v1"
    public var kind = "Role"
    public var metadata: ObjectMeta
    public var rules: [PolicyRule]
    public init(metadata: ObjectMeta, rules: [PolicyRule]) {
        self.metadata = metadata
        self.rules = rules
    }
}

/// The Kubernetes API's `RoleBinding`, reduced to the fields we write or read.
public struct RoleBinding: Codable, Sendable, Equatable {
    /// `RoleBinding.RoleRef`, as the Kubernetes API defines it (the fields we use).
    public struct RoleRef: Codable, Sendable, Equatable {
        public var apiGroup = "rbac.authorization.k8s.io"
        public var kind = "Role"
        public var name: String
    }

    /// `RoleBinding.Subject`, as the Kubernetes API defines it (the fields we use).
    public struct Subject: Codable, Sendable, Equatable {
        public var kind = "ServiceAccount"
        public var name: String
        public var namespace: String
    }

    public var apiVersion = "rbac.authorization.k8s.io/v1"
    public var kind = "RoleBinding"
    public var metadata: ObjectMeta
    public var roleRef: RoleRef
    public var subjects: [Subject]
    public init(metadata: ObjectMeta, role: String, serviceAccount: String, namespace: String) {
        self.metadata = metadata
        roleRef = RoleRef(name: role)
        subjects = [Subject(name: serviceAccount, namespace: namespace)]
    }
}

/// The Kubernetes API's `NetworkPolicy`, reduced to the fields we write or read.
public struct NetworkPolicy: Codable, Sendable, Equatable {
    /// `NetworkPolicy.Port`, as the Kubernetes API defines it (the fields we use).
    public struct Port: Codable, Sendable, Equatable {
        public var `protocol`: String
        public var port: Int
        public init(_ proto: String, _ port: Int) {
            self.protocol = proto
            self.port = port
        }
    }

    /// `NetworkPolicy.IPBlock`, as the Kubernetes API defines it (the fields we use).
    public struct IPBlock: Codable, Sendable, Equatable {
        public var cidr: String
        public var except: [String]?
        public init(cidr: String, except: [String]? = nil) {
            self.cidr = cidr
            self.except = except
        }
    }

    /// `NetworkPolicy.Peer`, as the Kubernetes API defines it (the fields we use).
    public struct Peer: Codable, Sendable, Equatable {
        public var podSelector: LabelSelector?
        public var namespaceSelector: LabelSelector?
        public var ipBlock: IPBlock?
        public init(podSelector: LabelSelector? = nil, namespaceSelector: LabelSelector? = nil, ipBlock: IPBlock? = nil) {
            self.podSelector = podSelector
            self.namespaceSelector = namespaceSelector
            self.ipBlock = ipBlock
        }
    }

    /// `NetworkPolicy.Rule`, as the Kubernetes API defines it (the fields we use).
    public struct Rule: Codable, Sendable, Equatable {
        public var to: [Peer]?
        public var from: [Peer]?
        public var ports: [Port]?
        public init(to: [Peer]? = nil, from: [Peer]? = nil, ports: [Port]? = nil) {
            self.to = to
            self.from = from
            self.ports = ports
        }
    }

    /// `NetworkPolicy.Spec`, as the Kubernetes API defines it (the fields we use).
    public struct Spec: Codable, Sendable, Equatable {
        public var podSelector: LabelSelector
        public var policyTypes: [String]
        public var ingress: [Rule]?
        public var egress: [Rule]?
        public init(podSelector: LabelSelector, policyTypes: [String], ingress: [Rule]? = nil, egress: [Rule]? = nil) {
            self.podSelector = podSelector
            self.policyTypes = policyTypes
            self.ingress = ingress
            self.egress = egress
        }
    }

    public var apiVersion = "networking.k8s.io/v1"
    public var kind = "NetworkPolicy"
    public var metadata: ObjectMeta
    public var spec: Spec
    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// The Kubernetes API's `ConfigMap`, reduced to the fields we write or read.
public struct ConfigMap: Codable, Sendable, Equatable {
    public var apiVersion = "v1"
    public var kind = "ConfigMap"
    public var metadata: ObjectMeta
    public var data: [String: String]
    public init(metadata: ObjectMeta, data: [String: String]) {
        self.metadata = metadata
        self.data = data
    }
}

/// The Kubernetes API's `Event`, reduced to the fields we write or read.
public struct Event: Codable, Sendable, Equatable {
    /// `Event.InvolvedObject`, as the Kubernetes API defines it (the fields we use).
    public struct InvolvedObject: Codable, Sendable, Equatable {
        public var apiVersion: String?
        public var kind: String?
        public var name: String?
        public var namespace: String?
        public var uid: String?

        public init(apiVersion: String?, kind: String?, name: String?, namespace: String?, uid: String?) {
            self.apiVersion = apiVersion
            self.kind = kind
            self.name = name
            self.namespace = namespace
            self.uid = uid
        }
    }

    public var apiVersion = "v1"
    public var kind = "Event"
    public var metadata: ObjectMeta
    public var involvedObject: InvolvedObject
    public var reason: String?
    public var message: String?
    public var type: String?
    public var count: Int?
    public var firstTimestamp: String?
    public var lastTimestamp: String?
    public var source: Source?

    /// `Event.Source`: which component reports the event.
    public struct Source: Codable, Sendable, Equatable {
        public var component: String?
        public init(component: String?) { self.component = component }
    }

    public init(metadata: ObjectMeta, involvedObject: InvolvedObject, reason: String?, message: String?, type: String?,
                count: Int?, firstTimestamp: String?, lastTimestamp: String?, source: Source?) {
        self.metadata = metadata
        self.involvedObject = involvedObject
        self.reason = reason
        self.message = message
        self.type = type
        self.count = count
        self.firstTimestamp = firstTimestamp
        self.lastTimestamp = lastTimestamp
        self.source = source
    }
}

/// The Kubernetes API's `Pod`, reduced to what a controller reads of pods it created: who
/// it is, where it runs, what it asked for, and how it is doing. (Pods are created from a
/// tenant's whole template as JSON; this subset is the cache's read model.)
public struct Pod: Codable, Sendable, Equatable {
    /// `Pod.Spec`: the fields admission and recovery read.
    public struct Spec: Codable, Sendable, Equatable {
        /// One container's name and resources.
        public struct Container: Codable, Sendable, Equatable {
            public var name: String
            public var resources: ResourceRequirements?
        }

        public var nodeName: String?
        public var priorityClassName: String?
        public var activeDeadlineSeconds: Int64?
        public var containers: [Container]?
    }

    /// `PodCondition`.
    public struct Condition: Codable, Sendable, Equatable {
        public var type: String
        public var status: String
        public var reason: String?
        public var lastTransitionTime: String?
    }

    /// `ContainerStatus`, reduced to its state.
    public struct ContainerStatus: Codable, Sendable, Equatable {
        /// `ContainerState`: exactly one of the three is set.
        public struct State: Codable, Sendable, Equatable {
            /// `ContainerStateRunning`.
            public struct Running: Codable, Sendable, Equatable { public var startedAt: String? }
            /// `ContainerStateTerminated`.
            public struct Terminated: Codable, Sendable, Equatable {
                public var exitCode: Int?
                public var reason: String?
                public var startedAt: String?
                public var finishedAt: String?
            }
            /// `ContainerStateWaiting`.
            public struct Waiting: Codable, Sendable, Equatable { public var reason: String? }
            public var running: Running?
            public var terminated: Terminated?
            public var waiting: Waiting?
        }

        public var name: String
        public var state: State?
    }

    /// `Pod.Status`, as the Kubernetes API defines it (the fields we use).
    public struct Status: Codable, Sendable, Equatable {
        public var phase: String?
        public var reason: String?
        public var message: String?
        public var conditions: [Condition]?
        public var containerStatuses: [ContainerStatus]?
        public var startTime: String?
    }

    public var apiVersion: String? = "v1"
    public var kind: String? = "Pod"
    public var metadata: ObjectMeta
    public var spec: Spec?
    public var status: Status?

    /// Pending or Running (what counts against a ceiling); a pod being deleted still counts
    /// until its phase is terminal.
    public var isActive: Bool { !isTerminal }

    /// Succeeded or Failed: the pod will not run again.
    public var isTerminal: Bool { status?.phase == "Succeeded" || status?.phase == "Failed" }
}

/// The Kubernetes API's `Secret`, reduced to the fields we write or read (`data` is base64).
public struct Secret: Codable, Sendable, Equatable {
    public var apiVersion: String? = "v1"
    public var kind: String? = "Secret"
    public var metadata: ObjectMeta
    public var type: String?
    public var data: [String: String]?

    public init(metadata: ObjectMeta, data: [String: [UInt8]]) {
        self.metadata = metadata
        type = "Opaque"
        self.data = data.mapValues { Data($0).base64EncodedString() }
    }
}

/// The Kubernetes API's `ResourceQuota`, reduced to what admission reads.
public struct ResourceQuota: Codable, Sendable, Equatable {
    /// `ScopedResourceSelectorRequirement`.
    public struct ScopeRequirement: Codable, Sendable, Equatable {
        public var scopeName: String
        public var `operator`: String
        public var values: [String]?
        public init(scopeName: String, operator op: String, values: [String]?) {
            self.scopeName = scopeName
            self.operator = op
            self.values = values
        }
    }

    /// `ScopeSelector`.
    public struct ScopeSelector: Codable, Sendable, Equatable {
        public var matchExpressions: [ScopeRequirement]?
        public init(matchExpressions: [ScopeRequirement]?) { self.matchExpressions = matchExpressions }
    }

    /// `ResourceQuotaSpec`.
    public struct Spec: Codable, Sendable, Equatable {
        public var hard: [String: String]?
        public var scopes: [String]?
        public var scopeSelector: ScopeSelector?
        public init(hard: [String: String]?, scopes: [String]? = nil, scopeSelector: ScopeSelector? = nil) {
            self.hard = hard
            self.scopes = scopes
            self.scopeSelector = scopeSelector
        }
    }

    /// `ResourceQuotaStatus`.
    public struct Status: Codable, Sendable, Equatable {
        public var hard: [String: String]?
        public var used: [String: String]?
        public init(used: [String: String]?) { self.used = used }
    }

    public var apiVersion: String? = "v1"
    public var kind: String? = "ResourceQuota"
    public var metadata: ObjectMeta
    public var spec: Spec?
    public var status: Status?

    public init(metadata: ObjectMeta, spec: Spec?, status: Status?) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

/// Where each kind lives: declared once per type.
extension Namespace: KubeKind {
    public static let resource = KubeResource.namespaces
    public static let kindName = "Namespace"
}
extension ServiceAccount: KubeKind {
    public static let resource = KubeResource.serviceAccounts
    public static let kindName = "ServiceAccount"
}
extension Role: KubeKind {
    public static let resource = KubeResource.roles
    public static let kindName = "Role"
}
extension RoleBinding: KubeKind {
    public static let resource = KubeResource.roleBindings
    public static let kindName = "RoleBinding"
}
extension NetworkPolicy: KubeKind {
    public static let resource = KubeResource.networkPolicies
    public static let kindName = "NetworkPolicy"
}
extension ConfigMap: KubeKind {
    public static let resource = KubeResource.configMaps
    public static let kindName = "ConfigMap"
}
extension Deployment: KubeKind {
    public static let resource = KubeResource.deployments
    public static let kindName = "Deployment"
}
extension Service: KubeKind {
    public static let resource = KubeResource.services
    public static let kindName = "Service"
}
extension PodDisruptionBudget: KubeKind {
    public static let resource = KubeResource.podDisruptionBudgets
    public static let kindName = "PodDisruptionBudget"
}
extension HorizontalPodAutoscaler: KubeKind {
    public static let resource = KubeResource.horizontalPodAutoscalers
    public static let kindName = "HorizontalPodAutoscaler"
}
extension Event: KubeKind {
    public static let resource = KubeResource(group: "", version: "v1", plural: "events")
    public static let kindName = "Event"
}
extension Pod: KubeKind {
    public static let resource = KubeResource.pods
    public static let kindName = "Pod"
}
extension Secret: KubeKind {
    public static let resource = KubeResource.secrets
    public static let kindName = "Secret"
}
extension ResourceQuota: KubeKind {
    public static let resource = KubeResource(group: "", version: "v1", plural: "resourcequotas")
    public static let kindName = "ResourceQuota"
}
