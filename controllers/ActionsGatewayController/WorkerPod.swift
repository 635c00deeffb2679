import Foundation
import GatewayManager
import KubeKit

/// A job GitHub handed to a source, in the terms the lifecycle needs and no protocol's: the
/// seam between acquisition (scale set today, classic sessions later) and the job lifecycle.
public struct AcquiredJob: Sendable, Equatable {
    /// GitHub's job UUID (both protocols carry it): the pod's `job-id` label.
    public var jobID: String
    public var runID: Int64?
    public var repository: String?
    public var workflow: String?
    public var jobName: String?
    /// The runner's JIT config (base64), the only credential a worker gets.
    public var jitConfig: String
    /// The classic job message, byte for byte; nil for scale-set jobs.
    public var payload: [UInt8]?
    /// `scaleSet` or `classic`, as in the CR.
    public var acquisition: String
    /// The runner name GitHub registered for this job (scale set: `<set>-<jobId>`).
    public var runnerName: String?
    /// The queue message that assigned it (scale set), kept on the pod so a replay of that
    /// message after the pod is gone can be told from a later assignment of the same job.
    public var messageID: Int64?
    /// When GitHub queued the job (epoch seconds, GitHub's clock: the job message's, else the
    /// webhook's; nil when neither said), the start of `agc_job_queue_seconds`.
    public var queuedAt: Int64?
    /// When the source received the job (the AGC's clock): the queue time's start when GitHub
    /// gave none.
    public var receivedAt: Int64?
    /// classic: what renewing the job's lock needs besides the payload (request id, run service
    /// URL, plan id; JSON), kept in the job's Secret so an AGC that restarts renews on.
    public var renewal: [UInt8]?

    public init(jobID: String, runID: Int64?, repository: String?, workflow: String?, jobName: String?, jitConfig: String,
                payload: [UInt8]? = nil, acquisition: String, runnerName: String?, messageID: Int64? = nil,
                queuedAt: Int64? = nil, receivedAt: Int64? = nil) {
        self.jobID = jobID
        self.runID = runID
        self.repository = repository
        self.workflow = workflow
        self.jobName = jobName
        self.jitConfig = jitConfig
        self.payload = payload
        self.acquisition = acquisition
        self.runnerName = runnerName
        self.messageID = messageID
        self.queuedAt = queuedAt
        self.receivedAt = receivedAt
    }
}

/// Labels and annotations of worker pods (spec/agc.md section 4): names fixed by the contract.
public enum WorkerLabels {
    public static let prefix = "actions-gateway.github.com/"
    public static let gateway = prefix + "gateway"
    public static let group = prefix + "runner-group"
    public static let component = prefix + "component"
    public static let jobID = prefix + "job-id"
    public static let runID = prefix + "run-id"
    public static let repository = prefix + "repository"
    public static let workflow = prefix + "workflow"
    public static let jobName = prefix + "job-name"
    public static let tier = prefix + "tier"
    public static let acquisition = prefix + "acquisition"
    public static let acquiredAt = prefix + "acquired-at"
    /// When GitHub queued the job (RFC 3339, GitHub's clock), where known: beyond the contract's list, our own.
    public static let queuedAt = prefix + "queued-at"
    public static let deletionReason = prefix + "deletion-reason"
    public static let runnerName = prefix + "runner-name"
    public static let jobCompletedAt = prefix + "job-completed-at"
    /// The assigning queue message's id (scale set): beyond the contract's list, our own.
    public static let messageID = prefix + "message-id"
    /// `<cause> <RFC 3339 time>` once recovery took the pod's disruption in (at most once per pod).
    public static let recovery = prefix + "recovery"
}

/// What the pod builder needs besides the job: the gateway, the group and the process's own setup.
public struct WorkerPodContext: Sendable {
    public var gateway: String
    public var namespace: String
    /// The ActionsGateway's uid (the ownerReference); nil in `agc render-pod` (no cluster).
    public var gatewayUID: String?
    public var group: DefaultedGateway.Group
    /// The group's `podTemplate` as the tenant wrote it (every field is kept unless overwritten).
    public var template: JSONObject
    public var workerImage: String
    /// Proxy settings the workers get (the AGC's own, which the GMC set).
    public var httpsProxy: String?
    public var httpProxy: String?
    public var noProxy: String?
    public var secretsDir = "/run/secrets/actions-gateway/"
    /// The group's node pool, resolved from the AGC's `--node-pools` file.
    public var nodePool: NodePool?
    /// The pool the group names but the file lacks: no pod is made until it appears.
    public var missingNodePool: String?

