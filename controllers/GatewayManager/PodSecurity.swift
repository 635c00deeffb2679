/// The part of a runner group's `podTemplate` the GMC judges before anything is created: every
/// field through which a worker pod could reach the node, the AGC's identity or the API server.
/// Decoded strictly (a field of the wrong type is a problem naming the field, not a crash);
/// fields not listed here are the AGC's to merge and are not the GMC's concern.
public struct WorkerPodTemplate: Codable, Sendable, Equatable {
    public var spec: Spec?

    /// `podTemplate.spec`: the pod-level fields Pod Security Standards look at, plus the
    /// scheduling and identity fields a worker must never set itself.
    public struct Spec: Codable, Sendable, Equatable {
        public var priorityClassName: String?
        public var serviceAccountName: String?
        public var serviceAccount: String?
        public var automountServiceAccountToken: Bool?
        public var nodeName: String?
        public var hostNetwork: Bool?
        public var hostPID: Bool?
        public var hostIPC: Bool?
        public var hostUsers: Bool?
        public var securityContext: PodSecurityContext?
        public var volumes: [Volume]?
        public var containers: [Container]?
        public var initContainers: [Container]?
        public var ephemeralContainers: [Container]?
        // Placement: the platform's when it defines node pools.
        public var nodeSelector: [String: String]?
        public var tolerations: [Present]?
        public var affinity: Affinity?
    }

    /// `spec.affinity`: only whether it places on nodes.
    public struct Affinity: Codable, Sendable, Equatable {
        public var nodeAffinity: Present?
    }

    /// A field judged by its presence alone: any JSON value decodes, none is kept.
    public struct Present: Codable, Sendable, Equatable {
        public init(from decoder: any Decoder) throws {}
        public func encode(to encoder: any Encoder) throws {}
    }

    /// Pod-level security settings (`spec.securityContext`).
    public struct PodSecurityContext: Codable, Sendable, Equatable {
        public var runAsNonRoot: Bool?
        public var runAsUser: Int64?
        public var seccompProfile: SeccompProfile?
        public var sysctls: [Sysctl]?
        public var windowsOptions: WindowsOptions?
    }

    /// One `spec.securityContext.sysctls` entry.
    public struct Sysctl: Codable, Sendable, Equatable {
        public var name: String?
    }

    /// `seccompProfile` of a pod or container.
    public struct SeccompProfile: Codable, Sendable, Equatable {
        public var type: String?
    }

    /// `windowsOptions`: only `hostProcess` matters (a host process container is the node).
    public struct WindowsOptions: Codable, Sendable, Equatable {
        public var hostProcess: Bool?
    }

    /// A volume: its name and which source types it uses (decoded as presence only).
    public struct Volume: Codable, Sendable, Equatable {
        public var name: String?
        /// Every source key present on the volume (`hostPath`, `emptyDir`, ...).
        public var sources: [String]

        private struct AnyKey: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: AnyKey.self)
            name = try container.decodeIfPresent(String.self, forKey: AnyKey(stringValue: "name"))
            sources = container.allKeys.map(\.stringValue).filter { $0 != "name" }.sorted()
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: AnyKey.self)
            try container.encodeIfPresent(name, forKey: AnyKey(stringValue: "name"))
        }
    }

    /// A container's fields that Pod Security Standards look at.
    public struct Container: Codable, Sendable, Equatable {
        public var name: String?
        public var securityContext: ContainerSecurityContext?
        public var ports: [Port]?
    }

    /// `containers[].ports[]`: only `hostPort` matters.
    public struct Port: Codable, Sendable, Equatable {
        public var hostPort: Int?
    }

    /// `containers[].securityContext`.
    public struct ContainerSecurityContext: Codable, Sendable, Equatable {
        public var privileged: Bool?
        public var allowPrivilegeEscalation: Bool?
        public var runAsNonRoot: Bool?
        public var runAsUser: Int64?
        public var procMount: String?
        public var capabilities: Capabilities?
        public var seccompProfile: SeccompProfile?
        public var windowsOptions: WindowsOptions?
    }

    /// `capabilities.add` (what `drop` removes is never a risk).
    public struct Capabilities: Codable, Sendable, Equatable {
        public var add: [String]?
    }
}

/// Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards) as the
/// GMC applies them to a tenant's worker template, by the gateway's `securityProfile`, plus what
/// no profile lets a tenant choose because the AGC owns it (identity, token, node, priority).
/// Pod Security Admission would refuse such a pod only at creation, job by job; refusing the
/// template up front gives the tenant one condition naming the field instead.
enum PodSecurity {
    /// Capabilities the baseline profile lets a container add.
    static let baselineCapabilities: Set<String> = [
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
        "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    ]
    /// Sysctls the baseline profile allows (namespaced and safe).
    static let safeSysctls: Set<String> = [
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ]
    /// Volume sources the restricted profile allows.
    static let restrictedVolumes: Set<String> = [
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
    ]

    /// Every problem of `template` under `profile`, each naming its field below `path`.
    static func problems(_ template: WorkerPodTemplate, profile: String, path: String) -> [GatewayProblem] {
        var problems: [GatewayProblem] = []
        func problem(_ field: String, _ message: String) {
            problems.append(GatewayProblem(field: "\(path).\(field)", message: message))
        }
        guard let spec = template.spec else { return [] }
        let baseline = profile != "privileged"
        let restricted = profile == "restricted"

        // What the AGC owns, whatever the profile: a worker runs as the gateway's worker
        // ServiceAccount, without an API token, wherever the scheduler puts it.
        if spec.serviceAccountName != nil { problem("spec.serviceAccountName", "is set by the AGC (the gateway's worker ServiceAccount)") }
        if spec.serviceAccount != nil { problem("spec.serviceAccount", "is set by the AGC (the gateway's worker ServiceAccount)") }
        if spec.automountServiceAccountToken == true {
            problem("spec.automountServiceAccountToken", "workers never get an API token")
        }
        if spec.nodeName != nil { problem("spec.nodeName", "bypasses the scheduler, priority tiers and preemption") }

        if baseline {
            if spec.hostNetwork == true { problem("spec.hostNetwork", "not allowed by the \(profile) profile") }
            if spec.hostPID == true { problem("spec.hostPID", "not allowed by the \(profile) profile") }
            if spec.hostIPC == true { problem("spec.hostIPC", "not allowed by the \(profile) profile") }
            if spec.securityContext?.windowsOptions?.hostProcess == true {
                problem("spec.securityContext.windowsOptions.hostProcess", "not allowed by the \(profile) profile")
            }
            if spec.securityContext?.seccompProfile?.type == "Unconfined" {
                problem("spec.securityContext.seccompProfile.type", "Unconfined is not allowed by the \(profile) profile")
            }
            for (index, sysctl) in (spec.securityContext?.sysctls ?? []).enumerated()
            where !safeSysctls.contains(sysctl.name ?? "") {
                problem("spec.securityContext.sysctls[\(index)].name", "'\(sysctl.name ?? "")' is not a safe sysctl")
            }
        }
        if restricted {
            if spec.securityContext?.runAsNonRoot == false {
                problem("spec.securityContext.runAsNonRoot", "must not be false under the restricted profile")
            }
            if spec.securityContext?.runAsUser == 0 { problem("spec.securityContext.runAsUser", "0 (root) is not allowed under the restricted profile") }
        }
        for (index, volume) in (spec.volumes ?? []).enumerated() {
            if baseline && volume.sources.contains("hostPath") {
                problem("spec.volumes[\(index)].hostPath", "not allowed by the \(profile) profile")
            }
            if restricted, let other = volume.sources.first(where: { !restrictedVolumes.contains($0) }) {
                problem("spec.volumes[\(index)].\(other)", "volume type not allowed by the restricted profile")
            }
        }
        let lists: [(String, [WorkerPodTemplate.Container]?)] = [
            ("containers", spec.containers), ("initContainers", spec.initContainers), ("ephemeralContainers", spec.ephemeralContainers),
        ]
        for (list, containers) in lists {
            for (index, container) in (containers ?? []).enumerated() {
                let at = "spec.\(list)[\(index)]"
                for (portIndex, port) in (container.ports ?? []).enumerated() where baseline && (port.hostPort ?? 0) != 0 {
                    problem("\(at).ports[\(portIndex)].hostPort", "not allowed by the \(profile) profile")
                }
                guard let context = container.securityContext else { continue }
                if baseline {
                    if context.privileged == true { problem("\(at).securityContext.privileged", "not allowed by the \(profile) profile") }
                    if let mount = context.procMount, mount != "Default" {
                        problem("\(at).securityContext.procMount", "only Default is allowed by the \(profile) profile")
                    }
                    if context.windowsOptions?.hostProcess == true {
                        problem("\(at).securityContext.windowsOptions.hostProcess", "not allowed by the \(profile) profile")
                    }
                    if context.seccompProfile?.type == "Unconfined" {
                        problem("\(at).securityContext.seccompProfile.type", "Unconfined is not allowed by the \(profile) profile")
                    }
                    let allowed = restricted ? ["NET_BIND_SERVICE"] : baselineCapabilities
                    for (capIndex, capability) in (context.capabilities?.add ?? []).enumerated() where !allowed.contains(capability) {
                        problem("\(at).securityContext.capabilities.add[\(capIndex)]", "'\(capability)' is not allowed by the \(profile) profile")
                    }
                }
                if restricted {
                    if context.allowPrivilegeEscalation == true {
                        problem("\(at).securityContext.allowPrivilegeEscalation", "must not be true under the restricted profile")
                    }
                    if context.runAsNonRoot == false {
                        problem("\(at).securityContext.runAsNonRoot", "must not be false under the restricted profile")
                    }
                    if context.runAsUser == 0 { problem("\(at).securityContext.runAsUser", "0 (root) is not allowed under the restricted profile") }
                }
            }
        }
        return problems
    }
}
