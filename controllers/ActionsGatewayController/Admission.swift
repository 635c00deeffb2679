import KubeKit

/// A Kubernetes resource quantity (`500m`, `1Gi`, `2`, `0.5`) in thousandths, overflow-checked:
/// what no Int64 holds saturates at `Int64.max` (a quota that large limits nothing).
public enum Quantity {
    public static func milli(_ text: String) -> Int64? {
        let text = text.trimmingCharacters(in: .whitespaces)
        let suffixes: [(String, Int64)] = [
            ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("Pi", 1 << 50), ("Ei", 1 << 60),
            ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000), ("P", 1_000_000_000_000_000),
        ]
        var number = Substring(text)
        var factor: Int64 = 1000  // milli-units per unit
        var divisor: Int64 = 1
        if number.hasSuffix("m") {
            number = number.dropLast()
            factor = 1
        } else if let (suffix, scale) = suffixes.first(where: { number.hasSuffix($0.0) }) {
            number = number.dropLast(suffix.count)
            factor = scale.multipliedReportingOverflow(by: 1000).overflow ? Int64.max : scale * 1000
        }
        let pieces = number.split(separator: ".", omittingEmptySubsequences: false)
        guard pieces.count <= 2, let whole = pieces.first, !whole.isEmpty || pieces.count == 2,
            (whole + (pieces.count == 2 ? pieces[1] : "")).allSatisfy(\.isASCIIDigit), whole.count + (pieces.count == 2 ? pieces[1].count : 0) <= 18
        else { return nil }
        let fraction = pieces.count == 2 ? pieces[1] : ""
        for _ in fraction { divisor *= 10 }
        let digits = Int64(whole + fraction) ?? 0
        let (product, overflow) = digits.multipliedReportingOverflow(by: factor)
        if overflow || factor == Int64.max { return digits == 0 ? 0 : Int64.max }
        // Round up: a request of 0.0001 cores still needs a millicore.
        return (product + divisor - 1) / divisor
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

/// What one worker pod of a group asks for, and the facts quota scopes look at.
public struct PodShape: Sendable, Equatable {
    /// Resource name (`requests.cpu`, `limits.memory`, `requests.nvidia.com/gpu`, `pods`) to milli-units.
    public var needs: [String: Int64]
    public var priorityClass: String?
    /// `activeDeadlineSeconds` set (always, for workers): the `Terminating` scope.
    public var terminating: Bool
    /// No requests and no limits at all: the `BestEffort` scope.
    public var bestEffort: Bool

    /// Sums the containers' requests and limits the way quota admission counts them: `cpu` in
    /// a quota's `hard` means `requests.cpu`; an extended resource with only a limit requests it too.
    public init(containers: [ResourceRequirements], priorityClass: String?, terminating: Bool) {
        var needs: [String: Int64] = ["pods": 1000, "count/pods": 1000]
        var any = false
        for resources in containers {
            var requests = resources.requests ?? [:]
            for (name, value) in resources.limits ?? [:] where requests[name] == nil && name.contains("/") { requests[name] = value }
            for (prefix, map) in [("requests.", requests), ("limits.", resources.limits ?? [:])] {
                for (name, value) in map {
                    guard let amount = Quantity.milli(value) else { continue }
                    any = true
                    let key = prefix + name
                    needs[key] = (needs[key] ?? 0).addingReportingOverflow(amount).partialValue
                    if prefix == "requests.", name == "cpu" || name == "memory" || name == "ephemeral-storage" { needs[name] = needs[key] }
                }
            }
        }
        self.needs = needs
        self.priorityClass = priorityClass
        self.terminating = terminating
        bestEffort = !any
    }

    /// The shape of a pod already in the cache.
    public init(pod: Pod) {
        self.init(containers: (pod.spec?.containers ?? []).map { $0.resources ?? ResourceRequirements() },
                  priorityClass: pod.spec?.priorityClassName, terminating: pod.spec?.activeDeadlineSeconds != nil)
    }

