import ArgumentParser
import Dispatch
import EgressLoop
import EgressPosix
import Histogram
import Synchronization

/// `connect-flood`: our loopback load generator (issue 4). It shares only EgressLoop and
/// EgressPosix with the proxy, none of the proxy's own code paths.
@main
struct ConnectFlood: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect-flood",
        abstract: "Load generator for HTTP CONNECT proxies, with its own loopback echo server.",
        subcommands: [Serve.self, Rate.self, Throughput.self, Hold.self]
    )
}

/// Options every client mode shares.
struct Common: ParsableArguments {
    @Option(help: "Proxy address, IP:PORT.") var proxy: String?
    @Option(help: "Echo server address (connect-flood serve), IP:PORT.") var target: String
    @Flag(help: "Connect to the target directly, without a proxy (the physical reference).") var direct = false
    @Option(help: "Client event loops.") var loops = 1
    @Option(help: "Seconds before one tunnel counts as timed out.") var timeout = 30
    @Flag(help: "Print one JSON object instead of text.") var json = false

    func flood() throws -> FloodTarget {
        guard let echo = SocketAddress(parsing: target) else { throw ValidationError("--target must be IP:PORT") }
        if direct { return FloodTarget(connectTo: echo, connectAuthority: nil, payload: 64) }
        guard let proxy, let address = SocketAddress(parsing: proxy) else {
            throw ValidationError("--proxy IP:PORT is required unless --direct")
        }
        return FloodTarget(connectTo: address, connectAuthority: target, payload: 64)
    }
}

/// `connect-flood serve`: the echo server every client mode talks to.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the loopback echo server (prints its address).")
    @Option(help: "Listen address; port 0 picks one.") var listen = "127.0.0.1:0"
    @Option(help: "Event loops.") var loops = 1

    func run() throws {
        Posix.raiseDescriptorLimit()
        guard var address = SocketAddress(parsing: listen) else { throw ValidationError("--listen must be IP:PORT") }
        var listeners: [EchoListener] = []
        for index in 0..<max(1, loops) {
            let loop = try EventLoop(name: "echo-\(index)")
            let socket = try Socket.listening(on: address, reusePort: true)
            address = try socket.localAddress()
            listeners.append(try EchoListener(loop: loop, socket: socket))
            try loop.start()
        }
        print("{\"echo\":\"\(address)\"}")
        fflushStdout()
        withExtendedLifetime(listeners) { DispatchSemaphore(value: 0).wait() }
    }
}

/// `connect-flood rate`: tunnels per second and latency percentiles.
struct Rate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "CONNECT + 64-byte round trip + close, repeatedly: closed loop (--concurrency) or open loop (--rate).")
    @OptionGroup var common: Common
    @Option(help: "Concurrent clients (closed loop).") var concurrency = 64
    @Option(help: "New tunnels per second (open loop); latency counts from each scheduled start.") var rate: Double?
    @Option(help: "Seconds to run.") var duration = 10.0
    @Option(help: "Stop after this many tunnels (the leak check runs 1,000,000).") var count: Int?
    @Option(help: "Proxy PID: report its RSS after the run.") var pid: Int?

    func run() throws {
        let target = try common.flood()
        let report = try runFlood(
            target: target, loops: common.loops, concurrency: concurrency, rate: rate, duration: .milliseconds(Int64(duration * 1000)),
            count: count, hold: false, timeout: .seconds(common.timeout))
        var fields: [(String, String)] = [
            ("mode", "\"rate\""), ("target", "\"\(common.direct ? "direct" : (common.proxy ?? ""))\""),
            ("tunnels_per_second", format(Double(report.results.completed) / report.seconds)),
            ("completed", "\(report.results.completed)"), ("failures", failuresJSON(report.results)),
        ]
        fields += latencyFields(report.results.latency)
        if let pid { fields.append(("rss_kib", "\(rssKiB(pid: pid) ?? -1)")) }
        emit(fields, json: common.json)
        try failIfNothingWorked(report.results.completed > 0)
    }
}