    public init(gateway: String, namespace: String, gatewayUID: String?, group: DefaultedGateway.Group, template: JSONObject,
                workerImage: String, httpsProxy: String?, httpProxy: String?, noProxy: String?) {
        self.gateway = gateway
        self.namespace = namespace
        self.gatewayUID = gatewayUID
        self.group = group
        self.template = template
        self.workerImage = workerImage
        self.httpsProxy = httpsProxy
        self.httpProxy = httpProxy
        self.noProxy = noProxy
    }
}

/// Builds a job's worker pod and Secret: deterministic (same job, same name and content, so a
/// retried create is idempotent), the tenant's template kept except what the AGC always owns.
public enum WorkerPod {
    /// `<gateway>-<group>-<hash>`: a DNS label of at most 63 characters; the hash (FNV-1a of the
    /// job id, 40 bits) keeps names of one group apart, the prefix makes them readable.
    public static func name(gateway: String, group: String, jobID: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in jobID.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let suffix = String(String(hash, radix: 16).suffix(10)).leftPadded(to: 10)
        var prefix = "\(gateway)-\(group)"
        if prefix.count > 52 { prefix = String(prefix.prefix(52)) }
        while prefix.hasSuffix("-") { prefix.removeLast() }
        return "\(prefix)-\(suffix)"
    }

    public static func labels(_ context: WorkerPodContext, jobID: String) -> [String: String] {
        [
            WorkerLabels.gateway: context.gateway, WorkerLabels.group: context.group.name, WorkerLabels.component: "worker",
            WorkerLabels.jobID: jobID, "app.kubernetes.io/name": "actions-gateway-worker", "app.kubernetes.io/managed-by": "agc",
        ]
    }

    /// The pod's annotations that carry the job's identity (stamped again at JobStarted when
    /// GitHub ran a different job on this runner).
    public static func identity(_ job: AcquiredJob) -> [String: String] {
        var out: [String: String] = [:]
        if let run = job.runID { out[WorkerLabels.runID] = String(run) }
        if let repository = job.repository { out[WorkerLabels.repository] = repository }
        if let workflow = job.workflow { out[WorkerLabels.workflow] = workflow }
        if let name = job.jobName { out[WorkerLabels.jobName] = name }
        if let runner = job.runnerName { out[WorkerLabels.runnerName] = runner }
        if let message = job.messageID { out[WorkerLabels.messageID] = String(message) }
        return out
    }

    /// The job's Secret: `jitconfig` (and `payload` for classic), owned by the gateway until
    /// the pod exists.
    public static func secret(_ context: WorkerPodContext, job: AcquiredJob) -> Secret {
        var data: [String: [UInt8]] = ["jitconfig": Array(job.jitConfig.utf8)]
        if let payload = job.payload { data["payload"] = payload }
        if let renewal = job.renewal { data["renewal"] = renewal }
        var meta = ObjectMeta(name: name(gateway: context.gateway, group: context.group.name, jobID: job.jobID), namespace: context.namespace,
                              labels: labels(context, jobID: job.jobID))
        if let uid = context.gatewayUID {
            meta.ownerReferences = [OwnerReference(apiVersion: "actions-gateway.github.com/v1alpha1", kind: "ActionsGateway",
                                                   name: context.gateway, uid: uid, controller: false)]
        }
        return Secret(metadata: meta, data: data)
    }

