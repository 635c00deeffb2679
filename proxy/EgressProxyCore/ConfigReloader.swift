import EgressLoop
import EgressPosix
import GatewayOps
import Logging

/// Turns the config file into the next `PolicySnapshot`: reads it, skips a watch event that
/// changed nothing, parses, applies the command-line overrides, keeps what only a restart
/// may change, and builds the snapshot; a bad file keeps the running policy and is counted.
/// Which loops get the new snapshot is the server's business, not this type's.
///
/// Confined to the admin loop once the server has started (before that, to the thread
/// calling `ProxyServer.start`). The tenant registry lives here because it is what makes a
/// reload keep each tenant's live counts (`maxTunnels` slots) by name.
final class ConfigReloader {
    /// Where reloads read from (nil: the embedded default, which cannot change).
    let path: String?
    /// Applied on top of every reloaded file (command-line flags win over the file).
    var overrides: (inout ProxyConfig) -> Void = { _ in }
    private(set) var current: PolicySnapshot
    private(set) var successes: UInt64 = 0
    private(set) var failures: UInt64 = 0
    /// Unix time of the last successful load, the first at start included (what
    /// `egress_proxy_config_last_reload_success_timestamp_seconds` shows).
    private(set) var lastSuccessUnixSeconds: Double
    /// Wall-clock nanoseconds since the epoch: injected, so a test can tell which load it sees.
    private let wallClock: @Sendable () -> UInt64
    private let registry = TenantRegistry()
    /// The addresses actually bound (port 0 resolved), denied as destinations in every snapshot.
    private var bound: [SocketAddress] = []
    /// SHA-256 of the file's bytes as last loaded, so a watch event that did not change the
    /// content (a touch, an unrelated file in the directory) does not count as a reload.
    private var loadedDigest: [UInt8]?
    private var watcher: FileWatcher?
    private let logger: Logger

    /// Fails when a tenant's `secretFile` cannot be read.
    init(config: ProxyConfig, path: String?, logger: Logger,
         wallClock: @escaping @Sendable () -> UInt64 = { Posix.wallClockNanoseconds() }) throws(ConfigError)
    {
        self.path = path
        self.logger = logger
        self.wallClock = wallClock
        current = try PolicySnapshot.make(config: config, registry: registry)
        lastSuccessUnixSeconds = Double(wallClock()) / 1e9
    }

    /// Rebuilds the running snapshot once the listeners are bound, so it denies them.
    func bound(to endpoints: [SocketAddress]) throws(ConfigError) {
        bound = endpoints
        current = try PolicySnapshot.make(config: current.config, bound: endpoints, registry: registry)
    }

    /// Calls `changed` when the file's content may have changed (a ConfigMap's symlink swap
    /// included). Call before `loop` runs, so no change after the server started is missed.
    func watch(on loop: EventLoop, changed: @escaping () -> Void) {
        guard let path else { return }
        loadedDigest = Posix.readSmallFile(path, limit: 16 << 20).map { SHA256Digest.hash($0) }
        do {
            watcher = try FileWatcher(path: path, loop: loop, onChange: changed)
        } catch {
            logger.error("cannot watch the config file; reload with SIGHUP", metadata: ["error": .string("\(error)")])
        }
    }

    /// Reads the file again. Returns the new snapshot to hand to the loops, or nil when
    /// nothing changes (no file path, unchanged content, a rejected file). Each outcome logs
    /// one line.
    /// - Parameter onlyIfChanged: a watch event (skip identical content, and a file missing
    ///   mid-swap), not an operator's SIGHUP.
    func reload(onlyIfChanged: Bool) -> PolicySnapshot? {
        guard let path else {
            logger.info("reload requested, but running on the embedded default")
            return nil
        }
        guard let bytes = Posix.readSmallFile(path, limit: 16 << 20) else {
            // Mid-swap a watch event may see no file; the next event brings it back.
            if onlyIfChanged { return nil }
            return reject("cannot read file", path: path)
        }
        let digest = SHA256Digest.hash(bytes)
        if onlyIfChanged && digest == loadedDigest { return nil }
        loadedDigest = digest
        switch ProxyConfig.parse(yaml: String(decoding: bytes, as: UTF8.self)) {
        case .failure(let error):
            return reject(error.description, path: path)
        case .success(var config):
            overrides(&config)
            keepRestartOnly(&config)
            let snapshot: PolicySnapshot
            do {
                snapshot = try PolicySnapshot.make(config: config, bound: bound, registry: registry)
            } catch {
                return reject(error.description, path: path)
            }
            current = snapshot
            successes += 1
            lastSuccessUnixSeconds = Double(wallClock()) / 1e9
            logger.info("config reloaded", metadata: ["tenants": .stringConvertible(config.tenants.count)])
            return snapshot
        }
    }

    /// The listeners and loops are made once, at start: a reload keeps the running values.
    private func keepRestartOnly(_ config: inout ProxyConfig) {
        let old = current.config
        guard config.listen != old.listen || config.admin != old.admin || config.loops != old.loops else { return }
        logger.warning("listen, admin and loops change only on restart; keeping the running values")
        config.listen = old.listen
        config.admin = old.admin
        config.loops = old.loops
    }

    private func reject(_ error: String, path: String) -> PolicySnapshot? {
        failures += 1
        logger.error("reload rejected, keeping the running config", metadata: ["path": .string(path), "error": .string(error)])
        return nil
    }
}