/// `connect-flood throughput`: bulk bytes each way through one or more tunnels.
struct Throughput: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stream --size bytes each way through --tunnels tunnels.")
    @OptionGroup var common: Common
    @Option(help: "Bytes each way per tunnel (K, M, G suffixes).") var size = "1G"
    @Option(help: "Tunnels streaming at once.") var tunnels = 1

    func run() throws {
        var target = try common.flood()
        guard let bytes = parseSize(size) else { throw ValidationError("--size like 512M or 2G") }
        target.payload = bytes
        let report = try runFlood(
            target: target, loops: common.loops, concurrency: tunnels, rate: nil, duration: .seconds(3600), count: tunnels,
            hold: false, timeout: .seconds(3600))
        let megabytes = Double(report.results.bytes) / 1_000_000
        emit([
            ("mode", "\"throughput\""), ("target", "\"\(common.direct ? "direct" : (common.proxy ?? ""))\""),
            ("mb_per_second", format(megabytes / report.seconds)), ("bytes_each_way", "\(report.results.bytes)"),
            ("seconds", format(report.seconds)), ("failures", failuresJSON(report.results)),
        ], json: common.json)
        try failIfNothingWorked(report.results.bytes > 0)
    }
}

/// `connect-flood hold`: many idle tunnels, held and then verified; reports the proxy's RSS.
struct Hold: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Open --tunnels tunnels, hold them --seconds, verify each still works.")
    @OptionGroup var common: Common
    @Option(help: "Tunnels to hold.") var tunnels = 1000
    @Option(help: "Seconds to hold them.") var seconds = 10.0
    @Option(help: "Tunnels being opened at once.") var concurrency = 200
    @Option(help: "Proxy PID: report its RSS before and while holding.") var pid: Int?

    func run() throws {
        let target = try common.flood()
        let before = pid.flatMap { rssKiB(pid: $0) }
        var heldRSS: Int?
        let report = try runFlood(
            target: target, loops: common.loops, concurrency: concurrency, rate: nil, duration: .seconds(3600), count: tunnels,
            hold: true, timeout: .seconds(common.timeout),
            whileHolding: {
                heldRSS = pid.flatMap { rssKiB(pid: $0) }
                sleepSeconds(seconds)
            })
        var fields: [(String, String)] = [
            ("mode", "\"hold\""), ("target", "\"\(common.direct ? "direct" : (common.proxy ?? ""))\""),
            ("opened", "\(report.opened)"), ("held", "\(report.verified.ok)"),
            ("lost", "\(report.verified.failed)"), ("failures", failuresJSON(report.results)),
        ]
        if let before, let heldRSS {
            fields += [
                ("rss_kib_before", "\(before)"), ("rss_kib_holding", "\(heldRSS)"),
                ("bytes_per_tunnel", "\(report.opened > 0 ? (heldRSS - before) * 1024 / report.opened : 0)"),
            ]
        }
        emit(fields, json: common.json)
        try failIfNothingWorked(report.opened > 0)
    }
}

/// A run in which every attempt failed measured nothing: exit 1, so a benchmark script cannot
/// record zeros (or a wrong proxy address) as a result.
func failIfNothingWorked(_ anythingWorked: Bool) throws {
    if !anythingWorked { throw ExitCode(1) }
}

// MARK: running

/// What one run measured, merged over the client loops.
struct FloodReport {
    var results = FloodResults()
    var seconds = 0.0
    /// Hold mode: tunnels opened before the hold (the verification round trips come on top).
    var opened = 0
    var verified = (ok: 0, failed: 0)
}

