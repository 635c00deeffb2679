import EgressPosix
import Foundation
import Logging
import OutboundPool
import Synchronization
import Yams

/// How to reach an API server: in-cluster (service-account token and CA under
/// /var/run/secrets/kubernetes.io/serviceaccount) or from a kubeconfig file, as people have
/// them: token, token file, client certificate (file or inline data) or an `exec` credential
/// plugin (client.authentication.k8s.io, as EKS and GKE kubeconfigs use).
public struct KubeConnection: Sendable, Equatable {
    public var server: String
    /// A PEM file for the server's CA (kubeconfig `certificate-authority-data` is written to one).
    public var caFile: String?
    public var token: String?
    public var tokenFile: String?
    /// PEM files of the client certificate and key (inline `-data` is written to 0600 files).
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    public var exec: ExecPlugin?

    public init(server: String) { self.server = server }

    /// `KubeConnection.Invalid`, as the Kubernetes API defines it (the fields we use).
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// The kubeconfig a controller uses when no flag names one: the first file of
    /// `$KUBECONFIG` (a list is not merged: the others are ignored, and the caller says so),
    /// else `~/.kube/config` if it exists.
    public static func defaultKubeconfigPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let list = environment["KUBECONFIG"], let first = list.split(separator: ":").first { return String(first) }
        guard let home = environment["HOME"] else { return nil }
        let path = home + "/.kube/config"
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// Where a pod's service-account credentials are mounted.
    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// In a pod: the API server from KUBERNETES_SERVICE_HOST/PORT, the mounted CA, and the
    /// projected token (re-read per request, as the kubelet rotates it). Nil outside a cluster.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment) -> KubeConnection? {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"] else { return nil }
        var connection = KubeConnection(server: host.contains(":") ? "https://[\(host)]:\(port)" : "https://\(host):\(port)")
        connection.caFile = serviceAccountDirectory + "/ca.crt"
        connection.tokenFile = serviceAccountDirectory + "/token"
        return connection
    }

    /// Picks the connection the way controller-runtime does: an explicit server, else the
    /// kubeconfig named by flag, else the first file of $KUBECONFIG, else in-cluster, else
    /// ~/.kube/config. Returns a warning to log when $KUBECONFIG lists several files.
    public static func resolve(
        apiServer: String?, kubeconfig: String?, context: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> (connection: KubeConnection, warning: String?) {
        if let apiServer { return (KubeConnection(server: apiServer), nil) }
        if let kubeconfig { return (try fromKubeconfig(kubeconfig, context: context), nil) }
        if let list = environment["KUBECONFIG"], !list.isEmpty, let first = defaultKubeconfigPath(environment: environment) {
            let warning = list.contains(":") ? "KUBECONFIG lists several files; only \(first) is read" : nil
            return (try fromKubeconfig(first, context: context), warning)
        }
        if let pod = inCluster(environment: environment) { return (pod, nil) }
        if let home = defaultKubeconfigPath(environment: environment) { return (try fromKubeconfig(home, context: context), nil) }
        throw Invalid(description: "no cluster: not in a pod, no --api-server, no --kubeconfig, no $KUBECONFIG or ~/.kube/config")
    }

    /// The current context of a kubeconfig (or `context` when given).
    public static func fromKubeconfig(_ path: String, context: String? = nil) throws -> KubeConnection {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            let root = try Yams.load(yaml: text) as? [String: Any]
        else { throw Invalid(description: "cannot read kubeconfig \(path)") }
        func named(_ list: String, _ name: String?, _ field: String) throws -> [String: Any] {
            guard let name, let entries = root[list] as? [[String: Any]],
                let entry = entries.first(where: { $0["name"] as? String == name }), let value = entry[field] as? [String: Any]
            else { throw Invalid(description: "kubeconfig \(path): no \(field) named \(name ?? "(none)")") }
            return value
        }
        guard let contextName = context ?? root["current-context"] as? String else {
            throw Invalid(description: "kubeconfig \(path): no current-context; pass --context")
        }
        let selected = try named("contexts", contextName, "context")
        let cluster = try named("clusters", selected["cluster"] as? String, "cluster")
        let user = try named("users", selected["user"] as? String, "user")
        guard let server = cluster["server"] as? String else { throw Invalid(description: "kubeconfig: cluster has no server") }
        if cluster["insecure-skip-tls-verify"] as? Bool == true {
            throw Invalid(description: "kubeconfig: insecure-skip-tls-verify is not supported; give the cluster's CA")
        }
        let directory = (path as NSString).deletingLastPathComponent
        func resolve(_ file: String) -> String { file.hasPrefix("/") ? file : directory + "/" + file }
        var connection = KubeConnection(server: server)
        if let file = cluster["certificate-authority"] as? String {
            connection.caFile = resolve(file)
        } else if let data = cluster["certificate-authority-data"] as? String {
            connection.caFile = try writePrivate(data, name: "ca", field: "certificate-authority-data")
        }
        if let file = user["client-certificate"] as? String {
            connection.clientCertificateFile = resolve(file)
        } else if let data = user["client-certificate-data"] as? String {
            connection.clientCertificateFile = try writePrivate(data, name: "cert", field: "client-certificate-data")
        }
        if let file = user["client-key"] as? String {
            connection.clientKeyFile = resolve(file)
        } else if let data = user["client-key-data"] as? String {
            connection.clientKeyFile = try writePrivate(data, name: "key", field: "client-key-data")
        }
        if (connection.clientCertificateFile == nil) != (connection.clientKeyFile == nil) {
            throw Invalid(description: "kubeconfig: a client certificate needs its key, and a key its certificate")
        }
        for unsupported in ["auth-provider", "username", "password"] where user[unsupported] != nil {
            throw Invalid(description: "kubeconfig: user \(unsupported) is not supported; use a token, a client certificate or exec")
        }
        connection.token = user["token"] as? String
        connection.tokenFile = (user["tokenFile"] as? String).map(resolve)
        if let exec = user["exec"] as? [String: Any] {
            guard let command = exec["command"] as? String else { throw Invalid(description: "kubeconfig: exec has no command") }
            let environment = (exec["env"] as? [[String: Any]] ?? []).compactMap { entry -> (String, String)? in
                guard let name = entry["name"] as? String, let value = entry["value"] as? String else { return nil }
                return (name, value)
            }
            connection.exec = ExecPlugin(
                command: command.contains("/") ? resolve(command) : command, arguments: exec["args"] as? [String] ?? [],
                environment: Dictionary(environment, uniquingKeysWith: { _, last in last }),
                apiVersion: exec["apiVersion"] as? String ?? "client.authentication.k8s.io/v1")
        }
        return connection
    }

    /// Inline base64 data written to a file only this user can read (libcurl takes files).
    private static func writePrivate(_ base64: String, name: String, field: String) throws -> String {
        guard let bytes = Data(base64Encoded: base64) else { throw Invalid(description: "kubeconfig: \(field) is not base64") }
        let file = NSTemporaryDirectory() + "kubeconfig-\(name)-\(getpid()).pem"
        guard FileManager.default.createFile(atPath: file, contents: bytes, attributes: [.posixPermissions: 0o600]) else {
            throw Invalid(description: "kubeconfig: cannot write \(file)")
        }
        return file
    }

    /// The pool settings this connection needs (CA and client certificate).
    public func apply(to configuration: inout PoolConfiguration) {
        if let caFile { configuration.caBundle = caFile }
        configuration.clientCertificate = clientCertificateFile
        configuration.clientKey = clientKeyFile
    }
}

