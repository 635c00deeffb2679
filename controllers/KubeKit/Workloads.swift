/// Pod, Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler (v2) subsets.

public struct EnvVar: Codable, Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// The Kubernetes API's `ContainerPort`, reduced to the fields we write or read.
public struct ContainerPort: Codable, Sendable, Equatable {
    public var name: String
    public var containerPort: Int
    public var `protocol` = "TCP"
    public init(name: String, containerPort: Int) {
        self.name = name
        self.containerPort = containerPort
    }
}

/// The Kubernetes API's `Probe`, reduced to the fields we write or read.
public struct Probe: Codable, Sendable, Equatable {
    /// `Probe.HTTPGet`, as the Kubernetes API defines it (the fields we use).
    public struct HTTPGet: Codable, Sendable, Equatable {
        public var path: String
        public var port: String
    }

    public var httpGet: HTTPGet
    public var periodSeconds: Int?
    public var failureThreshold: Int?
    public init(path: String, port: String, periodSeconds: Int = 5, failureThreshold: Int = 3) {
        httpGet = HTTPGet(path: path, port: port)
        self.periodSeconds = periodSeconds
        self.failureThreshold = failureThreshold
    }
}

/// The Kubernetes API's `SecurityContext`, reduced to the fields we write or read.
public struct SecurityContext: Codable, Sendable, Equatable {
    /// `SecurityContext.Capabilities`, as the Kubernetes API defines it (the fields we use).
    public struct Capabilities: Codable, Sendable, Equatable {
        public var drop: [String]
    }

    /// `SecurityContext.SeccompProfile`, as the Kubernetes API defines it (the fields we use).
    public struct SeccompProfile: Codable, Sendable, Equatable {
        public var type: String
    }

    public var runAsNonRoot: Bool?
    public var runAsUser: Int?
    public var readOnlyRootFilesystem: Bool?
    public var allowPrivilegeEscalation: Bool?
    public var capabilities: Capabilities?
    public var seccompProfile: SeccompProfile?

    /// Non-root, read-only root, no privilege escalation, every capability dropped, RuntimeDefault seccomp.
    public static let locked = SecurityContext(
        runAsNonRoot: true, runAsUser: 65532, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false,
        capabilities: Capabilities(drop: ["ALL"]), seccompProfile: SeccompProfile(type: "RuntimeDefault"))
}

/// The Kubernetes API's `VolumeMount`, reduced to the fields we write or read.
public struct VolumeMount: Codable, Sendable, Equatable {
    public var name: String
    public var mountPath: String
    public var readOnly: Bool?
    public init(name: String, mountPath: String, readOnly: Bool = true) {
        self.name = name
        self.mountPath = mountPath
        self.readOnly = readOnly
    }
}

/// The Kubernetes API's `Volume`, reduced to the fields we write or read.
public struct Volume: Codable, Sendable, Equatable {
    /// `Volume.SecretSource`, as the Kubernetes API defines it (the fields we use).
    public struct SecretSource: Codable, Sendable, Equatable {
        public var secretName: String
    }

    /// `Volume.ConfigMapSource`, as the Kubernetes API defines it (the fields we use).
    public struct ConfigMapSource: Codable, Sendable, Equatable {
        public var name: String
    }

    public var name: String
    public var secret: SecretSource?
    public var configMap: ConfigMapSource?

    public static func secret(_ name: String, secretName: String) -> Volume {
        Volume(name: name, secret: SecretSource(secretName: secretName), configMap: nil)
    }

    public static func configMap(_ name: String, configMap: String) -> Volume {
        Volume(name: name, secret: nil, configMap: ConfigMapSource(name: configMap))
    }
}

/// The Kubernetes API's `ResourceRequirements`, reduced to the fields we write or read.
public struct ResourceRequirements: Codable, Sendable, Equatable {
    public var requests: [String: String]?
    public var limits: [String: String]?
    public init(requests: [String: String]? = nil, limits: [String: String]? = nil) {
        self.requests = requests
        self.limits = limits
    }
}

/// The Kubernetes API's `Container`, reduced to the fields we write or read.
public struct Container: Codable, Sendable, Equatable {
    public var name: String
    public var image: String
    public var args: [String]?
    public var env: [EnvVar]?
    public var ports: [ContainerPort]?
    public var readinessProbe: Probe?
    public var livenessProbe: Probe?
    public var resources: ResourceRequirements?
    public var securityContext: SecurityContext?
    public var volumeMounts: [VolumeMount]?

    public init(name: String, image: String) {
        self.name = name
        self.image = image
    }
}

/// The Kubernetes API's `Affinity`, reduced to the fields we write or read.
public struct Affinity: Codable, Sendable, Equatable {
    /// `Affinity.Term`, as the Kubernetes API defines it (the fields we use).
    public struct Term: Codable, Sendable, Equatable {
        public var labelSelector: LabelSelector
        public var topologyKey: String
    }

    /// `Affinity.PodAntiAffinity`, as the Kubernetes API defines it (the fields we use).
    public struct PodAntiAffinity: Codable, Sendable, Equatable {
        public var requiredDuringSchedulingIgnoredDuringExecution: [Term]
    }

    public var podAntiAffinity: PodAntiAffinity?

    /// One replica per node for pods matching `labels`.
    public static func spreadAcrossNodes(_ labels: [String: String]) -> Affinity {
        Affinity(podAntiAffinity: PodAntiAffinity(requiredDuringSchedulingIgnoredDuringExecution: [
            Term(labelSelector: LabelSelector(matchLabels: labels), topologyKey: "kubernetes.io/hostname"),
        ]))
    }
}

