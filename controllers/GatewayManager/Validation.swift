import EgressProxyCore
import Foundation

/// One reason a gateway is rejected: the field path and the message (reported as the
/// `Degraded` condition and an Event).
public struct GatewayProblem: Sendable, Equatable, CustomStringConvertible {
    public var field: String
    public var message: String

    public var description: String { "\(field): \(message)" }

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }

    /// The field a decoding error points at, as a spec path (`spec.runnerGroups[0].maxWorkers`).
    init(decoding error: DecodingError) {
        func path(_ keys: [any CodingKey]) -> String {
            if keys.isEmpty { return "(object)" }
            return keys.reduce("") { text, key in
                if let index = key.intValue { return "\(text)[\(index)]" }
                return text.isEmpty ? key.stringValue : "\(text).\(key.stringValue)"
            }
        }
        switch error {
        case .typeMismatch(let type, let context):
            self.init(field: path(context.codingPath), message: "expected \(Self.kind(type))")
        case .valueNotFound(let type, let context):
            self.init(field: path(context.codingPath), message: "expected \(Self.kind(type)), got null")
        case .keyNotFound(let key, let context):
            self.init(field: path(context.codingPath + [key]), message: "required")
        case .dataCorrupted(let context):
            self.init(field: path(context.codingPath), message: "out of range or malformed")
        @unknown default:
            self.init(field: "(object)", message: "cannot be decoded")
        }
    }

    private static func kind(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int64.Type: return "an integer"
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        default: return "\(type)".contains("Array") ? "a list" : "an object"
        }
    }
}

/// Every problem of a rejected gateway.
public struct GatewayRejection: Error, Sendable, Equatable {
    public var problems: [GatewayProblem]
}

/// What the GMC knows besides the CR: its flags and the namespace's labels.
public struct GatewayEnvironment: Sendable {
    /// `--allowed-priority-classes` (empty = none allowed).
    public var allowedPriorityClasses: Set<String>
    /// `--allowed-extra-hosts` (empty = a tenant may name no extra host).
    public var allowedExtraHosts: [HostPattern]
    public var namespaceLabels: [String: String]
    /// `--node-pools`: the pools runner groups may name. Nil: the platform defines none (then no
    /// group may name one, and templates place their workers as they like, as before pools).
    /// Defined: templates may not set node selectors, node affinity or tolerations.
    public var nodePools: [NodePool]?
    /// The AGC's view: pool names are taken as the GMC accepted them (the GMC alone holds the
    /// platform's pools; the AGC resolves them from the file the GMC renders).
    public var nodePoolsUnchecked = false
    /// `--allowed-aws-accounts`: the accounts `spec.oidc.aws` may name (empty: none).
    public var allowedAWSAccounts: Set<String> = []

    public static let privilegedLabel = "actions-gateway.github.com/privileged-profile"

    public init(allowedPriorityClasses: Set<String> = [], allowedExtraHosts: [HostPattern] = [], namespaceLabels: [String: String] = [:],
                nodePools: [NodePool]? = nil) {
        self.allowedPriorityClasses = allowedPriorityClasses
        self.allowedExtraHosts = allowedExtraHosts
        self.namespaceLabels = namespaceLabels
        self.nodePools = nodePools
    }

    /// Parses the `--allowed-extra-hosts` flag (comma-separated host names and `*.suffix`
    /// patterns, checked by the proxy's own host rules); the bad entries are returned.
    public static func extraHostPatterns(_ flag: String) -> Result<[HostPattern], GatewayRejection> {
        var patterns: [HostPattern] = []
        var problems: [GatewayProblem] = []
        for item in flag.split(separator: ",") {
            let text = item.trimmingCharacters(in: .whitespaces)
            if let pattern = HostPattern.parse(text), !TenantHosts.isIPLiteral(text) {
                patterns.append(pattern)
            } else {
                problems.append(GatewayProblem(field: "--allowed-extra-hosts", message: "'\(text)' is not a host name or *.suffix"))
            }
        }
        return problems.isEmpty ? .success(patterns) : .failure(GatewayRejection(problems: problems))
    }