/// Runs drivers on `loops` client loops until every one is idle, optionally holds and
/// verifies, and merges their results (copied out on each loop's own thread).
func runFlood(
    target: FloodTarget, loops: Int, concurrency: Int, rate: Double?, duration: Duration, count: Int?, hold: Bool,
    timeout: Duration, whileHolding: (() -> Void)? = nil
) throws -> FloodReport {
    Posix.raiseDescriptorLimit()
    let loopCount = max(1, loops)
    let idle = DispatchSemaphore(value: 0)
    let collected = Mutex<[FloodResults]>([])
    let verified = Mutex<(ok: Int, failed: Int)>((0, 0))
    var eventLoops: [EventLoop] = []
    var drivers: [LoopBound<FloodDriver>] = []
    for index in 0..<loopCount {
        let loop = try EventLoop(name: "flood-\(index)", timerTick: .milliseconds(1))
        let share = { (total: Int) in total / loopCount + (index < total % loopCount ? 1 : 0) }
        let driver = FloodDriver(
            loop: loop, target: target, concurrency: max(1, share(concurrency)), rate: rate.map { $0 / Double(loopCount) },
            duration: duration, count: count.map(share), hold: hold, timeout: timeout)
        driver.onIdle = { idle.signal() }
        eventLoops.append(loop)
        drivers.append(LoopBound(driver, on: loop))
        try loop.start()
    }
    let started = Posix.monotonicNanoseconds()
    for bound in drivers { bound.loop.execute { bound.value.begin() } }
    for _ in 0..<loopCount { idle.wait() }
    let seconds = Double(Posix.monotonicNanoseconds() - started) / 1e9
    let openedCount = Mutex(0)
    if hold {
        let counted = DispatchSemaphore(value: 0)
        for bound in drivers {
            bound.loop.execute {
                let held = bound.value.heldTunnels.count
                openedCount.withLock { $0 += held }
                counted.signal()
            }
        }
        for _ in 0..<loopCount { counted.wait() }
        whileHolding?()
        let done = DispatchSemaphore(value: 0)
        for bound in drivers {
            bound.loop.execute {
                bound.value.verifyHeld { ok, failed in
                    verified.withLock { $0 = ($0.ok + ok, $0.failed + failed) }
                    done.signal()
                }
            }
        }
        for _ in 0..<loopCount { done.wait() }
    }
    let copied = DispatchSemaphore(value: 0)
    for bound in drivers {
        bound.loop.execute {
            for tunnel in bound.value.heldTunnels { tunnel.close() }
            let results = bound.value.results
            collected.withLock { $0.append(results) }
            copied.signal()
        }
    }
    for _ in 0..<loopCount { copied.wait() }
    for loop in eventLoops { loop.stop() }
    var report = FloodReport(seconds: seconds)
    for results in collected.withLock({ $0 }) { report.results.merge(results) }
    report.verified = verified.withLock { $0 }
    report.opened = openedCount.withLock { $0 }
    return report
}

// MARK: output

func latencyFields(_ histogram: Histogram<UInt64>) -> [(String, String)] {
    func ms(_ percentile: Double) -> String {
        histogram.totalCount == 0 ? "null" : format(Double(histogram.valueAtPercentile(percentile)) / 1e6)
    }
    return [("p50_ms", ms(50)), ("p99_ms", ms(99)), ("p999_ms", ms(99.9))]
}

func failuresJSON(_ results: FloodResults) -> String {
    "{" + FloodFailure.allCases.map { "\"\($0.rawValue)\":\(results.failures[$0.rawValue] ?? 0)" }.joined(separator: ",") + "}"
}

func emit(_ fields: [(String, String)], json: Bool) {
    if json {
        print("{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}")
    } else {
        print(fields.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
    }
    fflushStdout()
}

func format(_ value: Double) -> String {
    guard value.isFinite else { return "null" }
    return String(Double(Int64((value * 1000).rounded())) / 1000)
}

func parseSize(_ text: String) -> Int? {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = text.last, let unit = units[last], let value = Int(text.dropLast()) { return value * unit }
    return Int(text)
}

func rssKiB(pid: Int) -> Int? {
    guard let bytes = Posix.readSmallFile("/proc/\(pid)/status") else { return nil }
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "")
    }
    return nil
}

/// The hold period of `hold` mode: the thing being measured, not a wait for a condition.
func sleepSeconds(_ seconds: Double) {
    _ = DispatchSemaphore(value: 0).wait(timeout: .now() + seconds)
}

func fflushStdout() { Posix.flushStdout() }
