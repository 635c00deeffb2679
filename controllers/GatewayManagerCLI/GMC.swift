import ArgumentParser
import Dispatch
import Foundation
import EgressLoop
import EgressPosix
import EgressProxyCore
import GatewayManager
import GatewayOps
import KubeKit
import Logging
import OutboundPool
import Yams

/// The entry, through `ProcessLifecycle.runMain` (why not an async main: see there).
@main
enum GMCMain {
    static func main() { ProcessLifecycle.runMain { await GMC.main(nil) } }
}

/// `gmc`: the Gateway Manager Controller (`gmc run`), and `gmc render` for reviews and tests.
struct GMC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gmc", abstract: "Gateway Manager Controller for ActionsGateway resources.",
        subcommands: [Run.self, Render.self], defaultSubcommand: Run.self)
}

/// Runs the controller: leader election on a Lease, informers, reconcile workers, and the
/// admin endpoint (/healthz, /readyz, /metrics).
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the controller against a cluster.")

    @Option(help: "API server URL; default: in-cluster (KUBERNETES_SERVICE_HOST/PORT, service-account token and CA).")
    var apiServer: String?
    @Option(help: "A kubeconfig file (default: $KUBECONFIG's first file when not in a cluster, else ~/.kube/config).")
    var kubeconfig: String?
    @Option(help: "The kubeconfig context to use (default: its current-context).") var context: String?
    @Option(help: "Comma-separated PriorityClasses tenants may use.") var allowedPriorityClasses = ""
    @Option(help: "Comma-separated host names and *.suffix patterns a tenant's extraAllowedHosts may name (empty: none).")
    var allowedExtraHosts = ""
    @Option(help: "CIDRs where the AGC reaches the Kubernetes API (NetworkPolicy).") var apiServerCidrs = ""
    @Option(help: monitoringHelp) var monitoringNamespaceLabels = defaultMonitoringLabels
    @Option(help: "egress-proxy image.") var proxyImage = GatewayImages().proxy
    @Option(help: "AGC image.") var agcImage = GatewayImages().agc
    @Option(help: "Default runner image of worker pods (must carry `agc worker`).") var workerImage = GatewayImages().worker
    @Option(help: nodePoolsHelp) var nodePools: String?
    @Option(help: awsAccountsHelp) var allowedAwsAccounts = ""
    @Option(help: "Serve POST /webhook for GitHub webhook deliveries here, HOST:PORT (needs --webhook-secrets).") var webhookAddr: String?
    @Option(help: "Directory of webhook secrets, one file per GitHub host named after it (github.com, ghes.example.com).")
    var webhookSecrets: String?
    @Option(help: "Ed25519 private key (PEM) the GMC signs AGC wakes with; every AGC is given its public half. Without it, routed jobs wake no AGC.")
    var wakeKey: String?
    @Option(help: "Where a gateway's AGC takes wakes; {namespace} and {gateway} are substituted.")
    var agcUrlTemplate = AGCWaker.defaultURLTemplate
    @Flag(help: "Elect a leader on a Lease (run several replicas).") var leaderElect = false
    @Option(help: "Namespace of the leader Lease.") var leaseNamespace = "actions-gateway-system"
    @Option(help: "This replica's pod (default: $POD_NAME), labelled webhook-leader=true while it leads, for a webhook Service.")
    var podName: String?
    @Option(help: "This replica's pod's namespace (default: $POD_NAMESPACE).") var podNamespace: String?
    @Option(help: "Lease duration in seconds.") var leaseDuration = 15
    @Option(help: "This replica's identity (default: hostname and pid).") var identity: String?
    @Option(help: "Admin endpoint address, IP:PORT.") var metricsAddr = "0.0.0.0:9090"
    @Option(help: "Reconcile workers.") var workers = 4
    @Option(help: "Seconds between resyncs of every gateway (0 = none).") var resyncSeconds = 600
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel = "info"

    func run() async throws {
        let logger: Logger
        do {
            logger = try ProcessLifecycle.begin(label: "gmc", logLevel: logLevel)
        } catch {
            throw ValidationError("--log-level: \(error)")
        }
        guard (0...86_400).contains(resyncSeconds) else { throw ValidationError("--resync-seconds must be 0 to 86400") }
        guard let adminAddress = SocketAddress(parsing: metricsAddr) else { throw ValidationError("--metrics-addr expects IP:PORT") }
        let connection: KubeConnection
        do {
            let resolved = try KubeConnection.resolve(apiServer: apiServer, kubeconfig: kubeconfig, context: context)
            if let warning = resolved.warning { logger.warning("\(warning)") }
            connection = resolved.connection
        } catch {
            throw ValidationError("\(error)")
        }
        var poolConfiguration = PoolConfiguration()
        connection.apply(to: &poolConfiguration)
        // Ten watches stay open at once; over HTTP/1.1 each holds a connection, and requests
        // must never queue behind them (a real API server speaks HTTP/2 and multiplexes).
        poolConfiguration.maxConnectionsPerHost = 64
        let pool = try OutboundPool(configuration: poolConfiguration)
        let client = KubeClient(connection: connection, pool: pool)
        var signingKey: WakeSigningKey?
        if let wakeKey {
            do {
                signingKey = try WakeSigningKey(pemFile: wakeKey)
            } catch {
                throw ValidationError("--wake-key: \(error)")
            }
        }
        if let problem = AGCWaker.validate(template: agcUrlTemplate) { throw ValidationError("--agc-url-template: \(problem)") }
        let gmcNamespace = podNamespace ?? ProcessInfo.processInfo.environment["POD_NAMESPACE"] ?? leaseNamespace
        let images = GatewayImages(proxy: proxyImage, agc: agcImage, worker: workerImage, apiServerCIDRs: apiServerCidrs.split(separator: ",").map(String.init),
                                   monitoringNamespaceLabels: try labels(monitoringNamespaceLabels, flag: "--monitoring-namespace-labels"),
                                   wakePublicKey: signingKey.flatMap { WakeVerifyKey(raw: $0.publicKey) }, gmcNamespace: gmcNamespace,
                                   nodePools: try loadNodePools(nodePools))
        let priorityClasses = Set(allowedPriorityClasses.split(separator: ",").map(String.init))
        let extraHosts = try extraHostPatterns(allowedExtraHosts)
        let awsAccounts = try accounts(allowedAwsAccounts)
        let metrics = ControllerMetrics()
        let controller = GatewayController(client: client, metrics: metrics, workers: workers,
                                           resync: resyncSeconds > 0 ? .seconds(resyncSeconds) : nil, logger: logger) { reader in
            GatewayReconciler(client: client, reader: reader, allowedPriorityClasses: priorityClasses,
                              allowedExtraHosts: extraHosts, images: images, allowedAWSAccounts: awsAccounts)
        }

        let adminLoop = try EventLoop(name: "gmc-admin")
        let admin = try AdminServer(loop: adminLoop, address: adminAddress) { method, path, respond in
            switch path {
            case "/healthz": respond(AdminResponse(status: 200, body: "ok\n"))
            case "/readyz": respond(AdminResponse(status: 200, body: metrics.isLeader ? "leader\n" : "standby\n"))
            case "/metrics":
                respond(AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render()))
            default: respond(AdminResponse(status: 404, body: "not found\n"))
            }
        }
        // Wakes go straight to the AGCs' Services (plain HTTP inside the cluster, each signed).
        let waker = try signingKey.map {
            AGCWaker(key: $0, pool: try OutboundPool(configuration: PoolConfiguration()), urlTemplate: agcUrlTemplate,
                     clock: SystemControllerClock(), metrics: metrics, logger: logger)
        }
        let webhook = try startWebhook(gateways: controller.gatewayLister, metrics: metrics, waker: waker, logger: logger)
        try adminLoop.start()
        let me = identity ?? "\(Posix.hostName())-\(Posix.processID())"
        var started: Logger.Metadata = ["identity": .string(me), "admin": .string(admin.boundAddress.description)]
        if let webhook { started["webhook"] = .string(webhook.boundAddress.description) }
        logger.info("gmc started", metadata: started)
        if waker == nil, webhook != nil { logger.warning("no --wake-key: routed jobs are logged and counted, but wake no AGC") }
        // A restarted container (a leader that lost its Lease exits) finds its pod still
        // labelled: clear it before campaigning, so the webhook Service never routes to a standby.
        let webhookEnabled = webhook != nil
        await markWebhookLeader(false, client: client, logger: logger, enabled: webhookEnabled)
        let work = Task {
            if leaderElect {
                let elector = LeaderElector(client: client, namespace: leaseNamespace, name: "gmc-leader", identity: me,
                                            duration: .seconds(Int64(leaseDuration)))
                await elector.run {
                    metrics.setLeader(true)
                    await markWebhookLeader(true, client: client, logger: logger, enabled: webhookEnabled)
                    await controller.run()
                }
                metrics.setLeader(false)
                if !Task.isCancelled {
                    // Lost the Lease while leading: exit so Kubernetes restarts this replica as
                    // a fresh candidate, rather than idling without work (controller-runtime does the same).
                    logger.error("lost leadership, exiting", metadata: ["identity": .string(me)])
                    Foundation.exit(1)
                }
            } else {
                metrics.setLeader(true)
                await markWebhookLeader(true, client: client, logger: logger, enabled: webhookEnabled)
                await controller.run()
            }
        }
        // SIGTERM or SIGINT: stop working (the Lease then expires for the next replica).
        await ProcessLifecycle.waitForStop()
        work.cancel()
        logger.info("gmc stopped", metadata: ["identity": .string(me)])
        withExtendedLifetime((admin, webhook)) {}
    }

    /// Sets or clears `actions-gateway.github.com/webhook-leader=true` on this replica's pod:
    /// only the leader's gateway cache fills, so a Service selecting the label sends GitHub's
    /// deliveries to the one replica that can route them. Best effort (logged): the standby's
    /// 503 is the fallback.
    private func markWebhookLeader(_ leading: Bool, client: KubeClient, logger: Logger, enabled: Bool) async {
        let environment = ProcessInfo.processInfo.environment
        guard enabled, let pod = podName ?? environment["POD_NAME"], let namespace = podNamespace ?? environment["POD_NAMESPACE"]
        else { return }
        let value: any Sendable = leading ? "true" : NSNullSentinel()
        do {
            _ = try await client.mergePatch(KubeResource.pods.path(namespace: namespace, name: pod),
                                            ["metadata": ["labels": [Self.webhookLeaderLabel: value] as JSONObject] as JSONObject])
            logger.info(leading ? "webhook leader label set" : "webhook leader label cleared", metadata: ["pod": .string(pod)])
        } catch {
            logger.warning("cannot label this pod for the webhook Service", metadata: ["pod": .string(pod), "error": .string("\(error)")])
        }
    }

    static let webhookLeaderLabel = "actions-gateway.github.com/webhook-leader"

    /// The webhook endpoint on a loop of its own, so a flood of deliveries never delays the
    /// health probes. Bodies: 25 MiB each (GitHub's cap), 64 MiB being read at once.
    private func startWebhook(gateways: Lister<UntypedObject>, metrics: ControllerMetrics, waker: AGCWaker?, logger: Logger) throws
        -> AdminServer?
    {
        switch (webhookAddr, webhookSecrets) {
        case (nil, nil): return nil
        case (nil, _), (_, nil): throw ValidationError("--webhook-addr and --webhook-secrets go together")
        case (let address?, let directory?):
            guard let bound = SocketAddress(parsing: address) else { throw ValidationError("--webhook-addr expects IP:PORT") }
            let loop = try EventLoop(name: "gmc-webhook")
            let endpoint: WebhookEndpoint
            do {
                endpoint = try WebhookEndpoint(directory: directory, loop: loop, gateways: gateways, metrics: metrics, waker: waker, logger: logger)
            } catch {
                throw ValidationError("--webhook-secrets: \(error)")
            }
            let server = try AdminServer(
                loop: loop, address: bound,
                router: { _, path, respond in
                    respond(path == "/healthz" ? AdminResponse(status: 200, body: "ok\n") : AdminResponse(status: 404, body: "not found\n"))
                },
                post: { post, respond in endpoint.handle(post, respond: respond) },
                bodyLimits: .init(maxBody: Webhook.maxBodyBytes, inFlightBudget: 64 << 20))
            try loop.start()
            return server
        }
    }

}