    /// Parses a `k=v,k=v` label flag (`--namespace-labels`, `--monitoring-namespace-labels`):
    /// Kubernetes label syntax, checked here so a typo is a clear startup error, not a
    /// NetworkPolicy the API server refuses on every reconcile.
    public static func labels(_ flag: String, name: String) -> Result<[String: String], GatewayRejection> {
        var labels: [String: String] = [:]
        var problems: [GatewayProblem] = []
        for item in flag.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, isLabelKey(parts[0]), parts[1].isEmpty || isLabelName(parts[1]) else {
                problems.append(GatewayProblem(field: name, message: "'\(item)' is not a label key=value"))
                continue
            }
            labels[parts[0]] = parts[1]
        }
        return problems.isEmpty ? .success(labels) : .failure(GatewayRejection(problems: problems))
    }

    /// `[prefix/]name`: the prefix a DNS subdomain of at most 253 characters, the name at most
    /// 63 alphanumerics with `-`, `_` and `.` inside.
    static func isLabelKey(_ key: String) -> Bool {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1: return isLabelName(parts[0])
        case 2:
            let prefix = parts[0]
            let labels = prefix.split(separator: ".", omittingEmptySubsequences: false)
            return prefix.count <= 253 && !labels.isEmpty && labels.allSatisfy { label in
                (1...63).contains(label.count) && label.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }
                    && label.first != "-" && label.last != "-"
            } && isLabelName(parts[1])
        default: return false
        }
    }

    /// A label (or taint) key and value as Kubernetes takes them; an empty value is a value.
    static func isLabel(key: String, value: String) -> Bool { isLabelKey(key) && (value.isEmpty || isLabelName(value)) }

    static func isLabelName(_ name: String) -> Bool {
        func alphanumeric(_ byte: UInt8) -> Bool {
            (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x30 && byte <= 0x39)
        }
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), let first = bytes.first, let last = bytes.last, alphanumeric(first), alphanumeric(last)
        else { return false }
        return bytes.allSatisfy { alphanumeric($0) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }
    }
}

