import EgressPosix
import Vocabulary

/// The standard `process_*` series, read from /proc at scrape time.
public enum ProcessMetrics {
    /// Appends process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
    /// process_max_fds, process_cpu_seconds_total and process_start_time_seconds.
    public static func write(into writer: inout PrometheusWriter) {
        let stat = Posix.readSmallFile("/proc/self/stat").map { String(decoding: $0, as: UTF8.self) } ?? ""
        // Fields after the command name, which is in parentheses and may contain spaces.
        let afterName = stat.split(separator: ")", omittingEmptySubsequences: false).last ?? ""
        let fields = afterName.split(separator: " ")
        // fields[0] is field 3 (state): field N is fields[N - 3].
        func field(_ number: Int) -> Double { number - 3 < fields.count ? Double(fields[number - 3]) ?? 0 : 0 }
        let ticks = Double(max(1, Posix.clockTicksPerSecond()))

        writer.family("process_cpu_seconds_total", .counter, help: "Total user and system CPU time spent in seconds.")
        writer.sample("process_cpu_seconds_total", (field(14) + field(15)) / ticks)
        writer.family("process_resident_memory_bytes", .gauge, help: "Resident memory size in bytes.")
        writer.sample("process_resident_memory_bytes", field(24) * Double(Posix.pageSize()))
        writer.family("process_virtual_memory_bytes", .gauge, help: "Virtual memory size in bytes.")
        writer.sample("process_virtual_memory_bytes", field(23))
        writer.family("process_open_fds", .gauge, help: "Number of open file descriptors.")
        writer.sample("process_open_fds", Double(Posix.openDescriptorCount() ?? 0))
        writer.family("process_max_fds", .gauge, help: "Maximum number of open file descriptors.")
        writer.sample("process_max_fds", Double(Posix.maxDescriptors() ?? 0))
        writer.family("process_start_time_seconds", .gauge, help: "Start time of the process since unix epoch in seconds.")
        writer.sample("process_start_time_seconds", bootTime() + field(22) / ticks)
    }

    static func bootTime() -> Double {
        guard let bytes = Posix.readSmallFile("/proc/stat") else { return 0 }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6).trimmingPrefix(" ")) ?? 0
        }
        return 0
    }

    /// Resident set size in bytes (for logs and benchmarks).
    public static func residentBytes() -> Int {
        guard let bytes = Posix.readSmallFile("/proc/self/statm") else { return 0 }
        let fields = String(decoding: bytes, as: UTF8.self).split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Posix.pageSize()
    }
}

/// What every binary says about its build: `<prefix>_build_info{version} 1`, so a dashboard or
/// an alert can tell versions apart during a rollout (and `count by (version)` shows one).
public enum BuildInfo {
    public static let version = "0.1.0"

    public static func write(prefix: String, into writer: inout PrometheusWriter) {
        writer.family("\(prefix)_build_info", .gauge, help: "Build information; the value is always 1.")
        writer.sample("\(prefix)_build_info", labels: [("version", version)], 1)
    }
}