let awsAccountsHelp: ArgumentHelp = "Comma-separated 12-digit AWS accounts a gateway's spec.oidc.aws may name (empty: none)."

/// `--allowed-aws-accounts`, or a usage error naming the bad entries.
func accounts(_ flag: String) throws -> Set<String> {
    let entries = flag.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let bad = entries.filter { $0.count != 12 || !$0.allSatisfy { $0.isASCII && $0.isNumber } }
    if !bad.isEmpty { throw ValidationError("--allowed-aws-accounts: not 12-digit account ids: \(bad.joined(separator: ", "))") }
    return Set(entries)
}

let nodePoolsHelp: ArgumentHelp = "YAML list of the platform's node pools (name, nodeSelector, tolerations, namespaces) runner groups may name; with it, templates may not place workers themselves."

/// `--node-pools`, or a usage error naming each problem.
func loadNodePools(_ path: String?) throws -> [NodePool]? {
    guard let path else { return nil }
    switch NodePools.load(path: path) {
    case .success(let pools): return pools
    case .failure(let rejection): throw ValidationError(rejection.problems.map(\.description).joined(separator: "; "))
    }
}

/// `--allowed-extra-hosts`, or a usage error naming the bad entries.
let monitoringHelp: ArgumentHelp = "Labels (k=v,k=v) of the namespaces whose pods may scrape the proxies' and AGCs' admin ports."
let defaultMonitoringLabels = "\(DesiredState.monitoringLabel)=true"