extension ActionsGateway {
    /// Applies defaults and every check of spec section 1, the ones the CRD's schema and CEL
    /// rules also express (so a bad CR gets a clear condition even where admission did not run)
    /// and the ones no schema can (allowlisted priority classes, the privileged-profile label).
    /// All problems are reported, not only the first.
    public func validated(in environment: GatewayEnvironment) -> Result<DefaultedGateway, GatewayRejection> {
        var problems: [GatewayProblem] = []
        func problem(_ field: String, _ message: String) { problems.append(GatewayProblem(field: field, message: message)) }

        let name = metadata.name ?? ""
        if !isDNSLabel(name, maxLength: 40) { problem("metadata.name", "must be a DNS label of at most 40 characters") }
        if ProxyConfig.reservedTenantNames.contains(name) {
            problem("metadata.name", "'\(name)' is reserved (the proxy's label for unattributed traffic)")
        }
        let namespace = metadata.namespace ?? ""
        if namespace.isEmpty { problem("metadata.namespace", "required") }

        let secret = spec.gitHubAppRef?.name ?? ""
        if !isDNSSubdomain(secret) { problem("spec.gitHubAppRef.name", "required: the Secret holding appId, installationId, privateKey") }

        let url = spec.gitHubURL ?? ""
        let endpoint = GitHubEndpoint(url)
        if endpoint == nil {
            problem("spec.gitHubURL", "must be https://HOST[:PORT]/ORG[/...]: a DNS host name (no IP literal, userinfo, query, "
                + "quote, space or non-ASCII), segments of letters, digits, '.', '_' and '-'")
        }

        let profile = spec.securityProfile ?? "baseline"
        if !["restricted", "baseline", "privileged"].contains(profile) {
            problem("spec.securityProfile", "must be restricted, baseline or privileged")
        } else if profile == "privileged" && environment.namespaceLabels[GatewayEnvironment.privilegedLabel] != "allowed" {
            problem("spec.securityProfile", "privileged needs the namespace label \(GatewayEnvironment.privilegedLabel)=allowed")
        }

        let minReplicas = spec.proxy?.minReplicas ?? 2
        let maxReplicas = spec.proxy?.maxReplicas ?? 10
        let cpu = spec.proxy?.targetCPUUtilizationPercentage ?? 60
        if minReplicas < 1 { problem("spec.proxy.minReplicas", "must be at least 1") }
        if maxReplicas > 100 { problem("spec.proxy.maxReplicas", "must be at most 100") }
        if maxReplicas < minReplicas { problem("spec.proxy.maxReplicas", "must be at least minReplicas") }
        if !(1...100).contains(cpu) { problem("spec.proxy.targetCPUUtilizationPercentage", "must be 1 to 100") }
        let extraHosts = spec.proxy?.extraAllowedHosts ?? []
        if extraHosts.count > 100 { problem("spec.proxy.extraAllowedHosts", "at most 100 hosts") }
        for (index, host) in extraHosts.enumerated() {
            if let why = TenantHosts.refusal(host, allowed: environment.allowedExtraHosts) {
                problem("spec.proxy.extraAllowedHosts[\(index)]", why)
            }
        }

        let groups = spec.runnerGroups ?? []
        if groups.isEmpty { problem("spec.runnerGroups", "at least one runner group is required") }
        if groups.count > 50 { problem("spec.runnerGroups", "at most 50 runner groups") }
        var seen = Set<String>()
        var defaulted: [DefaultedGateway.Group] = []
        for (index, group) in groups.enumerated() {
            let path = "spec.runnerGroups[\(index)]"
            let groupName = group.name ?? ""
            if !isDNSLabel(groupName, maxLength: 40) { problem("\(path).name", "must be a DNS label of at most 40 characters") }
            if !seen.insert(groupName).inserted { problem("\(path).name", "duplicate runner group name '\(groupName)'") }
            let labels = group.runnerLabels ?? []
            if labels.isEmpty { problem("\(path).runnerLabels", "at least one label is required") }
            if labels.count > 32 { problem("\(path).runnerLabels", "at most 32 labels") }
            for (labelIndex, label) in labels.enumerated()
            where label.isEmpty || label.utf8.count > 256 || !label.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) {
                problem("\(path).runnerLabels[\(labelIndex)]", "must be 1 to 256 printable ASCII characters without spaces")
            }
            let listeners = group.maxListeners ?? 1
            if !(1...Limits.maxListeners).contains(listeners) { problem("\(path).maxListeners", "must be 1 to \(Limits.maxListeners)") }
            let minListeners = group.minListeners ?? min(1, listeners)
            if !(0...Limits.maxListeners).contains(minListeners) {
                problem("\(path).minListeners", "must be 0 to \(Limits.maxListeners)")
            } else if minListeners > listeners {
                problem("\(path).minListeners", "must be at most maxListeners (\(listeners))")
            }
            let tiers = group.priorityTiers ?? []
            if tiers.count > 10 { problem("\(path).priorityTiers", "at most 10 tiers") }
            var previous = 0
            for (tierIndex, tier) in tiers.enumerated() {
                let tierPath = "\(path).priorityTiers[\(tierIndex)]"
                let threshold = tier.threshold ?? 0
                if !(1...Limits.maxWorkers).contains(threshold) { problem("\(tierPath).threshold", "must be 1 to \(Limits.maxWorkers)") }
                if threshold <= previous && tierIndex > 0 { problem("\(tierPath).threshold", "thresholds must be strictly ascending") }
                previous = max(previous, threshold)
                checkPriorityClass(tier.priorityClassName, "\(tierPath).priorityClassName", environment, problem)
                if tierIndex > 0 && tier.reclaimQuota == true { problem("\(tierPath).reclaimQuota", "only the first priority tier may reclaim quota") }
            }
            let lastThreshold = tiers.last?.threshold
            // Spec: a group with neither a ceiling nor tiers gets 10 workers.
            let maxWorkers = group.maxWorkers ?? lastThreshold ?? 10
            if let explicit = group.maxWorkers, let lastThreshold, explicit != lastThreshold {
                problem("\(path).maxWorkers", "must equal the last tier threshold (\(lastThreshold)) when both are set")
            }
            if let explicit = group.maxWorkers, !(1...Limits.maxWorkers).contains(explicit) {
                problem("\(path).maxWorkers", "must be 1 to \(Limits.maxWorkers)")
            }
            let retries = group.maxEvictionRetries ?? 2
            if !(0...10).contains(retries) { problem("\(path).maxEvictionRetries", "must be 0 to 10") }
            let ttl = durationSeconds(group.completedPodTTL ?? "5m", max: Limits.completedPodTTLSeconds)
            if ttl == nil { problem("\(path).completedPodTTL", "must be a duration such as 0s, 30s, 5m or 1h, at most 24h") }
            let podClass = group.podTemplate?.spec?.priorityClassName
            if podClass != nil { checkPriorityClass(podClass, "\(path).podTemplate.spec.priorityClassName", environment, problem) }
            if let template = group.podTemplate {
                problems += PodSecurity.problems(template, profile: profile, path: "\(path).podTemplate")
                if environment.nodePools != nil, let spec = template.spec {
                    // The platform places workers through pools: a template's own placement would
                    // reach nodes kept for others.
                    for (field, set) in [("nodeSelector", spec.nodeSelector != nil), ("tolerations", spec.tolerations != nil),
                                         ("affinity.nodeAffinity", spec.affinity?.nodeAffinity != nil)] where set {
                        problem("\(path).podTemplate.spec.\(field)", "is the platform's: name a nodePool")
                    }
                }
            }
            let acquisition = group.acquisition ?? "scaleSet"
            if !["scaleSet", "classic"].contains(acquisition) { problem("\(path).acquisition", "must be scaleSet or classic") }
            let gitHubGroup = group.gitHubRunnerGroup ?? "Default"
            if gitHubGroup.isEmpty || gitHubGroup.utf8.count > 128 || gitHubGroup.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
                problem("\(path).gitHubRunnerGroup", "must be 1 to 128 printable characters")
            }
            let scaleSetName = group.scaleSetName ?? groupName
            if !isDNSLabel(scaleSetName, maxLength: 45) { problem("\(path).scaleSetName", "must be a DNS label of at most 45 characters") }
            let pending = durationSeconds(group.pendingPodDeadline ?? "10m", max: Limits.completedPodTTLSeconds)
            if pending == nil || pending == 0 { problem("\(path).pendingPodDeadline", "must be a duration from 1s to 24h") }
            let lifetime = durationSeconds(group.maxWorkerLifetime ?? "12h", max: Limits.maxWorkerLifetimeSeconds)
            if lifetime == nil || lifetime == 0 { problem("\(path).maxWorkerLifetime", "must be a duration from 1s to 168h") }
            var settings = DefaultedGateway.Group(
                name: groupName, runnerLabels: labels, maxListeners: listeners, maxWorkers: maxWorkers,
                tiers: tiers.map { ($0.priorityClassName ?? "", $0.threshold ?? 0) }, maxEvictionRetries: retries,
                completedPodTTLSeconds: ttl ?? 0, podPriorityClassName: podClass)
            settings.acquisition = acquisition
            settings.minListeners = minListeners
            settings.gitHubRunnerGroup = gitHubGroup
            settings.scaleSetName = scaleSetName
            settings.retryOOMKilled = group.retryOOMKilled ?? true
            settings.pendingPodDeadlineSeconds = pending ?? 600
            settings.maxWorkerLifetimeSeconds = lifetime ?? 43_200
            settings.reclaimQuota = tiers.first?.reclaimQuota ?? false
            if let perNode = group.maxPodsPerNode, !(1...Limits.maxWorkers).contains(perNode) {
                problem("\(path).maxPodsPerNode", "must be 1 to \(Limits.maxWorkers)")
            }
            settings.maxPodsPerNode = group.maxPodsPerNode
            let teams = group.allowedTeams ?? []
            if teams.count > Limits.maxAllowedTeams { problem("\(path).allowedTeams", "at most \(Limits.maxAllowedTeams) teams") }
            for (teamIndex, text) in teams.prefix(Limits.maxAllowedTeams).enumerated() {
                guard let team = TeamRef(text) else {
                    problem("\(path).allowedTeams[\(teamIndex)]", "must be org/team-slug (letters, digits, '-' and '_'; the slug lowercase)")
                    continue
                }
                // A team is read with this gateway's installation token, and must be of its own
                // organisation: another tenant's organisation is not this tenant's to name.
                guard let endpoint, endpoint.path.count >= 1, endpoint.path[0].lowercased() != "enterprises" else {
                    problem("\(path).allowedTeams", "needs spec.gitHubURL to name an organisation")
                    break
                }
                if team.organization.lowercased() != endpoint.path[0].lowercased() {
                    problem("\(path).allowedTeams[\(teamIndex)]", "must be a team of \(endpoint.path[0]), the gateway's organisation")
                    continue
                }
                if !settings.allowedTeams.contains(team) { settings.allowedTeams.append(team) }
            }
            if let poolName = group.nodePool {
                if let pools = environment.nodePools {
                    if let pool = pools.first(where: { $0.name == poolName }), pool.admits(namespace: namespace) {
                        settings.nodePool = poolName
                    } else {
                        let usable = pools.filter { $0.admits(namespace: namespace) }.map(\.name)
                        problem("\(path).nodePool", "no node pool \(poolName) for this namespace (pools: \(usable.isEmpty ? "none" : usable.joined(separator: ", ")))")
                    }
                } else if environment.nodePoolsUnchecked {
                    settings.nodePool = poolName
                } else {
                    problem("\(path).nodePool", "the platform defines no node pools")
                }
            }
            switch group.allowedTeamsOnError ?? "deny" {
            case "deny": settings.allowedTeamsFailOpen = false
            case "allow": settings.allowedTeamsFailOpen = true
            default: problem("\(path).allowedTeamsOnError", "must be deny or allow")
            }
            defaulted.append(settings)
        }
        let organization = endpoint.flatMap { $0.path[0].lowercased() == "enterprises" ? nil : $0.path[0] }
        let oidc = OIDCValidation.validate(spec.oidc, namespace: namespace, organization: organization, environment: environment, problem: problem)
        guard problems.isEmpty, let endpoint else { return .failure(GatewayRejection(problems: problems)) }
        var gateway = DefaultedGateway(
            name: name, namespace: namespace, gitHubAppSecret: secret, gitHubURL: url, gitHubHost: endpoint.host,
            gitHubPort: endpoint.port, securityProfile: profile, minReplicas: minReplicas, maxReplicas: maxReplicas,
            targetCPUUtilizationPercentage: cpu, extraAllowedHosts: extraHosts, groups: defaulted)
        gateway.oidc = oidc
        gateway.organization = organization
        // The last word is the proxy's own parser: a gateway is accepted only if the config
        // the GMC would render for it is one the tenant's proxy loads (never a crash loop).
        if case .failure(let error) = ProxyConfig.parse(yaml: DesiredState.proxyConfig(gateway)) {
            return .failure(GatewayRejection(problems: [GatewayProblem(field: "spec", message: "the rendered proxy config is refused: \(error)")]))
        }
        return .success(gateway)
    }

    /// Upper bounds on every number a tenant writes, so nothing downstream (a multiplication,
    /// an allocation, a pod count) is sized by hostile input. The CRD schema states the same.
    public enum Limits {
        public static let maxWorkers = 1000
        /// classic virtual sessions per group (spec/agc.md section 2).
        public static let maxListeners = 1000
        public static let completedPodTTLSeconds = 86_400
        public static let maxWorkerLifetimeSeconds = 604_800
        public static let maxAllowedTeams = 50
    }

    private func checkPriorityClass(
        _ name: String?, _ path: String, _ environment: GatewayEnvironment, _ problem: (String, String) -> Void
    ) {
        guard let name, !name.isEmpty else {
            problem(path, "required")
            return
        }
        if !environment.allowedPriorityClasses.contains(name) {
            problem(path, "priority class '\(name)' is not on the platform's allowed list")
        }
    }
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
func isDNSLabel(_ text: String, maxLength: Int = 63) -> Bool {
    let bytes = Array(text.utf8)
    guard !bytes.isEmpty, bytes.count <= maxLength else { return false }
    func alnum(_ byte: UInt8) -> Bool { (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) }
    guard let first = bytes.first, let last = bytes.last, alnum(first), alnum(last) else { return false }
    return bytes.allSatisfy { alnum($0) || $0 == 0x2d }
}

