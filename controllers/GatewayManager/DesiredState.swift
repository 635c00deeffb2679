import EgressPosix
import EgressProxyCore
import KubeKit

/// The GMC's flags that shape children (images, the API server's addresses for NetworkPolicy).
public struct GatewayImages: Sendable {
    public var proxy: String
    public var agc: String
    /// The runner image of worker pods whose template names none (deploy/images/Dockerfile.worker:
    /// the official runner image with `agc worker` in it), handed to the AGC as `--worker-image`.
    public var worker: String
    public static let defaultWorker = "ghcr.io/actions-gateway/worker:0.1.0"
    /// Where the AGC may reach the Kubernetes API (NetworkPolicy egress); empty = no rule.
    public var apiServerCIDRs: [String]
    /// The labels of the namespaces whose pods may scrape the proxy's and the AGC's admin ports
    /// (the NetworkPolicies' only ingress from outside the gateway): where Prometheus runs.
    public var monitoringNamespaceLabels: [String: String]
    /// The public half of the GMC's wake key (`--wake-key`): given to every AGC, which then
    /// takes signed wakes from GMC pods (`AGCWake`). Nil: wakes are off.
    public var wakePublicKey: WakeVerifyKey?
    /// Where the GMC runs (the namespace its wakes come from).
    public var gmcNamespace: String
    /// `--node-pools`: the platform's pools (the AGC is handed those its groups name); nil when
    /// the platform defines none.
    public var nodePools: [NodePool]?

    public init(
        proxy: String = "ghcr.io/actions-gateway/egress-proxy:0.1.0", agc: String = "ghcr.io/actions-gateway/agc:0.1.0",
        worker: String = GatewayImages.defaultWorker, apiServerCIDRs: [String] = [],
        monitoringNamespaceLabels: [String: String] = [DesiredState.monitoringLabel: "true"], wakePublicKey: WakeVerifyKey? = nil,
        gmcNamespace: String = "actions-gateway-system", nodePools: [NodePool]? = nil
    ) {
        self.nodePools = nodePools
        self.proxy = proxy
        self.agc = agc
        self.worker = worker
        self.apiServerCIDRs = apiServerCIDRs
        self.monitoringNamespaceLabels = monitoringNamespaceLabels
        self.wakePublicKey = wakePublicKey
        self.gmcNamespace = gmcNamespace
    }
}

/// Spec section 2 as a pure function: (validated gateway, owner uid, flags) -> the objects the
/// GMC keeps in the tenant namespace. Deterministic (same input, same objects, same order), so
/// reconciles compare and write nothing when nothing changed, and `gmc render` shows exactly
/// what a cluster would get.
public enum DesiredState {
    public static let group = "actions-gateway.github.com"
    public static let gatewayLabel = "actions-gateway.github.com/gateway"

    /// The gateway's children, declared once: `objects(for:)` makes exactly these (named
    /// GATEWAY-SUFFIX, plus the namespace's labels), the controller watches their kinds, and
    /// deletion removes them. Order is deletion order: the AGC first, identities last.
    public static let children: [(resource: KubeResource, suffix: String)] = [
        (.deployments, "agc"), (.services, "agc"), (.configMaps, "node-pools"), (.configMaps, "oidc"), (.horizontalPodAutoscalers, "proxy"), (.podDisruptionBudgets, "proxy"), (.services, "proxy"),
        (.deployments, "proxy"), (.configMaps, "proxy"), (.networkPolicies, "proxy"), (.networkPolicies, "worker-egress"),
        (.networkPolicies, "agc-egress"), (.networkPolicies, "agc-ingress"), (.roleBindings, "agc"), (.roles, "agc"), (.serviceAccounts, "worker"),
        (.serviceAccounts, "agc"),
    ]