/// A label flag, or a usage error naming the bad entries.
func labels(_ flag: String, flag name: String) throws -> [String: String] {
    switch GatewayEnvironment.labels(flag, name: name) {
    case .success(let labels) where !labels.isEmpty || name != "--monitoring-namespace-labels": return labels
    case .success: throw ValidationError("--monitoring-namespace-labels needs at least one label (an empty selector admits every namespace)")
    case .failure(let rejection): throw ValidationError(rejection.problems.map(\.description).joined(separator: "; "))
    }
}

func extraHostPatterns(_ flag: String) throws -> [HostPattern] {
    switch GatewayEnvironment.extraHostPatterns(flag) {
    case .success(let patterns): return patterns
    case .failure(let rejection): throw ValidationError(rejection.problems.map(\.description).joined(separator: "; "))
    }
}

/// Prints the objects the GMC would create for a CR, without a cluster: for reviews, GitOps
/// and tests, from the same desired-state function the controller uses.
struct Render: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the objects the GMC would create (YAML stream), or the problems (exit 1).")

    @Option(help: "File holding exactly one ActionsGateway (other kinds of documents in it are ignored); - reads stdin.")
    var file: String
    @Option(help: "Comma-separated PriorityClasses tenants may use.") var allowedPriorityClasses = ""
    @Option(help: "Comma-separated host names and *.suffix patterns a tenant's extraAllowedHosts may name (empty: none).")
    var allowedExtraHosts = ""
    @Option(help: "Labels of the gateway's namespace, k=v,k=v (e.g. the privileged-profile label).") var namespaceLabels = ""
    @Option(help: "CIDRs where the AGC reaches the Kubernetes API (NetworkPolicy).") var apiServerCidrs = ""
    @Option(help: monitoringHelp) var monitoringNamespaceLabels = defaultMonitoringLabels
    @Option(help: "egress-proxy image.") var proxyImage = GatewayImages().proxy
    @Option(help: "AGC image.") var agcImage = GatewayImages().agc
    @Option(help: "Default runner image of worker pods (must carry `agc worker`).") var workerImage = GatewayImages().worker
    @Option(help: "The GMC's wake key's public half (base64 of the raw 32 bytes, as the AGC takes it): renders wakes on.")
    var wakePublicKey: String?
    @Option(help: "The namespace the GMC runs in (where wakes come from).") var gmcNamespace = "actions-gateway-system"
    @Option(help: nodePoolsHelp) var nodePools: String?
    @Option(help: awsAccountsHelp) var allowedAwsAccounts = ""

    func run() throws {
        let gateway: ActionsGateway
        do {
            gateway = try GatewayDocument.read(path: file).gateway
        } catch {
            throw ValidationError(error.description)
        }
        let pools = try loadNodePools(nodePools)
        var environment = GatewayEnvironment(
            allowedPriorityClasses: Set(allowedPriorityClasses.split(separator: ",").map(String.init)),
            allowedExtraHosts: try extraHostPatterns(allowedExtraHosts),
            namespaceLabels: try labels(namespaceLabels, flag: "--namespace-labels"), nodePools: pools)
        environment.allowedAWSAccounts = try accounts(allowedAwsAccounts)
        let monitoring = try labels(monitoringNamespaceLabels, flag: "--monitoring-namespace-labels")
        var wakeKey: WakeVerifyKey?
        if let wakePublicKey {
            guard let key = WakeVerifyKey(base64: wakePublicKey) else { throw ValidationError("--wake-public-key: not base64 of a 32-byte Ed25519 key") }
            wakeKey = key
        }
        switch gateway.validated(in: environment) {
        case .failure(let rejection):
            // Problems on stderr, nothing on stdout: `gmc render | kubectl apply -f -` applies nothing.
            Posix.writeStderr(Array(rejection.problems.map { "error: \($0)\n" }.joined().utf8))
            throw ExitCode(1)
        case .success(let defaulted):
            let images = GatewayImages(
                proxy: proxyImage, agc: agcImage, worker: workerImage,
                apiServerCIDRs: apiServerCidrs.split(separator: ",").map(String.init), monitoringNamespaceLabels: monitoring,
                wakePublicKey: wakeKey, gmcNamespace: gmcNamespace, nodePools: pools)
            let uid = gateway.metadata.uid
            if uid == nil {
                Posix.writeStderr(Array("note: the gateway has no metadata.uid, so its children carry no ownerReferences\n".utf8))
            }
            let encoder = YAMLEncoder()
            encoder.options.sortKeys = true
            for object in DesiredState.objects(for: defaulted, uid: uid, images: images) {
                print("---")
                print(try encoder.encode(object), terminator: "")
            }
        }
    }
}