    /// Whether a quota with these scopes counts this pod.
    public func matches(_ quota: ResourceQuota) -> Bool {
        for scope in quota.spec?.scopes ?? [] where !matches(scope: scope, operator: "Exists", values: []) { return false }
        for requirement in quota.spec?.scopeSelector?.matchExpressions ?? []
        where !matches(scope: requirement.scopeName, operator: requirement.operator, values: requirement.values ?? []) {
            return false
        }
        return true
    }

    private func matches(scope: String, operator op: String, values: [String]) -> Bool {
        let holds: Bool
        switch scope {
        case "Terminating": holds = terminating
        case "NotTerminating": holds = !terminating
        case "BestEffort": holds = bestEffort
        case "NotBestEffort": holds = !bestEffort
        case "PriorityClass":
            switch op {
            case "In": return priorityClass.map(values.contains) ?? false
            case "NotIn": return !(priorityClass.map(values.contains) ?? false)
            case "Exists": return priorityClass != nil
            case "DoesNotExist": return priorityClass == nil
            default: return false
            }
        default: return false  // a scope we do not know (CrossNamespacePodAffinity, ...): assume it does not count us
        }
        return op == "DoesNotExist" ? !holds : holds
    }
}

/// Why a job is held, in numbers, for `/jobs`, logs and metrics.
public struct Hold: Sendable, Equatable, CustomStringConvertible {
    /// `ceiling` or `quota`.
    public var reason: String
    public var detail: String
    /// Room is expected within seconds (a reclaimed worker is going): offer again after 1 s
    /// instead of the 5 s re-offer cadence.
    public var soon = false
    public var description: String { "\(reason) \(detail)" }

    public init(reason: String, detail: String, soon: Bool = false) {
        self.reason = reason
        self.detail = detail
        self.soon = soon
    }
}

/// Admission (spec/agc.md section 4, steps 1-5): pure functions of the group's settings, its
/// live pods and the namespace's quotas, so every verdict is a table-driven unit test.
public enum Admission {
    /// The tier a new pod gets: the first whose threshold is above `active`; nil = at the ceiling.
    /// Without tiers, tier 0 with the template's own class while `active < maxWorkers`.
    public static func tier(active: Int, tiers: [(priorityClassName: String, threshold: Int)], maxWorkers: Int, templateClass: String?)
        -> (index: Int, priorityClass: String?)?
    {
        if tiers.isEmpty { return active < maxWorkers ? (0, templateClass) : nil }
        guard let index = tiers.firstIndex(where: { $0.threshold > active }) else { return nil }
        return (index, tiers[index].priorityClassName)
    }

    /// The ceiling: the last tier's threshold, else `maxWorkers`.
    public static func ceiling(tiers: [(priorityClassName: String, threshold: Int)], maxWorkers: Int) -> Int {
        tiers.last?.threshold ?? maxWorkers
    }

    /// How many more pods of `shape` the quotas admit (`Int.max` when none constrains it).
    /// Usage is the larger of the quota's `status.used` and what `pods` (the live, non-terminal
    /// pods we know of) add up to under its scopes; `reserved` are admitted pods not yet in the cache.
    /// `releasing`: pods about to go (not in `pods`), whose share the quota's `status.used`
    /// still counts: what a reclaim would free.
    public static func headroom(for shape: PodShape, quotas: [ResourceQuota], pods: [PodShape], reserved: [PodShape] = [],
                                releasing: [PodShape] = []) -> (fits: Int, limiting: Hold?)
    {
        var fits = Int.max
        var limiting: Hold?
        for quota in quotas where shape.matches(quota) {
            let counted = (pods + reserved).filter { $0.matches(quota) }
            let released = releasing.filter { $0.matches(quota) }
            for (resource, hardText) in quota.spec?.hard ?? [:] {
                guard let need = shape.needs[resource], need > 0, let hard = Quantity.milli(hardText) else { continue }
                let summed = counted.reduce(Int64(0)) { $0.addingReportingOverflow($1.needs[resource] ?? 0).partialValue }
                let freed = released.reduce(Int64(0)) { $0.addingReportingOverflow($1.needs[resource] ?? 0).partialValue }
                let recorded = quota.status?.used?[resource].flatMap(Quantity.milli) ?? 0
                let used = max(releasing.isEmpty ? recorded : max(0, recorded - freed), summed)
                let left = max(0, hard - used)
                let count = Int(clamping: left / need)
                if count < fits {
                    fits = count
                    limiting = Hold(reason: "quota", detail: "\(resource) \(format(used, resource))/\(format(hard, resource))")
                }
            }
        }
        return (fits, limiting)
    }