    /// The kinds among the children (one informer each).
    public static var childResources: [KubeResource] {
        var seen = Set<KubeResource>()
        return children.map(\.resource).filter { seen.insert($0).inserted }
    }
    public static let componentLabel = "app.kubernetes.io/component"
    public static let secretAnnotation = "actions-gateway.github.com/credentials-secret"
    public static let proxyPort = 3128
    public static let adminPort = 9090
    /// The AGC's admin port (/healthz /readyz /metrics /jobs).
    public static let agcAdminPort = 8080
    /// Namespaces whose pods may scrape the proxy's and the AGC's admin ports (the platform
    /// labels its Prometheus namespace so); nothing else may reach them.
    public static let monitoringLabel = "actions-gateway.github.com/monitoring"
    /// The AGC's shutdown: sessions closed and messages deleted within 10 s each, plus slack.
    public static let agcTerminationGraceSeconds = 60
    /// Above the proxy's 45 s drain budget, so Kubernetes never kills a draining proxy.
    public static let proxyTerminationGraceSeconds = 60
    static let metadataAddresses = ["169.254.169.254/32", "169.254.0.0/16"]

    /// - Parameter uid: the gateway's uid, which every child names in its ownerReferences (so
    ///   the garbage collector removes them with the gateway). Nil outside a cluster (`gmc
    ///   render`): a made-up uid would make the garbage collector delete what was just applied,
    ///   so the children then carry no ownerReferences at all.
    public static func objects(for gateway: DefaultedGateway, uid: String?, images: GatewayImages = GatewayImages())
        -> [KubeObject]
    {
        let name = gateway.name
        let namespace = gateway.namespace
        let owners = uid.map { [OwnerReference(apiVersion: "\(group)/v1alpha1", kind: "ActionsGateway", name: name, uid: $0)] }
        func labels(_ component: String) -> [String: String] {
            [gatewayLabel: name, componentLabel: component, "app.kubernetes.io/managed-by": "gmc"]
        }
        func selector(_ component: String) -> [String: String] { [gatewayLabel: name, componentLabel: component] }
        func meta(_ suffix: String, _ component: String, annotations: [String: String]? = nil) -> ObjectMeta {
            ObjectMeta(name: "\(name)-\(suffix)", namespace: namespace, labels: labels(component), annotations: annotations,
                       ownerReferences: owners)
        }
        let proxyService = "\(name)-proxy"
        let proxyURL = "http://\(proxyService).\(namespace).svc:\(proxyPort)"
        let dnsRule = NetworkPolicy.Rule(
            to: [NetworkPolicy.Peer(
                podSelector: LabelSelector(matchLabels: ["k8s-app": "kube-dns"]),
                namespaceSelector: LabelSelector(matchLabels: ["kubernetes.io/metadata.name": "kube-system"]))],
            ports: [NetworkPolicy.Port("UDP", 53), NetworkPolicy.Port("TCP", 53)])
        let toProxy = NetworkPolicy.Rule(
            to: [NetworkPolicy.Peer(podSelector: LabelSelector(matchLabels: selector("proxy")))],
            ports: [NetworkPolicy.Port("TCP", proxyPort)])

        var objects: [KubeObject] = []
        // 1. Pod Security Admission labels: the only namespace edit the GMC makes.
        objects.append(.namespace(Namespace(metadata: ObjectMeta(name: namespace, labels: [
            "pod-security.kubernetes.io/enforce": gateway.securityProfile,
            "pod-security.kubernetes.io/audit": gateway.securityProfile,
            "pod-security.kubernetes.io/warn": gateway.securityProfile,
        ]))))
        // 2. Identities and the AGC's namespaced permissions.
        objects.append(.serviceAccount(ServiceAccount(metadata: meta("agc", "agc"), automountServiceAccountToken: true)))
        objects.append(.serviceAccount(ServiceAccount(metadata: meta("worker", "worker"), automountServiceAccountToken: false)))
        // Exactly what the AGC does (test_agc checks it against the calls it makes): it reads
        // pods, quotas and its gateway from informers (list, watch), a pod also by get when a
        // recovery claim met a conflict; worker pods are created, annotated (patch) and
        // deleted; job Secrets created, re-owned by
        // their pod (patch) and deleted, never read back (its own credentials are mounted
        // files, so no Secret of the namespace is readable by it); its ConfigMaps (guards,
        // retries) by name where the verb allows it; Events, counted (patch); its status.
        let stateMaps = gateway.groups.map { "\(name)-\($0.name)-guards" } + ["\(name)-retries"]
        objects.append(.role(Role(metadata: meta("agc", "agc"), rules: [
            PolicyRule(apiGroups: [""], resources: ["pods"], verbs: ["create", "get", "list", "watch", "patch", "delete"]),
            PolicyRule(apiGroups: [""], resources: ["secrets"], verbs: ["create", "patch", "delete"]),
            PolicyRule(apiGroups: [""], resources: ["configmaps"], verbs: ["create"]),
            PolicyRule(apiGroups: [""], resources: ["configmaps"], verbs: ["get", "update", "patch"], resourceNames: stateMaps),
            PolicyRule(apiGroups: [""], resources: ["resourcequotas"], verbs: ["list", "watch"]),
            PolicyRule(apiGroups: [""], resources: ["events"], verbs: ["create", "patch"]),
            PolicyRule(apiGroups: [group], resources: ["actionsgateways"], verbs: ["list", "watch"]),
            PolicyRule(apiGroups: [group], resources: ["actionsgateways/status"], verbs: ["patch"]),
        ])))
        objects.append(.roleBinding(RoleBinding(metadata: meta("agc", "agc"), role: "\(name)-agc", serviceAccount: "\(name)-agc",
                                                namespace: namespace)))
        // 3. NetworkPolicies: AGC and workers reach only DNS and the proxy (the AGC also the API
        //    server); the proxy only DNS and TCP 443, never the metadata range; only this
        //    gateway's AGC and workers reach the proxy.
        var agcEgress = [dnsRule, toProxy]
        if !images.apiServerCIDRs.isEmpty {
            agcEgress.append(NetworkPolicy.Rule(
                to: images.apiServerCIDRs.map { NetworkPolicy.Peer(ipBlock: NetworkPolicy.IPBlock(cidr: $0)) },
                ports: [NetworkPolicy.Port("TCP", 443), NetworkPolicy.Port("TCP", 6443)]))
        }
        objects.append(.networkPolicy(NetworkPolicy(metadata: meta("agc-egress", "agc"), spec: NetworkPolicy.Spec(
            podSelector: LabelSelector(matchLabels: selector("agc")), policyTypes: ["Egress"], egress: agcEgress))))
        let fromMonitoring = NetworkPolicy.Peer(namespaceSelector: LabelSelector(matchLabels: images.monitoringNamespaceLabels))
        var agcIngress = [NetworkPolicy.Rule(from: [fromMonitoring], ports: [NetworkPolicy.Port("TCP", agcAdminPort)])]
        if images.wakePublicKey != nil {
            // The GMC's wakes (each signed, so this rule only narrows who may try).
            agcIngress.append(NetworkPolicy.Rule(
                from: [NetworkPolicy.Peer(podSelector: LabelSelector(matchLabels: ["app.kubernetes.io/name": "gmc"]),
                                          namespaceSelector: LabelSelector(matchLabels: ["kubernetes.io/metadata.name": images.gmcNamespace]))],
                ports: [NetworkPolicy.Port("TCP", agcAdminPort)]))
        }
        objects.append(.networkPolicy(NetworkPolicy(metadata: meta("agc-ingress", "agc"), spec: NetworkPolicy.Spec(
            podSelector: LabelSelector(matchLabels: selector("agc")), policyTypes: ["Ingress"], ingress: agcIngress))))
        objects.append(.networkPolicy(NetworkPolicy(metadata: meta("worker-egress", "worker"), spec: NetworkPolicy.Spec(
            podSelector: LabelSelector(matchLabels: selector("worker")), policyTypes: ["Egress"], egress: [dnsRule, toProxy]))))
        objects.append(.networkPolicy(NetworkPolicy(metadata: meta("proxy", "proxy"), spec: NetworkPolicy.Spec(
            podSelector: LabelSelector(matchLabels: selector("proxy")), policyTypes: ["Ingress", "Egress"],
            ingress: [NetworkPolicy.Rule(
                from: [NetworkPolicy.Peer(podSelector: LabelSelector(matchLabels: selector("agc"))),
                       NetworkPolicy.Peer(podSelector: LabelSelector(matchLabels: selector("worker")))],
                ports: [NetworkPolicy.Port("TCP", proxyPort)]),
                NetworkPolicy.Rule(from: [fromMonitoring], ports: [NetworkPolicy.Port("TCP", adminPort)])],
            egress: [dnsRule, NetworkPolicy.Rule(
                to: [NetworkPolicy.Peer(ipBlock: NetworkPolicy.IPBlock(cidr: "0.0.0.0/0", except: metadataAddresses))],
                ports: [NetworkPolicy.Port("TCP", 443)])]))))
        // 4. The proxy pool.
        objects.append(.configMap(ConfigMap(metadata: meta("proxy", "proxy"), data: ["config.yaml": proxyConfig(gateway)])))
        var proxyContainer = Container(name: "egress-proxy", image: images.proxy)
        proxyContainer.args = ["--config", "/etc/egress-proxy/config.yaml"]
        proxyContainer.ports = [ContainerPort(name: "proxy", containerPort: proxyPort), ContainerPort(name: "admin", containerPort: adminPort)]
        proxyContainer.readinessProbe = Probe(path: "/readyz", port: "admin")
        proxyContainer.livenessProbe = Probe(path: "/healthz", port: "admin", periodSeconds: 10)
        proxyContainer.resources = ResourceRequirements(requests: ["cpu": "100m", "memory": "64Mi"], limits: ["memory": "256Mi"])
        proxyContainer.securityContext = .locked
        proxyContainer.volumeMounts = [VolumeMount(name: "config", mountPath: "/etc/egress-proxy")]
        var proxyPod = PodSpec(containers: [proxyContainer])
        proxyPod.automountServiceAccountToken = false
        proxyPod.volumes = [.configMap("config", configMap: "\(name)-proxy")]
        proxyPod.affinity = .spreadAcrossNodes(selector("proxy"))
        proxyPod.terminationGracePeriodSeconds = proxyTerminationGraceSeconds
        objects.append(.deployment(Deployment(metadata: meta("proxy", "proxy"), spec: Deployment.Spec(
            replicas: nil, selector: LabelSelector(matchLabels: selector("proxy")),
            template: PodTemplateSpec(metadata: ObjectMeta(labels: labels("proxy")), spec: proxyPod)))))
        objects.append(.service(Service(metadata: meta("proxy", "proxy"), spec: Service.Spec(
            selector: selector("proxy"), ports: [Service.Port(name: "proxy", port: proxyPort, targetPort: "proxy")]))))
        objects.append(.podDisruptionBudget(PodDisruptionBudget(metadata: meta("proxy", "proxy"), spec: PodDisruptionBudget.Spec(
            minAvailable: 1, selector: LabelSelector(matchLabels: selector("proxy"))))))
        objects.append(.horizontalPodAutoscaler(HorizontalPodAutoscaler(metadata: meta("proxy", "proxy"), spec: HorizontalPodAutoscaler.Spec(
            scaleTargetRef: HorizontalPodAutoscaler.Target(name: "\(name)-proxy"), minReplicas: gateway.minReplicas,
            maxReplicas: gateway.maxReplicas, metrics: [.cpu(gateway.targetCPUUtilizationPercentage)]))))
        // The OIDC trust the platform's provisioning tool applies (IAM role trust policy, Vault
        // JWT role): rendered here, from checked fields, so it can only trust this tenant's
        // repositories. Empty when the gateway asks for none.
        objects.append(.configMap(ConfigMap(metadata: meta("oidc", "agc"),
                                            data: gateway.oidc?.files(gateway: gateway, organization: gateway.organization ?? "") ?? [:])))
        // The node pools the groups name, resolved (the AGC reads the file at each reconcile of
        // its gateway, so a pool the platform changes reaches new workers without a restart).
        let named = Set(gateway.groups.compactMap(\.nodePool))
        objects.append(.configMap(ConfigMap(metadata: meta("node-pools", "agc"),
                                            data: [NodePools.fileName: NodePools.file((images.nodePools ?? []).filter { named.contains($0.name) })])))
        // The AGC's admin port by a stable name: where the GMC sends its wakes.
        objects.append(.service(Service(metadata: meta("agc", "agc"), spec: Service.Spec(
            selector: selector("agc"), ports: [Service.Port(name: "admin", port: agcAdminPort, targetPort: "admin")]))))
        // 5. The AGC, through the proxy, with the credential Secret as files; the Secret's name
        //    on the pod template, so a new gitHubAppRef rolls the Deployment.
        var agc = Container(name: "agc", image: images.agc)
        agc.args = ["run", "--gateway", name, "--namespace", namespace, "--credentials", "/etc/github-app", "--admin", "0.0.0.0:\(agcAdminPort)",
                    "--worker-image", images.worker, "--node-pools", "\(NodePools.mountPath)/\(NodePools.fileName)"]
        if let key = images.wakePublicKey { agc.args? += ["--wake-public-key", key.base64] }
        agc.ports = [ContainerPort(name: "admin", containerPort: agcAdminPort)]
        agc.readinessProbe = Probe(path: "/readyz", port: "admin")
        agc.livenessProbe = Probe(path: "/healthz", port: "admin", periodSeconds: 10)
        agc.env = [
            EnvVar("HTTPS_PROXY", proxyURL), EnvVar("HTTP_PROXY", proxyURL),
            EnvVar("NO_PROXY", "$(KUBERNETES_SERVICE_HOST),kubernetes.default.svc,.svc,.cluster.local"),
        ]
        agc.securityContext = .locked
        agc.resources = ResourceRequirements(requests: ["cpu": "100m", "memory": "128Mi"], limits: ["memory": "512Mi"])
        agc.volumeMounts = [VolumeMount(name: "github-app", mountPath: "/etc/github-app"),
                            VolumeMount(name: "node-pools", mountPath: NodePools.mountPath)]
        var agcPod = PodSpec(containers: [agc])
        agcPod.serviceAccountName = "\(name)-agc"
        agcPod.terminationGracePeriodSeconds = agcTerminationGraceSeconds
        agcPod.volumes = [.secret("github-app", secretName: gateway.gitHubAppSecret), .configMap("node-pools", configMap: "\(name)-node-pools")]
        objects.append(.deployment(Deployment(metadata: meta("agc", "agc"), spec: Deployment.Spec(
            replicas: 1, selector: LabelSelector(matchLabels: selector("agc")),
            template: PodTemplateSpec(
                metadata: ObjectMeta(labels: labels("agc"), annotations: [secretAnnotation: gateway.gitHubAppSecret]),
                spec: agcPod),
            // Never two AGCs: both would hold sessions and provision the same jobs.
            strategy: .init(type: "Recreate")))))
        return objects
    }