/// A kubeconfig `exec` credential plugin: a command printing an ExecCredential (JSON) whose
/// `status.token` is the bearer token. Run when no unexpired token is cached; the token is
/// kept until its `expirationTimestamp` (or for the process's life when it has none).
public struct ExecPlugin: Sendable, Equatable {
    public var command: String
    public var arguments: [String]
    public var environment: [String: String]
    public var apiVersion: String

    /// Why a plugin gave no token.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// How long one run may take before it is killed. client-go sets none, and a plugin that
    /// waits for a browser login would then stall every request of the process for ever.
    public static let timeout: Duration = .seconds(60)

    /// Runs the plugin once: the token and when it expires. Blocks the calling thread for up
    /// to `timeout` (the cache runs it on a thread of its own).
    public func credential(timeout: Duration = ExecPlugin.timeout) throws -> (token: String, expires: Date?) {
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        env["KUBERNETES_EXEC_INFO"] = #"{"apiVersion":"\#(apiVersion)","kind":"ExecCredential","spec":{"interactive":false}}"#
        let result: Posix.RunResult
        do {
            result = try Posix.run(command, arguments: arguments, environment: env, timeout: timeout)
        } catch {
            throw Failure(description: "exec plugin \(command): \(error)")
        }
        guard !result.timedOut else { throw Failure(description: "exec plugin \(command) did not finish within \(timeout) and was killed") }
        guard result.status == .exited(0) else { throw Failure(description: "exec plugin \(command) \(result.status)") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(result.output)) as? [String: Any],
            object["kind"] as? String == "ExecCredential", let status = object["status"] as? [String: Any]
        else { throw Failure(description: "exec plugin \(command) printed no ExecCredential") }
        guard let token = status["token"] as? String, !token.isEmpty else {
            if status["clientCertificateData"] != nil {
                throw Failure(description: "exec plugin \(command) returned a client certificate; only token plugins are supported")
            }
            throw Failure(description: "exec plugin \(command) returned no token")
        }
        let expires = (status["expirationTimestamp"] as? String).flatMap { ISO8601DateFormatter().date(from: $0) }
        return (token, expires)
    }
}

