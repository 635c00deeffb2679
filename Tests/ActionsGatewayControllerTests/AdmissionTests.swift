@testable import ActionsGatewayController
import KubeKit
import Testing

/// Admission is pure: verdicts from settings, pods and quotas, with no server.
@Suite struct AdmissionTests {
    let tiers: [(priorityClassName: String, threshold: Int)] = [("a", 2), ("b", 5)]

    @Test func tiersAreCumulativeAndTheLastThresholdIsTheCeiling() {
        let classes = (0..<6).map { Admission.tier(active: $0, tiers: tiers, maxWorkers: 5, templateClass: nil)?.priorityClass }
        #expect(classes == ["a", "a", "b", "b", "b", nil])
        #expect(Admission.tier(active: 3, tiers: tiers, maxWorkers: 5, templateClass: nil)?.index == 1)
        #expect(Admission.tier(active: 9, tiers: [], maxWorkers: 10, templateClass: "t")?.priorityClass == "t")
        #expect(Admission.tier(active: 10, tiers: [], maxWorkers: 10, templateClass: "t") == nil)
        #expect(Admission.ceiling(tiers: tiers, maxWorkers: 99) == 5)
    }

    @Test func quantitiesParseAsKubernetesWritesThem() {
        let table: [(String, Int64?)] = [("500m", 500), ("2", 2000), ("0.5", 500), ("1Gi", 1_073_741_824_000), ("1k", 1_000_000),
                                         ("1.5", 1500), ("x", nil), ("", nil), ("1..2", nil), ("99999999999999999999", nil)]
        for (text, expected) in table { #expect(Quantity.milli(text) == expected, "\(text)") }
    }

    func quota(_ hard: [String: String], used: [String: String] = [:], classes: [String]? = nil) -> ResourceQuota {
        var quota = ResourceQuota(metadata: ObjectMeta(name: "q"), spec: .init(hard: hard), status: .init(used: used))
        if let classes {
            quota.spec?.scopeSelector = .init(matchExpressions: [.init(scopeName: "PriorityClass", operator: "In", values: classes)])
        }
        return quota
    }

    func shape(cpu: String = "500m", gpu: String? = nil, priorityClass: String? = nil) -> PodShape {
        PodShape(containers: [ResourceRequirements(requests: ["cpu": cpu, "memory": "1Gi"], limits: gpu.map { ["nvidia.com/gpu": $0] })],
                 priorityClass: priorityClass, terminating: true)
    }

    @Test func headroomIsTheTightestMatchingQuotaCountingUsedAndLivePods() {
        let pods = [shape(), shape()]
        #expect(Admission.headroom(for: shape(), quotas: [quota(["pods": "5"])], pods: pods).fits == 3)
        #expect(Admission.headroom(for: shape(), quotas: [quota(["pods": "5"], used: ["pods": "4"])], pods: pods).fits == 1,
                "status.used wins when larger (pods we do not own)")
        #expect(Admission.headroom(for: shape(), quotas: [quota(["requests.cpu": "2"])], pods: pods).fits == 2)
        let gpu = Admission.headroom(for: shape(gpu: "1"), quotas: [quota(["requests.nvidia.com/gpu": "4"])], pods: [shape(gpu: "1")] + pods)
        #expect(gpu.fits == 3, "an extended resource with only a limit is requested too")
        #expect(gpu.limiting?.detail == "requests.nvidia.com/gpu 1/4")
        #expect(Admission.headroom(for: shape(), quotas: [], pods: pods).fits == Int.max)
    }

    @Test func scopesDecideWhichQuotasCountAPod() {
        let scoped = quota(["pods": "1"], classes: ["gold"])
        #expect(Admission.headroom(for: shape(priorityClass: "gold"), quotas: [scoped], pods: [shape(priorityClass: "gold")]).fits == 0)
        #expect(Admission.headroom(for: shape(priorityClass: "silver"), quotas: [scoped], pods: []).fits == Int.max)
        var notTerminating = quota(["pods": "0"])
        notTerminating.spec?.scopes = ["NotTerminating"]
        #expect(Admission.headroom(for: shape(), quotas: [notTerminating], pods: []).fits == Int.max, "workers have a deadline: Terminating")
        var bestEffort = quota(["pods": "0"])
        bestEffort.spec?.scopes = ["BestEffort"]
        #expect(Admission.headroom(for: shape(), quotas: [bestEffort], pods: []).fits == Int.max)
    }