/// RFC 1123 subdomain (Secret names).
func isDNSSubdomain(_ text: String) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 253 else { return false }
    return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isDNSLabel(String($0)) }
}

/// `spec.gitHubURL` parsed strictly: `https://HOST[:PORT]/SEGMENT[/SEGMENT...][/]`. The host
/// passes the proxy's own authority rules and must be a name (an IP literal would let a tenant
/// aim its proxy's allowlist at an address); path segments are GitHub's org and enterprise
/// slugs. Nothing else (userinfo, query, fragment, empty segments, quotes, spaces, controls,
/// non-ASCII) gets through, so the URL can be handed to the AGC and rendered anywhere.
struct GitHubEndpoint: Equatable {
    var host: String
    var port: UInt16
    var path: [String]

    init?(_ text: String) {
        guard text.utf8.count <= 2048, text.hasPrefix("https://") else { return nil }
        let rest = text.dropFirst("https://".count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let authorityText = rest[..<slash]
        // Authority.parse takes only printable ASCII and refuses '@' and '%'.
        guard case .success(let authority) = Authority.parse(authorityText, defaultPort: 443),
            case .name(let host) = authority.host, host.contains("."),
            host.split(separator: ".").allSatisfy({ isDNSLabel(String($0)) })
        else { return nil }
        var segments = rest[rest.index(after: slash)...].split(separator: "/", omittingEmptySubsequences: false)
        if segments.count > 1, segments.last?.isEmpty == true { segments.removeLast() }  // one trailing slash
        guard !segments.isEmpty, segments.count <= 8 else { return nil }
        for segment in segments {
            guard !segment.isEmpty, segment.utf8.count <= 100, segment != ".", segment != "..",
                segment.utf8.allSatisfy({ Self.isSlugByte($0) })
            else { return nil }
        }
        self.host = host
        self.port = authority.port
        self.path = segments.map(String.init)
    }

    static func isSlugByte(_ byte: UInt8) -> Bool {
        (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x30 && byte <= 0x39)
            || byte == 0x2d || byte == 0x5f || byte == 0x2e
    }
}

/// A duration of `digits` and one unit (`30s`, `5m`, `1h`) in seconds, at most `max`. The
/// number of digits is bounded and the multiplication overflow-checked, so no input traps.
public func durationSeconds(_ text: String, max: Int) -> Int? {
    guard let unit = text.last else { return nil }
    let digits = text.dropLast()
    guard !digits.isEmpty, digits.utf8.count <= 9, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
        let value = Int(digits)
    else { return nil }
    let factor: Int
    switch unit {
    case "s": factor = 1
    case "m": factor = 60
    case "h": factor = 3600
    default: return nil
    }
    let (seconds, overflow) = value.multipliedReportingOverflow(by: factor)
    guard !overflow, seconds <= max else { return nil }
    return seconds
}

/// What a tenant may add to its proxy's allowlist (`spec.proxy.extraAllowedHosts`): a host
/// name or `*.suffix` the proxy's own parser accepts, covered by the platform's
/// `--allowed-extra-hosts`, and never a name that can only mean something inside the cluster or
/// the cloud (whatever the platform list says: a too-wide platform pattern must not open them).
public enum TenantHosts {
    /// Suffixes that resolve to cluster services, the node, or cloud metadata, never to the internet.
    static let internalSuffixes = [
        ".svc", ".cluster.local", ".local", ".localhost", ".localdomain", ".internal", ".intranet", ".lan",
        ".home.arpa", ".in-addr.arpa", ".ip6.arpa", ".corp", ".home", ".test", ".invalid", ".example",
    ]
    /// Metadata service names outside those suffixes.
    static let metadataNames: Set<String> = ["metadata.google.internal", "metadata.azure.com", "metadata.tencentyun.com"]