/// The Kubernetes API's `PodSpec`, reduced to the fields we write or read.
public struct PodSpec: Codable, Sendable, Equatable {
    public var serviceAccountName: String?
    public var automountServiceAccountToken: Bool?
    public var containers: [Container]
    public var volumes: [Volume]?
    public var affinity: Affinity?
    public var terminationGracePeriodSeconds: Int?
    public var securityContext: PodSecurityContext?

    public init(containers: [Container]) { self.containers = containers }
}

/// The Kubernetes API's `PodSecurityContext`, reduced to the fields we write or read.
public struct PodSecurityContext: Codable, Sendable, Equatable {
    public var runAsNonRoot: Bool?
    public var fsGroup: Int?
}

/// The Kubernetes API's `PodTemplateSpec`, reduced to the fields we write or read.
public struct PodTemplateSpec: Codable, Sendable, Equatable {
    public var metadata: ObjectMeta
    public var spec: PodSpec
    public init(metadata: ObjectMeta, spec: PodSpec) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// The Kubernetes API's `Deployment`, reduced to the fields we write or read.
public struct Deployment: Codable, Sendable, Equatable {
    /// `Deployment.Spec`, as the Kubernetes API defines it (the fields we use).
    public struct Spec: Codable, Sendable, Equatable {
        /// `DeploymentStrategy`, as the Kubernetes API defines it (the field we use).
        public struct Strategy: Codable, Sendable, Equatable {
            /// `RollingUpdate` (the API's default) or `Recreate`.
            public var type: String
            public init(type: String) { self.type = type }
        }

        /// Nil when an HPA owns the count: the GMC must never write it.
        public var replicas: Int?
        public var selector: LabelSelector
        public var template: PodTemplateSpec
        /// Nil: the API's default (RollingUpdate).
        public var strategy: Strategy?
        public init(replicas: Int?, selector: LabelSelector, template: PodTemplateSpec, strategy: Strategy? = nil) {
            self.replicas = replicas
            self.selector = selector
            self.template = template
            self.strategy = strategy
        }
    }

    public var apiVersion = "apps/v1"
    public var kind = "Deployment"
    public var metadata: ObjectMeta
    public var spec: Spec
    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// The Kubernetes API's `Service`, reduced to the fields we write or read.
public struct Service: Codable, Sendable, Equatable {
    /// `Service.Port`, as the Kubernetes API defines it (the fields we use).
    public struct Port: Codable, Sendable, Equatable {
        public var name: String
        public var port: Int
        public var targetPort: String
        public var `protocol` = "TCP"
        public init(name: String, port: Int, targetPort: String) {
            self.name = name
            self.port = port
            self.targetPort = targetPort
        }
    }

    /// `Service.Spec`, as the Kubernetes API defines it (the fields we use).
    public struct Spec: Codable, Sendable, Equatable {
        public var type = "ClusterIP"
        public var selector: [String: String]
        public var ports: [Port]
        public init(selector: [String: String], ports: [Port]) {
            self.selector = selector
            self.ports = ports
        }
    }

    public var apiVersion = "v1"
    public var kind = "Service"
    public var metadata: ObjectMeta
    public var spec: Spec
    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// The Kubernetes API's `PodDisruptionBudget`, reduced to the fields we write or read.
public struct PodDisruptionBudget: Codable, Sendable, Equatable {
    /// `PodDisruptionBudget.Spec`, as the Kubernetes API defines it (the fields we use).
    public struct Spec: Codable, Sendable, Equatable {
        public var minAvailable: Int
        public var selector: LabelSelector
        public init(minAvailable: Int, selector: LabelSelector) {
            self.minAvailable = minAvailable
            self.selector = selector
        }
    }

    public var apiVersion = "policy/v1"
    public var kind = "PodDisruptionBudget"
    public var metadata: ObjectMeta
    public var spec: Spec
    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// The Kubernetes API's `HorizontalPodAutoscaler`, reduced to the fields we write or read.
public struct HorizontalPodAutoscaler: Codable, Sendable, Equatable {
    /// `HorizontalPodAutoscaler.Target`, as the Kubernetes API defines it (the fields we use).
    public struct Target: Codable, Sendable, Equatable {
        public var apiVersion = "apps/v1"
        public var kind = "Deployment"
        public var name: String
        public init(name: String) { self.name = name }
    }

    /// `HorizontalPodAutoscaler.Metric`, as the Kubernetes API defines it (the fields we use).
    public struct Metric: Codable, Sendable, Equatable {
        /// `Metric.Resource`, as the Kubernetes API defines it (the fields we use).
        public struct Resource: Codable, Sendable, Equatable {
            /// `Resource.Goal`, as the Kubernetes API defines it (the fields we use).
            public struct Goal: Codable, Sendable, Equatable {
                public var type = "Utilization"
                public var averageUtilization: Int
            }

            public var name: String
            public var target: Goal
        }

        public var type = "Resource"
        public var resource: Resource

        public static func cpu(_ percent: Int) -> Metric {
            Metric(resource: Resource(name: "cpu", target: Resource.Goal(averageUtilization: percent)))
        }
    }

    /// `HorizontalPodAutoscaler.Spec`, as the Kubernetes API defines it (the fields we use).
    public struct Spec: Codable, Sendable, Equatable {
        public var scaleTargetRef: Target
        public var minReplicas: Int
        public var maxReplicas: Int
        public var metrics: [Metric]
        public init(scaleTargetRef: Target, minReplicas: Int, maxReplicas: Int, metrics: [Metric]) {
            self.scaleTargetRef = scaleTargetRef
            self.minReplicas = minReplicas
            self.maxReplicas = maxReplicas
            self.metrics = metrics
        }
    }

    public var apiVersion = "autoscaling/v2"
    public var kind = "HorizontalPodAutoscaler"
    public var metadata: ObjectMeta
    public var spec: Spec
    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}