/// The exec plugin's token, cached until shortly before it expires, shared by every request.
///
/// The plugin runs on a thread of its own, never under the lock and never on a Swift
/// concurrency thread: requests that still hold a valid token go on with it while a refresh
/// runs, and only callers with nothing valid wait for it. One run at a time; a failed run is
/// not repeated for `failureBackoff`, so a broken plugin is not started once per request.
final class ExecTokenCache: Sendable {
    /// What the plugin gave last, and who waits for the run in progress.
    private struct State {
        var token: String?
        var expires: Date?
        var refreshing = false
        var waiters: [CheckedContinuation<String?, Never>] = []
        var failedAt: Date?
    }

    private let run: @Sendable () throws -> (token: String, expires: Date?)
    private let now: @Sendable () -> Date
    private let state = Mutex(State())
    private let logger = Logger(label: "kubeconfig")
    static let refreshAhead: TimeInterval = 10
    static let failureBackoff: TimeInterval = 5

    init(run: @escaping @Sendable () throws -> (token: String, expires: Date?), now: @escaping @Sendable () -> Date) {
        self.run = run
        self.now = now
    }

    convenience init(plugin: ExecPlugin, now: @escaping @Sendable () -> Date) {
        self.init(run: { try plugin.credential() }, now: now)
    }

    /// What a caller does, decided under the lock.
    private enum Step {
        case use(String?)
        case wait
        case refresh(fallback: String?)
    }

    /// The token to send now (nil when the plugin has failed and nothing valid is cached:
    /// the request goes without, and its 401 is what the caller reports).
    func token() async -> String? {
        let clock = now()
        let step: Step = state.withLock { state in
            let valid = state.token.flatMap { token in state.expires.map { $0 > clock } ?? true ? token : nil }
            let fresh = valid != nil && (state.expires.map { $0.timeIntervalSince(clock) > Self.refreshAhead } ?? true)
            if fresh { return .use(valid) }
            if let failedAt = state.failedAt, clock.timeIntervalSince(failedAt) < Self.failureBackoff { return .use(valid) }
            if state.refreshing { return valid.map { .use($0) } ?? .wait }
            state.refreshing = true
            return .refresh(fallback: valid)
        }
        switch step {
        case .use(let token): return token
        case .wait: return await withCheckedContinuation { waiter in enqueue(waiter) }
        case .refresh(let fallback):
            if let fallback {
                // Still valid for a few seconds: refresh behind this request.
                spawnRefresh { _ in }
                return fallback
            }
            return await withCheckedContinuation { waiter in spawnRefresh { waiter.resume(returning: $0) } }
        }
    }

    /// Parks a caller until the run in progress ends (or answers at once if it just did).
    private func enqueue(_ waiter: CheckedContinuation<String?, Never>) {
        let answered: String?? = state.withLock { state in
            if state.refreshing {
                state.waiters.append(waiter)
                return .none
            }
            return .some(state.token)
        }
        if case .some(let token) = answered { waiter.resume(returning: token) }
    }

    private func spawnRefresh(_ done: @escaping @Sendable (String?) -> Void) {
        let body: @Sendable () -> Void = { [self] in
            let outcome = Result { try run() }
            let finished = now()
            let (token, waiters) = state.withLock { state in
                switch outcome {
                case .success(let credential):
                    state.token = credential.token
                    state.expires = credential.expires
                    state.failedAt = nil
                case .failure:
                    state.failedAt = finished
                }
                state.refreshing = false
                let waiters = state.waiters
                state.waiters = []
                let valid = state.token.flatMap { token in state.expires.map { $0 > finished } ?? true ? token : nil }
                return (valid, waiters)
            }
            if case .failure(let error) = outcome { logger.warning("kubeconfig exec plugin failed", metadata: ["error": "\(error)"]) }
            done(token)
            for waiter in waiters { waiter.resume(returning: token) }
        }
        do {
            try Posix.spawnThread(name: "exec-credential", body)
        } catch {
            body()  // no thread to be had: run it here rather than leave the callers parked
        }
    }
}

extension KubeClient {
    /// A client for a resolved connection (the pool must carry `connection.apply(to:)`).
    public convenience init(connection: KubeConnection, pool: OutboundPool, clock: any ControllerClock = SystemControllerClock()) {
        if let exec = connection.exec {
            let cache = ExecTokenCache(plugin: exec, now: { clock.wallNow() })
            self.init(server: connection.server, pool: pool, tokenSource: { await cache.token() })
        } else if let tokenFile = connection.tokenFile {
            self.init(server: connection.server, pool: pool, tokenFile: tokenFile)
        } else {
            self.init(server: connection.server, pool: pool, token: connection.token)
        }
    }
}
