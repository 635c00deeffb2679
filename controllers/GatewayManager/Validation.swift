/// One reason a gateway is rejected: the field path and the message (reported as the
/// `Degraded` condition and an Event).
public struct GatewayProblem: Sendable, Equatable, CustomStringConvertible {
    public var field: String
    public var message: String

    public var description: String { "\(field): \(message)" }
}

/// Every problem of a rejected gateway.
public struct GatewayRejection: Error, Sendable, Equatable {
    public var problems: [GatewayProblem]
}

/// What the GMC knows besides the CR: its flags and the namespace's labels.
public struct GatewayEnvironment: Sendable {
    /// `--allowed-priority-classes` (empty = none allowed).
    public var allowedPriorityClasses: Set<String>
    public var namespaceLabels: [String: String]

    public static let privilegedLabel = "actions-gateway.github.com/privileged-profile"

    public init(allowedPriorityClasses: Set<String> = [], namespaceLabels: [String: String] = [:]) {
        self.allowedPriorityClasses = allowedPriorityClasses
        self.namespaceLabels = namespaceLabels
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
        let namespace = metadata.namespace ?? ""
        if namespace.isEmpty { problem("metadata.namespace", "required") }

        let secret = spec.gitHubAppRef?.name ?? ""
        if !isDNSSubdomain(secret) { problem("spec.gitHubAppRef.name", "required: the Secret holding appId, installationId, privateKey") }

        let url = spec.gitHubURL ?? ""
        if !isGitHubURL(url) { problem("spec.gitHubURL", "must be https://HOST/ORG (an org or enterprise URL)") }

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
        for (index, host) in extraHosts.enumerated() where HostName.isPattern(host) == false {
            problem("spec.proxy.extraAllowedHosts[\(index)]", "must be a host name or *.suffix")
        }

        let groups = spec.runnerGroups ?? []
        if groups.isEmpty { problem("spec.runnerGroups", "at least one runner group is required") }
        var seen = Set<String>()
        var defaulted: [DefaultedGateway.Group] = []
        for (index, group) in groups.enumerated() {
            let path = "spec.runnerGroups[\(index)]"
            let groupName = group.name ?? ""
            if !isDNSLabel(groupName, maxLength: 40) { problem("\(path).name", "must be a DNS label of at most 40 characters") }
            if !seen.insert(groupName).inserted { problem("\(path).name", "duplicate runner group name '\(groupName)'") }
            let labels = group.runnerLabels ?? []
            if labels.isEmpty { problem("\(path).runnerLabels", "at least one label is required") }
            let listeners = group.maxListeners ?? 1
            if !(1...100).contains(listeners) { problem("\(path).maxListeners", "must be 1 to 100") }
            let tiers = group.priorityTiers ?? []
            if tiers.count > 10 { problem("\(path).priorityTiers", "at most 10 tiers") }
            var previous = 0
            for (tierIndex, tier) in tiers.enumerated() {
                let tierPath = "\(path).priorityTiers[\(tierIndex)]"
                let threshold = tier.threshold ?? 0
                if threshold < 1 { problem("\(tierPath).threshold", "must be at least 1") }
                if threshold <= previous && tierIndex > 0 { problem("\(tierPath).threshold", "thresholds must be strictly ascending") }
                previous = max(previous, threshold)
                checkPriorityClass(tier.priorityClassName, "\(tierPath).priorityClassName", environment, problem)
            }
            let lastThreshold = tiers.last?.threshold
            var maxWorkers = group.maxWorkers ?? lastThreshold ?? 0
            if let explicit = group.maxWorkers, let lastThreshold, explicit != lastThreshold {
                problem("\(path).maxWorkers", "must equal the last tier threshold (\(lastThreshold)) when both are set")
            }
            if group.maxWorkers == nil && lastThreshold == nil {
                problem("\(path).maxWorkers", "set maxWorkers or priorityTiers")
                maxWorkers = 0
            }
            if let explicit = group.maxWorkers, explicit < 1 { problem("\(path).maxWorkers", "must be at least 1") }
            let retries = group.maxEvictionRetries ?? 2
            if !(0...10).contains(retries) { problem("\(path).maxEvictionRetries", "must be 0 to 10") }
            let ttl = durationSeconds(group.completedPodTTL ?? "5m")
            if ttl == nil { problem("\(path).completedPodTTL", "must be a duration such as 30s, 5m or 1h") }
            let podClass = group.podTemplate?.spec?.priorityClassName
            if podClass != nil { checkPriorityClass(podClass, "\(path).podTemplate.spec.priorityClassName", environment, problem) }
            defaulted.append(DefaultedGateway.Group(
                name: groupName, runnerLabels: labels, maxListeners: listeners, maxWorkers: maxWorkers,
                tiers: tiers.map { ($0.priorityClassName ?? "", $0.threshold ?? 0) }, maxEvictionRetries: retries,
                completedPodTTLSeconds: ttl ?? 0, podPriorityClassName: podClass))
        }
        guard problems.isEmpty else { return .failure(GatewayRejection(problems: problems)) }
        return .success(DefaultedGateway(
            name: name, namespace: namespace, gitHubAppSecret: secret, gitHubURL: url, securityProfile: profile,
            minReplicas: minReplicas, maxReplicas: maxReplicas, targetCPUUtilizationPercentage: cpu,
            extraAllowedHosts: extraHosts, groups: defaulted))
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

/// https://HOST/ORG[/...], no userinfo, no query.
func isGitHubURL(_ text: String) -> Bool {
    guard text.hasPrefix("https://") else { return false }
    let rest = text.dropFirst(8)
    guard let slash = rest.firstIndex(of: "/") else { return false }
    let host = rest[..<slash]
    let path = rest[rest.index(after: slash)...]
    guard !host.isEmpty, !host.contains("@"), !text.contains("?"), !text.contains("#") else { return false }
    return !(path.split(separator: "/").first ?? "").isEmpty
}

/// `30s`, `5m`, `1h` to seconds.
func durationSeconds(_ text: String) -> Int? {
    guard let unit = text.last, let value = Int(text.dropLast()), value >= 0 else { return nil }
    switch unit {
    case "s": return value
    case "m": return value * 60
    case "h": return value * 3600
    default: return nil
    }
}

/// Host names and `*.suffix` patterns for `extraAllowedHosts` (the proxy re-checks them).
enum HostName {
    static func isPattern(_ text: String) -> Bool {
        let name = text.hasPrefix("*.") ? String(text.dropFirst(2)) : text
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        return name.lowercased() == name && name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy {
            isDNSLabel(String($0)) || (!$0.isEmpty && $0.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f })
        }
    }
}