    @Test func oneAllocatorNeverOverCommitsASharedQuota() {
        let shared = [quota(["pods": "4"])]
        let demands = [
            Admission.Demand(group: "a", active: 1, ceiling: 10, shape: shape(), queued: 5),
            Admission.Demand(group: "b", active: 1, ceiling: 10, shape: shape(), queued: 5),
        ]
        let result = Admission.allocate(demands, quotas: shared, pods: [shape(), shape()])
        #expect(result["a"]?.total == 3 && result["b"]?.total == 1)
        let granted = (result["a"]?.total ?? 0) + (result["b"]?.total ?? 0) - 2
        #expect(granted == 2, "the two free slots, not two each")
        #expect(result["b"]?.held?.reason == "quota")
        let ceiling = Admission.allocate([Admission.Demand(group: "c", active: 3, ceiling: 3, shape: shape(), queued: 2)], quotas: [], pods: [])
        #expect(ceiling["c"]?.total == 3 && ceiling["c"]?.held?.detail == "3/3")
        let idle = Admission.allocate([Admission.Demand(group: "d", active: 0, ceiling: 3, shape: shape(), queued: nil)], quotas: [], pods: [])
        #expect(idle["d"]?.total == 1, "one probe slot while GitHub's queue is unknown")
    }

    @Test func reclaimFreesTheFewestNewestWorkersThatMakeRoom() {
        let gpuQuota = [quota(["requests.nvidia.com/gpu": "2", "pods": "10"])]
        let pods: [(name: String, shape: PodShape)] = [("old-gpu", shape(gpu: "1")), ("cpu", shape()), ("new-gpu", shape(gpu: "1"))]
        let floor = shape(gpu: "1")
        // Newest first: the CPU worker frees no GPU, so only the newest GPU worker goes.
        #expect(Admission.victims(for: floor, quotas: gpuQuota, pods: pods, candidates: ["new-gpu", "cpu", "old-gpu"], releasing: [],
                                  reserved: []) == ["new-gpu"])
        #expect(Admission.victims(for: floor, quotas: gpuQuota, pods: pods, candidates: ["cpu", "new-gpu", "old-gpu"], releasing: [],
                                  reserved: []) == ["new-gpu"], "a candidate that frees nothing is not deleted")
        #expect(Admission.victims(for: floor, quotas: gpuQuota, pods: pods, candidates: ["cpu", "old-gpu"], releasing: ["new-gpu"],
                                  reserved: []) == [], "a reclaim under way already makes room: wait, delete nothing more")
        #expect(Admission.victims(for: floor, quotas: gpuQuota, pods: pods, candidates: ["cpu"], releasing: [], reserved: []) == nil,
                "nothing to reclaim that would help")
        let two = shape(gpu: "2")
        #expect(Admission.victims(for: two, quotas: gpuQuota, pods: pods, candidates: ["new-gpu", "cpu", "old-gpu"], releasing: [],
                                  reserved: []) == ["new-gpu", "old-gpu"])
        let used = [quota(["pods": "3"], used: ["pods": "3"])]
        #expect(Admission.victims(for: shape(), quotas: used, pods: pods, candidates: ["new-gpu"], releasing: [], reserved: []) == ["new-gpu"],
                "status.used still counting the victim is what its release frees")
    }

    @Test func nodesWithMaxPodsPerNodeWorkersAreFull() {
        #expect(Admission.fullNodes(["n1", "n2", "n1", "n3", "n1", "n2"], maxPodsPerNode: 2) == ["n1", "n2"])
        #expect(Admission.fullNodes(["n1", "n1"], maxPodsPerNode: nil).isEmpty)
    }

    @Test func fullNodesJoinEveryRequiredTermOfTheTemplate() {
        let template: JSONObject = ["nodeAffinity": ["requiredDuringSchedulingIgnoredDuringExecution": ["nodeSelectorTerms": [
            ["matchExpressions": [["key": "pool", "operator": "In", "values": ["a"]] as JSONObject]] as JSONObject,
            ["matchFields": [["key": "metadata.name", "operator": "In", "values": ["n9"]] as JSONObject]] as JSONObject,
        ] as [any Sendable]] as JSONObject] as JSONObject]
        let affinity = WorkerPod.excluding(["n1"], from: template)
        let terms = ((affinity["nodeAffinity"] as? JSONObject)?["requiredDuringSchedulingIgnoredDuringExecution"] as? JSONObject)?[
            "nodeSelectorTerms"] as? [JSONObject] ?? []
        #expect(terms.count == 2)
        for term in terms {
            let last = (term["matchExpressions"] as? [JSONObject])?.last
            #expect(last?["key"] as? String == "kubernetes.io/hostname" && last?["operator"] as? String == "NotIn")
        }
        #expect((terms[1]["matchFields"] as? [JSONObject])?.count == 1, "the template's own constraints stay")
        let none = WorkerPod.excluding(["n1"], from: [:])
        #expect((((none["nodeAffinity"] as? JSONObject)?["requiredDuringSchedulingIgnoredDuringExecution"] as? JSONObject)?[
            "nodeSelectorTerms"] as? [JSONObject])?.count == 1)
    }
}