    /// The worker pod as JSON (the template's fields survive untyped).
    /// - Parameter excludedNodes: nodes already running `maxPodsPerNode` of the gateway's
    ///   workers, kept out by a required node affinity added to every term of the template's own.
    public static func pod(_ context: WorkerPodContext, job: AcquiredJob, tier: Int, priorityClass: String?, acquiredAt: String,
                           excludedNodes: [String] = []) -> JSONObject
    {
        let podName = name(gateway: context.gateway, group: context.group.name, jobID: job.jobID)
        var templateMeta = context.template["metadata"] as? JSONObject ?? [:]
        var labels = (templateMeta["labels"] as? JSONObject) ?? [:]
        for (key, value) in Self.labels(context, jobID: job.jobID) { labels[key] = value }
        var annotations = (templateMeta["annotations"] as? JSONObject) ?? [:]
        for (key, value) in identity(job) { annotations[key] = value }
        annotations[WorkerLabels.tier] = String(tier)
        annotations[WorkerLabels.acquisition] = job.acquisition
        annotations[WorkerLabels.acquiredAt] = acquiredAt
        if let queued = job.queuedAt {
            annotations[WorkerLabels.queuedAt] = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(queued)))
        }
        templateMeta = ["name": podName, "namespace": context.namespace, "labels": labels, "annotations": annotations]
        if let uid = context.gatewayUID {
            templateMeta["ownerReferences"] = [[
                "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "name": context.gateway, "uid": uid,
                "controller": false, "blockOwnerDeletion": true,
            ] as JSONObject] as [any Sendable]
        }

        var spec = context.template["spec"] as? JSONObject ?? [:]
        spec["restartPolicy"] = "Never"
        spec["serviceAccountName"] = "\(context.gateway)-worker"
        spec["serviceAccount"] = nil
        spec["automountServiceAccountToken"] = false
        spec["hostNetwork"] = false
        spec["hostPID"] = false
        spec["hostIPC"] = false
        spec["nodeName"] = nil
        spec["activeDeadlineSeconds"] = Int64(context.group.maxWorkerLifetimeSeconds)
        spec["priorityClassName"] = priorityClass
        spec["priority"] = nil  // admission derives it from the class; a stale value would be refused

        var containers = (spec["containers"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        var runnerIndex = containers.firstIndex { $0["name"] as? String == "runner" }
        if runnerIndex == nil {
            containers.insert(["name": "runner"], at: 0)
            runnerIndex = 0
        }
        if let index = runnerIndex {
            var runner = containers[index]
            if (runner["image"] as? String ?? "").isEmpty { runner["image"] = context.workerImage }
            runner["command"] = ["agc", "worker"] as [any Sendable]
            runner["args"] = nil
            let owned: Set<String> = ["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "AGC_WORKER_MODE", "AGC_SECRETS_DIR"]
            var env = ((runner["env"] as? [any Sendable]) ?? []).compactMap { $0 as? JSONObject }
                .filter { !owned.contains($0["name"] as? String ?? "") }
            func set(_ name: String, _ value: String?) { if let value { env.append(["name": name, "value": value]) } }
            set("HTTPS_PROXY", context.httpsProxy)
            set("HTTP_PROXY", context.httpProxy)
            set("NO_PROXY", context.noProxy)
            set("AGC_WORKER_MODE", job.acquisition == "classic" ? "classic" : "scaleset")
            runner["env"] = env as [any Sendable]
            var resources = runner["resources"] as? JSONObject ?? [:]
            var requests = resources["requests"] as? JSONObject ?? [:]
            let limits = resources["limits"] as? JSONObject ?? [:]
            if requests["cpu"] == nil && limits["cpu"] == nil { requests["cpu"] = "500m" }
            if requests["memory"] == nil && limits["memory"] == nil { requests["memory"] = "1Gi" }
            resources["requests"] = requests
            runner["resources"] = resources
            var mounts = ((runner["volumeMounts"] as? [any Sendable]) ?? []).compactMap { $0 as? JSONObject }
                .filter { $0["name"] as? String != "job-secret" }
            mounts.append(["name": "job-secret", "mountPath": context.secretsDir, "readOnly": true])
            runner["volumeMounts"] = mounts as [any Sendable]
            containers[index] = runner
        }
        spec["containers"] = containers as [any Sendable]
        var volumes = ((spec["volumes"] as? [any Sendable]) ?? []).compactMap { $0 as? JSONObject }.filter { $0["name"] as? String != "job-secret" }
        volumes.append(["name": "job-secret", "secret": ["secretName": podName, "defaultMode": Int64(0o400)] as JSONObject])
        spec["volumes"] = volumes as [any Sendable]
        if !excludedNodes.isEmpty { spec["affinity"] = excluding(excludedNodes, from: spec["affinity"] as? JSONObject ?? [:]) }
        if let pool = context.nodePool {
            var labels = templateMeta["labels"] as? JSONObject ?? [:]
            NodePools.place(spec: &spec, labels: &labels, on: pool)
            templateMeta["labels"] = labels
        }
        return ["apiVersion": "v1", "kind": "Pod", "metadata": templateMeta, "spec": spec]
    }

    /// The affinity with `kubernetes.io/hostname NotIn nodes` required: added to each of the
    /// template's required terms (terms are ORed, so each must carry it), or a term of its own.
    static func excluding(_ nodes: [String], from affinity: JSONObject) -> JSONObject {
        var affinity = affinity
        var nodeAffinity = affinity["nodeAffinity"] as? JSONObject ?? [:]
        var required = nodeAffinity["requiredDuringSchedulingIgnoredDuringExecution"] as? JSONObject ?? [:]
        var terms = ((required["nodeSelectorTerms"] as? [any Sendable]) ?? []).compactMap { $0 as? JSONObject }
        if terms.isEmpty { terms = [[:]] }
        let expression: JSONObject = ["key": "kubernetes.io/hostname", "operator": "NotIn", "values": nodes as [any Sendable]]
        terms = terms.map { term in
            var term = term
            term["matchExpressions"] = ((term["matchExpressions"] as? [any Sendable]) ?? []) + [expression]
            return term
        }
        required["nodeSelectorTerms"] = terms as [any Sendable]
        nodeAffinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
        affinity["nodeAffinity"] = nodeAffinity
        return affinity
    }

    /// The containers' resources as the quota sees them, for admission before the pod exists.
    public static func shape(_ context: WorkerPodContext, priorityClass: String?) -> PodShape {
        let sample = AcquiredJob(jobID: "shape", runID: nil, repository: nil, workflow: nil, jobName: nil, jitConfig: "",
                                 acquisition: context.group.acquisition, runnerName: nil)
        let pod = pod(context, job: sample, tier: 0, priorityClass: priorityClass, acquiredAt: "")
        let containers = ((pod["spec"] as? JSONObject)?["containers"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        let resources = containers.map { container -> ResourceRequirements in
            let resources = container["resources"] as? JSONObject
            func strings(_ key: String) -> [String: String]? {
                (resources?[key] as? JSONObject)?.compactMapValues { value in (value as? String) ?? (value as? Int64).map(String.init) }
            }
            return ResourceRequirements(requests: strings("requests"), limits: strings("limits"))
        }
        return PodShape(containers: resources, priorityClass: priorityClass, terminating: true)
    }
}

extension String {
    func leftPadded(to width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}

/// The ActionsGateway as the AGC reads it, shared by `agc run` and `agc render-pod` so the
/// rendered pod is the one the controller would create.
public enum AGCGatewayView {
    /// Decodes and validates a gateway. Priority classes and the privileged profile are the
    /// GMC's to police (it alone holds the cluster's allowlist and the namespace labels), so
    /// here every class the gateway names is allowed: the AGC checks shape and bounds, and
    /// serves only gateways the GMC did not refuse.
    public static func validate(_ gateway: ActionsGateway) -> Result<DefaultedGateway, GatewayRejection> {
        let groups = gateway.spec.runnerGroups ?? []
        let classes = Set(groups.flatMap { group in
            (group.priorityTiers ?? []).compactMap(\.priorityClassName) + [group.podTemplate?.spec?.priorityClassName].compactMap { $0 }
        })
        var environment = GatewayEnvironment(allowedPriorityClasses: classes, namespaceLabels: [GatewayEnvironment.privilegedLabel: "allowed"])
        environment.nodePoolsUnchecked = true
        return gateway.validated(in: environment)
    }

    /// The same, from the object as the API server returned it.
    public static func validate(json: [UInt8]) -> Result<DefaultedGateway, GatewayRejection> {
        ActionsGateway.decode(json: json).flatMap(validate)
    }

    /// A group's `podTemplate` exactly as the tenant wrote it: the typed model keeps only the
    /// fields it polices, and the pod must keep the rest.
    public static func podTemplate(_ object: JSONObject, group: String) -> JSONObject {
        let groups = ((object["spec"] as? JSONObject)?["runnerGroups"] as? [any Sendable])?.compactMap { $0 as? JSONObject } ?? []
        return groups.first { $0["name"] as? String == group }?["podTemplate"] as? JSONObject ?? [:]
    }
}
