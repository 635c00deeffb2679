import ArgumentParser
import EgressPosix
import EgressProxyCore
import GatewayOps
import Logging

/// `egress-proxy`: flags, config loading and wiring only; everything else is in
/// EgressProxyCore so tests can drive it.
struct EgressProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "egress-proxy",
        abstract: "HTTPS CONNECT egress proxy for GitHub Actions runners.",
        version: ProxyServer.version
    )

    @Option(name: .long, help: "YAML config file (or set EGRESS_PROXY_CONFIG).")
    var config: String?

    @Option(name: .long, help: "Proxy listen address, HOST:PORT (overrides the file).")
    var listen: String?

    @Option(name: .long, help: "Admin listen address, HOST:PORT (overrides the file).")
    var admin: String?

    @Option(name: .long, help: "Event loops; 0 = one per CPU (overrides the file).")
    var loops: Int?

    @Option(name: .long, help: "trace, debug, info, warning or error.")
    var logLevel: String = "info"

    // Where the cgroup filesystem is mounted and this process's entry in it (for tests, and
    // hosts that mount it elsewhere): its CPU quota and memory limit shape the defaults.
    @Option(name: .long, help: ArgumentHelp("cgroup filesystem root", visibility: .hidden))
    var cgroupRoot = "/sys/fs/cgroup"

    @Option(name: .long, help: ArgumentHelp("this process's /proc/self/cgroup", visibility: .hidden))
    var cgroupSelf = "/proc/self/cgroup"

    @Flag(name: .long, help: "Print the embedded default config and exit.")
    var printDefaultConfig = false

    @Flag(name: .long, help: "Validate the config, print the effective config, exit 0 (valid) or 1.")
    var checkConfig = false

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, warning, error")
        }
        if let loops, loops < 0 || loops > 1024 { throw ValidationError("--loops must be between 0 and 1024") }
        if let listen, SocketAddress(parsing: listen) == nil { throw ValidationError("--listen expects IP:PORT or [IPv6]:PORT") }
        if let admin, SocketAddress(parsing: admin) == nil { throw ValidationError("--admin expects IP:PORT or [IPv6]:PORT") }
    }

    func applyFlags(_ config: inout ProxyConfig) {
        if let listen, let address = SocketAddress(parsing: listen) { config.listen = address }
        if let admin, let address = SocketAddress(parsing: admin) { config.admin = address }
        if let loops { config.loops = loops }
    }

    func run() throws {
        // Before any thread exists, so every thread inherits the mask and signals reach
        // only the admin loop's signalfd.
        let logger: Logger
        do {
            logger = try ProcessLifecycle.begin(label: "egress-proxy", logLevel: logLevel)
        } catch {
            throw ValidationError("--log-level: \(error)")
        }
        if printDefaultConfig {
            print(ProxyConfig.defaultYAML, terminator: "")
            return
        }

        let path = config ?? Environment.get("EGRESS_PROXY_CONFIG")
        var loaded: ProxyConfig
        if let path {
            guard let bytes = Posix.readSmallFile(path, limit: 16 << 20) else {
                logger.error("cannot read config file", metadata: ["path": .string(path)])
                throw ExitCode(1)
            }
            switch ProxyConfig.parse(yaml: String(decoding: bytes, as: UTF8.self)) {
            case .success(let parsed): loaded = parsed
            case .failure(let error):
                if checkConfig { print("\(path): \(error)") }
                logger.error("invalid config", metadata: ["path": .string(path), "error": .string(error.description)])
                throw ExitCode(1)
            }
        } else {
            loaded = ProxyConfig.embeddedDefault()
        }
        applyFlags(&loaded)
        let server: ProxyServer
        do {
            server = try ProxyServer(
                config: loaded, logger: logger, configPath: path, cgroup: CgroupLimits.read(root: cgroupRoot, procSelfCgroup: cgroupSelf))
        } catch {
            if checkConfig { print("\(path ?? "(default)"): \(error)") }
            logger.error("invalid config", metadata: ["error": .string(error.description)])
            throw ExitCode(1)
        }
        if checkConfig {
            print(loaded.renderYAML(), terminator: "")
            return
        }
        let flags = self
        server.overrides = { flags.applyFlags(&$0) }
        do {
            _ = try server.start()
        } catch {
            logger.error("cannot start", metadata: ["error": .string("\(error)")])
            throw ExitCode(1)
        }
        server.watchSignals()
        throw ExitCode(server.waitForExit())
    }
}

/// Reads an environment variable (the only one we honour is EGRESS_PROXY_CONFIG).
enum Environment {
    static func get(_ name: String) -> String? { Posix.environment(name) }
}

EgressProxyCommand.main()