    static func format(_ milli: Int64, _ resource: String) -> String {
        milli % 1000 == 0 ? String(milli / 1000) : "\(milli)m"
    }

    /// One group's share of the capacity to advertise.
    public struct Demand: Sendable, Equatable {
        public var group: String
        /// Non-terminal worker pods plus admitted jobs not yet in the cache.
        public var active: Int
        public var ceiling: Int
        public var shape: PodShape
        /// Jobs GitHub reports queued for the group (nil = unknown: one probe slot).
        public var queued: Int?

        public init(group: String, active: Int, ceiling: Int, shape: PodShape, queued: Int?) {
            self.group = group
            self.active = active
            self.ceiling = ceiling
            self.shape = shape
            self.queued = queued
        }
    }

    /// The total each group advertises: its active pods plus new slots, where the new slots of
    /// all groups together fit every quota (one allocator, so two groups never over-commit a
    /// shared quota), in group order, each taking at most what it has queued (one while unknown)
    /// and its ceiling admits. Returns totals and, per group, why it got fewer slots than it wanted.
    public static func allocate(_ demands: [Demand], quotas: [ResourceQuota], pods: [PodShape]) -> [String: (total: Int, held: Hold?)] {
        var taken: [PodShape] = []
        var result: [String: (total: Int, held: Hold?)] = [:]
        for demand in demands {
            let room = max(0, demand.ceiling - demand.active)
            let wanted = min(room, max(demand.queued ?? 1, 1))
            let (fits, limiting) = headroom(for: demand.shape, quotas: quotas, pods: pods, reserved: taken)
            let granted = min(wanted, fits)
            taken += Array(repeating: demand.shape, count: granted)
            var held: Hold?
            if room == 0 {
                held = Hold(reason: "ceiling", detail: "\(demand.active)/\(demand.ceiling)")
            } else if granted < wanted {
                held = limiting
            }
            result[demand.group] = (demand.active + granted, held)
        }
        return result
    }

    /// Step 4, reclaim: the fewest of `candidates` (already ordered, newest first) whose
    /// deletion lets one pod of `shape` fit, with `releasing` (reclaims under way) counted as
    /// freed. Empty when the reclaims under way already make room (wait for them) and nil when
    /// even every candidate would not.
    public static func victims(for shape: PodShape, quotas: [ResourceQuota], pods: [(name: String, shape: PodShape)],
                               candidates: [String], releasing: [String], reserved: [PodShape]) -> [String]? {
        func fits(_ freed: Set<String>) -> Bool {
            headroom(for: shape, quotas: quotas, pods: pods.filter { !freed.contains($0.name) }.map(\.shape), reserved: reserved,
                     releasing: pods.filter { freed.contains($0.name) }.map(\.shape)).fits >= 1
        }
        var freed = Set(releasing)
        if fits(freed) { return [] }
        var chosen: [String] = []
        for candidate in candidates where !freed.contains(candidate) {
            chosen.append(candidate)
            freed.insert(candidate)
            guard fits(freed) else { continue }
            // Keep only those that were needed: a CPU worker frees nothing under a GPU quota.
            for name in chosen where fits(freed.subtracting([name])) {
                freed.remove(name)
                chosen.removeAll { $0 == name }
            }
            return chosen
        }
        return nil
    }

    /// Step 5: the nodes that already run `maxPodsPerNode` of the gateway's workers (sorted).
    public static func fullNodes(_ nodes: [String], maxPodsPerNode: Int?) -> [String] {
        guard let limit = maxPodsPerNode else { return [] }
        var counts: [String: Int] = [:]
        for node in nodes { counts[node, default: 0] += 1 }
        return counts.filter { $0.value >= limit }.keys.sorted()
    }
}
