import EgressPosix
import Foundation
import Testing

/// The container's CPU quota and memory limit, read from a cgroup tree the test writes (v2
/// and v1 layouts), and the loop count they give.
@Suite struct CgroupTests {
    func tree(_ files: [String: String]) throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("cgroup-\(UInt64.random(in: 0...UInt64.max))").path
        for (path, text) in files {
            let full = root + "/" + path
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: true, encoding: .utf8)
        }
        return root
    }

    @Test func versionTwoQuotaAndLimitAreRead() throws {
        let root = try tree(["proc-cgroup": "0::/kubepods/pod1/c1\n", "kubepods/pod1/c1/cpu.max": "150000 100000\n",
                             "kubepods/pod1/c1/memory.max": "268435456\n"])
        let limits = CgroupLimits.read(root: root, procSelfCgroup: root + "/proc-cgroup")
        #expect(limits == CgroupLimits(cpus: 1.5, memoryBytes: 268_435_456))
        #expect(limits.loops(affinityCPUs: 64) == 2, "1.5 CPUs: 2 loops, not 64")
        #expect(limits.loops(affinityCPUs: 1) == 1, "the affinity still caps")
        let open = try tree(["proc-cgroup": "0::/\n", "cpu.max": "max 100000\n", "memory.max": "max\n"])
        #expect(CgroupLimits.read(root: open, procSelfCgroup: open + "/proc-cgroup") == CgroupLimits())
        #expect(CgroupLimits().loops(affinityCPUs: 8) == 8)
    }

    @Test func versionOneControllersAreRead() throws {
        let root = try tree(["proc-cgroup": "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n",
                             "cpu/docker/abc/cpu.cfs_quota_us": "200000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n",
                             "memory/docker/abc/memory.limit_in_bytes": "536870912\n"])
        #expect(CgroupLimits.read(root: root, procSelfCgroup: root + "/proc-cgroup") == CgroupLimits(cpus: 2, memoryBytes: 536_870_912))
        let unlimited = try tree(["proc-cgroup": "4:memory:/\n3:cpu:/\n", "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
                                  "memory/memory.limit_in_bytes": "9223372036854771712\n"])
        #expect(CgroupLimits.read(root: unlimited, procSelfCgroup: unlimited + "/proc-cgroup") == CgroupLimits())
        #expect(CgroupLimits.read(root: "/nonexistent", procSelfCgroup: "/nonexistent/cgroup") == CgroupLimits(), "no cgroup: no limits")
    }
}
