/// The CPU and memory limits of the process's cgroup (v2, or v1's cpu and memory
/// controllers), for defaults that fit the container rather than the node: a pod limited to
/// 2 CPUs on a 64-CPU node must not start 64 loops, and a pod limited to 256 MiB must refuse
/// new tunnels before the kernel's OOM killer ends all of them.
public struct CgroupLimits: Sendable, Equatable {
    /// CPUs the quota allows (quota / period, e.g. 1.5); nil = no quota.
    public var cpus: Double?
    /// Bytes; nil = no limit.
    public var memoryBytes: Int?

    public init(cpus: Double? = nil, memoryBytes: Int? = nil) {
        self.cpus = cpus
        self.memoryBytes = memoryBytes
    }

    /// Reads the limits of this process's cgroup under `root` (`/sys/fs/cgroup`, or a test's
    /// copy of such a tree), the cgroup path taken from `procSelfCgroup`'s text. Missing files
    /// mean no limit: outside a container there is nothing to fit.
    public static func read(root: String = "/sys/fs/cgroup", procSelfCgroup: String = "/proc/self/cgroup") -> CgroupLimits {
        func text(_ path: String) -> String? {
            Posix.readSmallFile(path, limit: 64 * 1024).map { String(decoding: $0, as: UTF8.self) }
        }
        let paths = text(procSelfCgroup).map(Self.paths) ?? [:]
        // v2: one unified hierarchy ("0::/path"); a container usually sees itself at "/".
        if let unified = paths[""] {
            let directory = root + (unified == "/" ? "" : unified)
            if text(directory + "/cpu.max") != nil || text(directory + "/memory.max") != nil {
                return CgroupLimits(cpus: text(directory + "/cpu.max").flatMap(Self.cpusV2),
                                    memoryBytes: text(directory + "/memory.max").flatMap(Self.memoryV2))
            }
        }
        // v1: per-controller hierarchies, mounted as root/cpu and root/memory.
        let cpuDirectory = root + "/cpu" + (paths["cpu"].map { $0 == "/" ? "" : $0 } ?? "")
        let memoryDirectory = root + "/memory" + (paths["memory"].map { $0 == "/" ? "" : $0 } ?? "")
        let quota = text(cpuDirectory + "/cpu.cfs_quota_us").flatMap { Int($0.trimmed) }
        let period = text(cpuDirectory + "/cpu.cfs_period_us").flatMap { Int($0.trimmed) }
        var limits = CgroupLimits()
        if let quota, let period, quota > 0, period > 0 { limits.cpus = Double(quota) / Double(period) }
        // v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages): treat over 2^60 as none.
        if let bytes = text(memoryDirectory + "/memory.limit_in_bytes").flatMap({ Int($0.trimmed) }), bytes > 0, bytes < 1 << 60 {
            limits.memoryBytes = bytes
        }
        return limits
    }

    /// `/proc/self/cgroup` lines (`id:controllers:path`) as controller -> path; the v2 line's
    /// controller list is empty, so it is keyed "".
    static func paths(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            for controller in fields[1].split(separator: ",", omittingEmptySubsequences: false) {
                result[String(controller)] = String(fields[2])
            }
        }
        return result
    }

    /// `cpu.max`: "max 100000" (no quota) or "150000 100000" (1.5 CPUs).
    static func cpusV2(_ text: String) -> Double? {
        let fields = text.trimmed.split(separator: " ")
        guard fields.count == 2, let quota = Int(fields[0]), let period = Int(fields[1]), quota > 0, period > 0 else { return nil }
        return Double(quota) / Double(period)
    }

    /// `memory.max`: "max" or bytes.
    static func memoryV2(_ text: String) -> Int? {
        guard let bytes = Int(text.trimmed), bytes > 0 else { return nil }
        return bytes
    }

    /// Event loops for `loops: 0`: the CPUs this process may run on, lowered to the quota
    /// rounded up (1.5 CPUs: 2 loops, each busy about three quarters of the time).
    public func loops(affinityCPUs: Int) -> Int {
        guard let cpus else { return max(1, affinityCPUs) }
        return max(1, min(affinityCPUs, Int(cpus.rounded(.up))))
    }
}

extension String {
    fileprivate var trimmed: String {
        String(self.drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
    }
}