    /// The hosts GitHub documents for self-hosted runners (the proxy's embedded default).
    static let gitHubHosts = [
        "github.com", "*.github.com", "*.githubusercontent.com", "ghcr.io", "*.pkg.github.com", "*.blob.core.windows.net",
        "github-cloud.s3.amazonaws.com", "dependabot-actions.githubapp.com",
    ]

    /// The proxy's config file (spec/egress-proxy.md section 3): one anonymous tenant (the
    /// NetworkPolicy decides who may connect), GitHub's hosts, a GHES host, the extra hosts.
    ///
    /// Built as the proxy's own typed `ProxyConfig` and emitted by its serializer, never by
    /// pasting tenant text into YAML: a host that is not a valid `HostPattern` cannot be
    /// represented at all, so no CR can add keys (a `deny: []`) to its proxy's config.
    static func proxyConfig(_ gateway: DefaultedGateway) -> String {
        var config = ProxyConfig()
        config.listen = SocketAddress(ip: .v4(0), port: UInt16(proxyPort))
        config.admin = SocketAddress(ip: .v4(0), port: UInt16(adminPort))
        var tenant = ProxyConfig.Tenant(name: gateway.name)
        var rules: [AllowRule] = []
        func allow(_ text: String, port: UInt16 = 443) {
            guard let pattern = HostPattern.parse(text) else { return }
            let rule = AllowRule(target: .host(pattern), ports: PortSet(ranges: [port...port], any: false))
            if !rules.contains(rule) { rules.append(rule) }
        }
        for host in gitHubHosts { allow(host) }
        allow(gateway.gitHubHost, port: gateway.gitHubPort)
        for extra in gateway.extraAllowedHosts { allow(extra) }
        // Where workflows trade their OIDC token: STS, the Vault server.
        for (host, port) in gateway.oidc?.hosts() ?? [] { allow(host, port: port) }
        tenant.allow = rules
        config.tenants = [tenant]
        return "# Rendered by the GMC from an ActionsGateway; edits are reverted.\n" + config.renderYAML()
    }
}
