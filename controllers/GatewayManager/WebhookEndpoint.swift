import EgressLoop
import EgressPosix
import Foundation
import GatewayOps
import EgressProxyCore
import KubeKit
import Logging

/// `POST /webhook` on the GMC (`--webhook-addr`): feeds each delivery to `Webhook.decide`
/// with the secrets of `--webhook-secrets DIR` and the gateways in the controller's cache,
/// answers, counts the outcome, logs one line per routed job and, with a waker, wakes the
/// routed gateway's AGC (`AGCWaker`, after the answer is decided and without waiting for it).
///
/// Confined to its loop: the secrets and the replay guard are touched only there (deliveries
/// and secret reloads both run on it). The gateway cache is read through its lister, which is
/// safe from any thread. A replica whose cache has not synced (a standby under leader
/// election) answers 503, so no delivery is taken for "unrouted" by a replica that cannot see.
public final class WebhookEndpoint {
    /// One file per GitHub host, named after it (`github.com`, `ghes.example.com`): a mounted Secret.
    private let directory: String
    private let loop: EventLoop
    private let gateways: Lister<UntypedObject>
    private let metrics: ControllerMetrics
    private let logger: Logger
    private let waker: AGCWaker?
    private var secrets: [String: [UInt8]] = [:]
    private var replays = Webhook.ReplayGuard()
    private var watcher: FileWatcher?
    /// The router's view of the gateway cache, rebuilt only when the cache changed (its
    /// generation moved): building it reads every gateway's spec (URL parsing included),
    /// which per delivery cost more than the delivery itself.
    private var targets: [Webhook.Target] = []
    private var targetsGeneration: UInt64?

    /// Call on `loop`'s thread (or before it runs). Fails when the directory holds no secret.
    public init(directory: String, loop: EventLoop, gateways: Lister<UntypedObject>, metrics: ControllerMetrics, waker: AGCWaker? = nil,
                logger: Logger) throws {
        self.directory = directory
        self.waker = waker
        self.loop = loop
        self.gateways = gateways
        self.metrics = metrics
        self.logger = logger
        secrets = try Self.readSecrets(directory)
        guard !secrets.isEmpty else { throw WebhookSetupError("--webhook-secrets \(directory): no secret file (one per GitHub host, named after it)") }
        // Re-read on change: a Secret's mount swaps a symlink in the directory.
        watcher = try FileWatcher(path: directory + "/.", loop: loop) { [unowned self] in reload() }
    }

    /// One delivery: answered on the loop, always (a bad delivery is a 4xx, never a crash).
    public func handle(_ post: AdminServer.Post, respond: (AdminResponse) -> Void) {
        guard post.path == "/webhook" else { return respond(AdminResponse(status: 404, body: "not found\n")) }
        guard gateways.hasSynced else { return respond(AdminResponse(status: 503, body: "not ready (standby or cache not synced)\n")) }
        let delivery = Webhook.Delivery(
            enterpriseHost: post.headers["x-github-enterprise-host"], event: post.headers["x-github-event"],
            deliveryID: post.headers["x-github-delivery"], signature: post.headers["x-hub-signature-256"], body: post.body)
        let generation = gateways.generation
        if generation != targetsGeneration {
            targets = Self.targets(gateways.unordered)
            targetsGeneration = generation
        }
        let outcome = Webhook.decide(delivery, secrets: secrets, replays: &replays, now: loop.now(), targets: targets)
        metrics.countWebhook(outcome.label)
        if case .routed(let route) = outcome {
            logger.info("webhook routed", metadata: [
                "namespace": .string(route.namespace), "gateway": .string(route.gateway), "runner_group": .string(route.runnerGroup),
                "workflow_job_id": .stringConvertible(route.jobID), "run_id": .string(route.runID.map(String.init) ?? ""),
                "queued_at": .string(route.queuedAt ?? ""), "delivery": .string(delivery.deliveryID ?? ""),
            ])
            waker?.wake(route)
        } else if outcome.status >= 400 {
            logger.warning("webhook refused", metadata: [
                "outcome": .string(outcome.label), "status": .stringConvertible(outcome.status), "host": .string(delivery.host),
            ])
        }
        respond(AdminResponse(status: outcome.status, body: outcome.label + "\n"))
    }

    private func reload() {
        do {
            let fresh = try Self.readSecrets(directory)
            if fresh.isEmpty { throw WebhookSetupError("no secret file") }
            secrets = fresh
            logger.info("webhook secrets reloaded", metadata: ["hosts": .string(fresh.keys.sorted().joined(separator: ","))])
        } catch {
            // Mid-swap the directory may look empty; the running secrets stay until a good read.
            logger.warning("webhook secrets not reloaded, keeping the running ones", metadata: ["error": .string("\(error)")])
        }
    }

    /// Regular files named like a host (lowercase DNS names), each holding one secret; dot
    /// files (a Secret mount's `..data` links) and anything else are skipped.
    static func readSecrets(_ directory: String) throws -> [String: [UInt8]] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        var secrets: [String: [UInt8]] = [:]
        for name in names where !name.hasPrefix(".") && isHostName(name) {
            guard var bytes = Posix.readSmallFile(directory + "/" + name, limit: 4096) else { continue }
            while let last = bytes.last, last == 0x0a || last == 0x0d || last == 0x20 { bytes.removeLast() }
            if !bytes.isEmpty { secrets[name] = bytes }
        }
        return secrets
    }

    /// A host name as the proxy's own strict authority parser reads it, already in its
    /// canonical (lowercase) spelling and with at least two labels.
    static func isHostName(_ name: String) -> Bool {
        guard name.contains("."), case .success(let authority) = Authority.parse(Substring(name), defaultPort: 443),
            case .name(let parsed) = authority.host
        else { return false }
        return parsed == name
    }

    /// The router's view of each cached gateway: the host and organisation of its `gitHubURL`,
    /// and each runner group's labels (its name and `runnerLabels`). Gateways whose spec does
    /// not read are left out (the reconciler gives them a condition).
    static func targets(_ objects: [UntypedObject]) -> [Webhook.Target] {
        objects.compactMap { object in
            let json = object.json
            guard let metadata = json["metadata"] as? JSONObject, let spec = json["spec"] as? JSONObject,
                let namespace = metadata["namespace"] as? String, let name = metadata["name"] as? String,
                let url = (spec["gitHubURL"] as? String).flatMap(URLComponents.init(string:)), let host = url.host
            else { return nil }
            let organization = url.path.split(separator: "/").first.map(String.init) ?? ""
            let groups = ((spec["runnerGroups"] as? [any Sendable]) ?? []).compactMap { $0 as? JSONObject }.compactMap { group
                -> (name: String, labels: Set<String>)? in
                guard let groupName = group["name"] as? String else { return nil }
                let labels = ((group["runnerLabels"] as? [any Sendable]) ?? []).compactMap { $0 as? String }
                return (groupName, Set([groupName] + labels))
            }
            return Webhook.Target(namespace: namespace, gateway: name, host: host, organization: organization, groups: groups)
        }
    }
}

/// A `--webhook-secrets` directory that cannot serve.
public struct WebhookSetupError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
