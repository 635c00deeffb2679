import ActionsGatewayController
import AGCWorker
import ArgumentParser
import EgressLoop
import EgressPosix
import Foundation
import GatewayManager
import GatewayOps
import GitHubKit
import KubeKit
import Logging
import OutboundPool
import Vocabulary
import Yams

/// The entry: `agc worker` runs synchronously as PID 1; the rest through `ProcessLifecycle.runMain`
/// (why not an async main: see there).
@main
enum AGCMain {
    /// `agc worker` relays TERM through a signalfd, which needs the signal blocked in every
    /// thread: it starts here, before argument parsing or any task has started a thread that
    /// would take the signal's default action (death, no relay).
    static func main() {
        if CommandLine.arguments.dropFirst().first == "worker" {
            Foundation.exit(WorkerSupervisor.main(environment: ProcessInfo.processInfo.environment))
        }
        ProcessLifecycle.runMain { await AGC.main(nil) }
    }
}

struct AGC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agc", abstract: "Actions Gateway Controller: acquires a gateway's GitHub jobs, one worker pod per job.",
        subcommands: [Run.self, RenderPod.self, Worker.self], defaultSubcommand: Run.self)
}

/// `agc worker`: the wrapper that is PID 1 of a worker pod's runner container. Configured by
/// its environment only (the pod builder sets it): AGC_WORKER_MODE, RUNNER_HOME,
/// AGC_SECRETS_DIR, WORKER_SHUTDOWN_GRACE, PROXY_CA_CERT_PATH, GITHUB_CA_CERT_PATH.
struct Worker: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run one job's runner (PID 1 of a worker pod); configured by its environment.")

    func run() throws {
        throw ExitCode(WorkerSupervisor.main(environment: ProcessInfo.processInfo.environment))
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the AGC of one gateway.")

    @Option(help: "The gateway's namespace.") var namespace: String
    @Option(help: "The ActionsGateway's name.") var gateway: String
    @Option(help: "Directory holding appId, installationId and privateKey (the mounted Secret).") var credentials: String
    @Option(help: "API server URL; default: in-cluster, else the kubeconfig.") var apiServer: String?
    @Option(help: "A kubeconfig file.") var kubeconfig: String?
    @Option(help: "Admin endpoint, IP:PORT (/healthz /readyz /metrics /jobs).") var admin = "0.0.0.0:8080"
    @Option(help: "GitHub REST API base (default: derived from spec.gitHubURL).") var githubApiUrl: String?
    @Option(help: "Extra CA bundle for GitHub (GHES with a private CA, test servers).") var githubCa: String?
    @Option(help: "Image of the runner container when the template names none.") var workerImage = GatewayImages.defaultWorker
    @Option(help: "The node pools file (JSON) the GMC renders into <gateway>-node-pools, mounted.") var nodePools: String?
    @Option(help: "The GMC's wake key's public half (base64, 32 bytes): POST /wake then takes the GMC's signed wakes.")
    var wakePublicKey: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel = "info"

    func run() async throws {
        var logger: Logger
        do {
            logger = try ProcessLifecycle.begin(label: "agc", logLevel: logLevel)
        } catch {
            throw ValidationError("--log-level: \(error)")
        }
        // On every line, so a log pipeline can pick one gateway's out of a cluster's (stable keys,
        // docs/operations/observability.md).
        logger[metadataKey: "namespace"] = .string(namespace)
        logger[metadataKey: "gateway"] = .string(gateway)
        guard let adminAddress = SocketAddress(parsing: admin) else { throw ValidationError("--admin expects IP:PORT") }
        let wakeKey = try wakePublicKey.map { text in
            guard let key = WakeVerifyKey(base64: text) else { throw ValidationError("--wake-public-key: not base64 of a 32-byte Ed25519 key") }
            return key
        }
        if let githubApiUrl, !GitHubURLs.allowed(githubApiUrl) {
            throw ValidationError("--github-api-url must be https (or http to a loopback address)")
        }
        let app: AppCredentials
        do {
            app = try AppCredentials.load(directory: credentials)
        } catch {
            throw ValidationError("--credentials: \(error)")
        }
        let connection: KubeConnection
        do {
            connection = try KubeConnection.resolve(apiServer: apiServer, kubeconfig: kubeconfig, context: nil).connection
        } catch {
            throw ValidationError("\(error)")
        }
        // Two pools: the Kubernetes API direct, GitHub through the tenant's egress proxy
        // (HTTPS_PROXY, as curl reads it), each with its own trust.
        var kubeConfiguration = PoolConfiguration()
        connection.apply(to: &kubeConfiguration)
        kubeConfiguration.maxConnectionsPerHost = 16
        let kubePool = try OutboundPool(configuration: kubeConfiguration)
        var gitHubConfiguration = PoolConfiguration(caBundle: githubCa)
        // GitHub speaks HTTP/2, so classic sessions' long polls share connections (100 streams
        // each); an HTTP/1.1 server (GHES behind an old balancer, the fakes) needs one connection
        // per held poll, and a lower cap would queue session creates behind 50 s polls.
        gitHubConfiguration.maxConnectionsPerHost = 1_100
        let gitHubPool = try OutboundPool(configuration: gitHubConfiguration)
        let environment = ProcessInfo.processInfo.environment
        let metrics = AGCMetrics()
        let controller = ActionsGatewayController(
            options: .init(namespace: namespace, gateway: gateway, apiBase: githubApiUrl, workerImage: workerImage,
                           httpsProxy: environment["HTTPS_PROXY"] ?? environment["https_proxy"],
                           httpProxy: environment["HTTP_PROXY"] ?? environment["http_proxy"],
                           noProxy: environment["NO_PROXY"] ?? environment["no_proxy"], nodePoolsFile: nodePools),
            kube: KubeClient(connection: connection, pool: kubePool), pool: gitHubPool, credentials: app, metrics: metrics, logger: logger)
        let adminLoop = try EventLoop(name: "agc-admin")
        let lifecycle = controller.lifecycle
        let wake = wakeKey.map { WakeEndpoint(key: $0, namespace: namespace, gateway: gateway, controller: controller, logger: logger) }
        let post: AdminServer.PostRouter? = wake.map { endpoint in { post, respond in endpoint.handle(post, respond: respond) } }
        let server = try AdminServer(loop: adminLoop, address: adminAddress, router: { _, path, respond in
            switch path {
            case "/healthz": respond(AdminResponse(status: 200, body: "ok\n"))
            case "/readyz": respond(AdminResponse(status: controller.isReady ? 200 : 503, body: controller.isReady ? "ready\n" : "starting\n"))
            case "/metrics":
                // The GitHub pool's transport series (how many polls ride its own HTTP/2
                // connections) come from its loop, so the answer waits for them; it is given
                // back on the admin loop, as AdminServer requires.
                let reply = LoopBound(respond, on: adminLoop)
                Task {
                    var transport = PrometheusWriter()
                    await gitHubPool.statistics().writeTransport(into: &transport, prefix: "agc_github")
                    let body = metrics.render() + transport.text
                    adminLoop.execute { reply.value(AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body)) }
                }
            case "/jobs":
                let jobs = lifecycle.jobs()
                let body = (try? JSONSerialization.data(withJSONObject: jobs, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) }
                respond(AdminResponse(status: 200, contentType: "application/json", body: (body ?? "[]") + "\n"))
            default: respond(AdminResponse(status: 404, body: "not found\n"))
            }
        }, post: post, bodyLimits: .init(maxBody: AGCWake.maxBodyBytes, inFlightBudget: 1 << 20))
        try adminLoop.start()
        logger.info("agc started", metadata: ["admin": .string(server.boundAddress.description)])
        let work = Task { await controller.run() }
        await ProcessLifecycle.waitForStop()
        // Stop acquiring and close sessions; running worker pods finish on their own.
        work.cancel()
        await work.value
        logger.info("agc stopped")
        withExtendedLifetime(server) {}
    }
}