    /// Why `text` is refused, or nil when it is allowed.
    static func refusal(_ text: String, allowed platform: [HostPattern]) -> String? {
        guard !isIPLiteral(text) else { return "'\(text)' is an IP literal: only host names" }
        guard let pattern = HostPattern.parse(text), pattern.description == text else {
            return "'\(text)' is not a lowercase host name or *.suffix the proxy accepts (labels of at most 63 characters)"
        }
        let name: String
        switch pattern {
        case .exact(let exact): name = exact
        case .suffix(let suffix): name = String(suffix.dropFirst())
        }
        let labels = name.split(separator: ".")
        if labels.count < 2 { return "'\(text)' is a single-label name (a cluster or local name, or a whole top-level domain)" }
        if metadataNames.contains(name) || internalSuffixes.contains(where: { ("." + name).hasSuffix($0) }) {
            return "'\(text)' names a cluster-internal, local or metadata address"
        }
        guard platform.contains(where: { covers($0, pattern) }) else {
            return "'\(text)' is not covered by the platform's allowed extra hosts"
        }
        return nil
    }

    /// True when every name `tenant` matches is matched by `platform`.
    static func covers(_ platform: HostPattern, _ tenant: HostPattern) -> Bool {
        switch (platform, tenant) {
        case (.exact(let allowed), .exact(let name)): return allowed == name
        case (.exact, .suffix): return false
        case (.suffix(let allowed), .exact(let name)): return HostPattern.suffix(allowed).matches(name)
        case (.suffix(let allowed), .suffix(let suffix)): return suffix == allowed || suffix.hasSuffix(allowed)
        }
    }

    /// Dotted quads in any spelling, and IPv6 literals with or without brackets.
    static func isIPLiteral(_ text: String) -> Bool {
        if text.contains(":") || text.hasPrefix("[") { return true }
        let labels = text.split(separator: ".", omittingEmptySubsequences: false)
        guard let last = labels.last else { return false }
        return Authority.looksNumeric(last)
    }
}