struct RenderPod: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "render-pod", abstract: "Print a group's worker pod and Secret (no cluster).")

    @Option(help: "File holding one ActionsGateway; - reads stdin.") var file: String
    @Option(help: "The runner group.") var group: String
    @Option(help: "A JSON file with the job (jobId, runId, repository, workflow, jobName).") var job: String?
    @Option(help: "Image of the runner container when the template names none.") var workerImage = GatewayImages.defaultWorker

    func run() throws {
        let document: GatewayDocument
        do {
            document = try GatewayDocument.read(path: file)
        } catch {
            throw ValidationError(error.description)
        }
        guard let object = try? KubeClient.decode(document.json) else { throw ValidationError("\(file): not a JSON object") }
        let defaulted: DefaultedGateway
        switch AGCGatewayView.validate(document.gateway) {
        case .success(let value): defaulted = value
        case .failure(let rejection): throw ValidationError(rejection.problems.map(\.description).joined(separator: "; "))
        }
        guard let settings = defaulted.groups.first(where: { $0.name == group }) else {
            throw ValidationError("no runner group \(group) (groups: \(defaulted.groups.map(\.name).joined(separator: ", ")))")
        }
        /// The `--job` file's fields.
        struct JobFile: Decodable {
            var jobId: String?
            var runId: Int64?
            var repository: String?
            var workflow: String?
            var jobName: String?
        }
        var jobFile = JobFile()
        if let job {
            guard let data = FileManager.default.contents(atPath: job), let decoded = try? JSONDecoder().decode(JobFile.self, from: data) else {
                throw ValidationError("--job: cannot read \(job) as a JSON job")
            }
            jobFile = decoded
        }
        let raw = AGCGatewayView.podTemplate(object, group: group)
        let context = WorkerPodContext(gateway: defaulted.name, namespace: defaulted.namespace, gatewayUID: nil, group: settings,
                                       template: raw, workerImage: workerImage, httpsProxy: "http://\(defaulted.name)-proxy.\(defaulted.namespace).svc:3128",
                                       httpProxy: "http://\(defaulted.name)-proxy.\(defaulted.namespace).svc:3128",
                                       noProxy: "kubernetes.default.svc,.svc,.cluster.local")
        let acquired = AcquiredJob(jobID: jobFile.jobId ?? "00000000-0000-0000-0000-000000000000", runID: jobFile.runId,
                                   repository: jobFile.repository, workflow: jobFile.workflow, jobName: jobFile.jobName,
                                   jitConfig: "<jit config>", acquisition: settings.acquisition, runnerName: nil)
        guard let tier = Admission.tier(active: 0, tiers: settings.tiers, maxWorkers: settings.maxWorkers, templateClass: settings.podPriorityClassName) else {
            throw ValidationError("group \(group) admits no pod")
        }
        let pod = WorkerPod.pod(context, job: acquired, tier: tier.index, priorityClass: tier.priorityClass, acquiredAt: "1970-01-01T00:00:00Z")
        let secret = try KubeClient.json(WorkerPod.secret(context, job: acquired))
        for object in [secret, pod] {
            let data = try KubeClient.encode(object)
            guard let plain = try JSONSerialization.jsonObject(with: Data(data)) as? [String: Any] else { continue }
            print("---")
            print(try Yams.dump(object: plain, sortKeys: true), terminator: "")
        }
    }
}
