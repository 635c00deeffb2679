import Foundation
import KubeKit
import Testing

@testable import GatewayManager

/// The GMC's plan as a pure function: observations in, writes and status out, no server.
@Suite struct GatewayPlanTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static let inputs = GatewayReconciler.Inputs(allowedPriorityClasses: ["runner-critical"])

    static func gateway(name: String = "gw", finalizers: [String] = [GatewayReconciler.finalizer], deleting: Bool = false,
                        spec extra: JSONObject = [:], status: JSONObject? = nil) -> JSONObject {
        var metadata: JSONObject = ["name": name, "namespace": "team-a", "uid": "uid-1", "generation": Int64(1),
                                    "finalizers": finalizers as [any Sendable]]
        if deleting { metadata["deletionTimestamp"] = "2027-01-15T08:00:00Z" }
        var spec: JSONObject = [
            "gitHubAppRef": ["name": "app"] as JSONObject, "gitHubURL": "https://github.com/org",
            "runnerGroups": [["name": "cpu", "runnerLabels": ["self-hosted"] as [any Sendable], "maxWorkers": Int64(5)] as JSONObject]
                as [any Sendable],
        ]
        for (key, value) in extra { spec[key] = value }
        var object: JSONObject = ["apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway",
                                  "metadata": metadata, "spec": spec]
        if let status { object["status"] = status }
        return object
    }

    static let namespace: JSONObject = ["metadata": ["name": "team-a", "labels": ["team": "a"] as JSONObject] as JSONObject]

    func plan(_ observation: GatewayObservation) -> GatewayPlan {
        GatewayReconciler.plan(observation, inputs: Self.inputs, now: Self.now, eventSuffix: "abc")
    }

    /// The observation a cluster would show once every write of `plan` had landed.
    func converged(from first: GatewayPlan, gateway: JSONObject) -> GatewayObservation {
        var observed = GatewayObservation(gateway: gateway, namespace: Self.namespace, secretExists: true)
        for write in first.writes {
            switch write {
            case .create(let collection, let object, _):
                let name = (object["metadata"] as? JSONObject)?["name"] as? String ?? ""
                if let resource = DesiredState.childResources.first(where: { collection.hasSuffix("/" + $0.plural) }) {
                    observed.children[.init(resource, name)] = object
                }
            case .patch(_, let patch, _):
                // Only the namespace is patched on a first reconcile (its Pod Security labels).
                observed.namespace = patch
            case .patchStatus(_, let status, _):
                observed.gateway["status"] = status
            default:
                break
            }
        }
        return observed
    }

    @Test func aNewGatewayCreatesEveryDeclaredChildAndItsStatus() {
        let first = plan(GatewayObservation(gateway: Self.gateway(finalizers: []), namespace: Self.namespace, secretExists: true))
        let creates = first.summaries.filter { $0.hasPrefix("create ") }
        #expect(first.summaries.first == "add finalizer")
        #expect(Set(creates) == Set(DesiredState.children.map { "create \($0.resource.plural) gw-\($0.suffix)" }),
                "exactly the declared children")
        #expect(creates.count == DesiredState.children.count)
        #expect(first.summaries.contains("patch namespaces team-a"), "Pod Security labels on the namespace")
        #expect(first.summaries.last == "status")
        #expect(first.problems.isEmpty && !first.gone && first.blocked == nil)
    }

    @Test func aConvergedGatewayPlansNoWrite() {
        let gateway = Self.gateway()
        let first = plan(GatewayObservation(gateway: gateway, namespace: Self.namespace, secretExists: true))
        let second = plan(converged(from: first, gateway: gateway))
        #expect(second.summaries == [], "\(second.summaries)")
    }

    @Test func aDriftedChildIsPatchedAndAMissingOneRecreated() {
        let gateway = Self.gateway()
        var observed = converged(from: plan(GatewayObservation(gateway: gateway, namespace: Self.namespace, secretExists: true)),
                                 gateway: gateway)
        let configMap = GatewayObservation.ChildKey(.configMaps, "gw-proxy")
        observed.children[configMap]?["data"] = ["config.yaml": "tenants: []\n"] as JSONObject
        observed.children[.init(.services, "gw-proxy")] = nil
        // Fields the API server adds (status, defaults, resourceVersion) are not drift.
        observed.children[.init(.deployments, "gw-agc")]?["status"] = ["availableReplicas": Int64(1)] as JSONObject
        let summaries = Set(plan(observed).summaries)
        #expect(summaries.contains("patch configmaps gw-proxy"))
        #expect(summaries.contains("create services gw-proxy"))
        #expect(summaries.contains("status"), "AGCAvailable changed")
        #expect(summaries.count == 3, "\(summaries)")
    }

    @Test(arguments: [
        (["proxy": ["extraAllowedHosts": ["downloads.example.com"] as [any Sendable]] as JSONObject] as JSONObject, "extraAllowedHosts"),
        (["gitHubURL": "https://github.com//org"] as JSONObject, "gitHubURL"),
        (["securityProfile": "none"] as JSONObject, "securityProfile"),
    ])
    func aRefusedGatewayGetsAConditionAndOneEventButNoChildren(spec: JSONObject, field: String) {
        let refused = plan(GatewayObservation(gateway: Self.gateway(spec: spec), namespace: Self.namespace, secretExists: true))
        #expect(refused.summaries == ["status", "event"], "\(refused.summaries)")
        #expect(refused.problems.contains { $0.field.contains(field) }, "\(refused.problems)")
        let conditions = refused.status?["conditions"] as? [any Sendable] ?? []
        let ready = conditions.compactMap { $0 as? JSONObject }.first { $0["type"] as? String == "Ready" }
        #expect(ready?["reason"] as? String == "InvalidSpec")
        // Once the condition is written, the same refusal plans nothing more (no event per reconcile).
        var again = GatewayObservation(gateway: Self.gateway(spec: spec), namespace: Self.namespace, secretExists: true)
        again.gateway["status"] = refused.status
        #expect(plan(again).summaries == [])
    }

    @Test func aMissingSecretIsReportedNotFatal() {
        let first = plan(GatewayObservation(gateway: Self.gateway(), namespace: Self.namespace, secretExists: false))
        let conditions = (first.status?["conditions"] as? [any Sendable] ?? []).compactMap { $0 as? JSONObject }
        let credentials = conditions.first { $0["type"] as? String == "CredentialsAvailable" }
        #expect(credentials?["status"] as? String == "False" && credentials?["reason"] as? String == "SecretNotFound")
        #expect(first.summaries.contains("create deployments gw-agc"))
    }

    @Test func aMissingNamespaceBlocksWithoutWriting() {
        let blocked = plan(GatewayObservation(gateway: Self.gateway(), namespace: nil))
        #expect(blocked.blocked != nil && blocked.writes.isEmpty)
    }

    @Test func deletionRemovesWorkerPodsThenExistingChildrenThenTheFinalizer() {
        var observed = GatewayObservation(gateway: Self.gateway(deleting: true), namespace: Self.namespace)
        observed.children[.init(.configMaps, "gw-proxy")] = ["metadata": ["name": "gw-proxy"] as JSONObject]
        observed.children[.init(.deployments, "gw-agc")] = ["metadata": ["name": "gw-agc"] as JSONObject]
        let deleting = plan(observed)
        #expect(deleting.gone)
        #expect(deleting.summaries == [
            "delete worker pods", "delete /apis/apps/v1/namespaces/team-a/deployments/gw-agc",
            "delete /api/v1/namespaces/team-a/configmaps/gw-proxy", "remove finalizer",
        ])
        let released = plan(GatewayObservation(gateway: Self.gateway(finalizers: [], deleting: true), namespace: Self.namespace))
        #expect(released.gone && released.writes.isEmpty, "nothing left once our finalizer is gone")
    }

    @Test func conditionsKeepTheirTransitionTimeWhileTheirStatusHolds() {
        let gateway = Self.gateway()
        let first = plan(GatewayObservation(gateway: gateway, namespace: Self.namespace, secretExists: true))
        var observed = converged(from: first, gateway: gateway)
        let later = GatewayReconciler.plan(observed, inputs: Self.inputs, now: Self.now.addingTimeInterval(3600), eventSuffix: "x")
        #expect(later.summaries == [], "an hour later, nothing changed: \(later.summaries)")
        observed.secretExists = false
        let changed = GatewayReconciler.plan(observed, inputs: Self.inputs, now: Self.now.addingTimeInterval(3600), eventSuffix: "x")
        let conditions = (changed.status?["conditions"] as? [any Sendable] ?? []).compactMap { $0 as? JSONObject }
        let stamp = { (type: String) in conditions.first { $0["type"] as? String == type }?["lastTransitionTime"] as? String }
        #expect(stamp("CredentialsAvailable") == "2027-01-15T09:00:00Z", "the changed condition moves")
        #expect(stamp("Ready") == "2027-01-15T08:00:00Z", "the others keep their time")
    }

    @Test func anotherWritersConditionsArePreservedAndAreNotDrift() {
        let gateway = Self.gateway()
        var observed = converged(from: plan(GatewayObservation(gateway: gateway, namespace: Self.namespace, secretExists: true)),
                                 gateway: gateway)
        var status = observed.gateway["status"] as? JSONObject ?? [:]
        let agc: JSONObject = ["type": "RateLimited", "status": "True", "reason": "SecondaryRateLimit", "message": "group cpu"]
        status["conditions"] = (status["conditions"] as? [any Sendable] ?? []) + [agc]
        status["runnerGroups"] = [["name": "cpu", "runningJobs": Int64(3)] as JSONObject] as [any Sendable]
        observed.gateway["status"] = status
        #expect(plan(observed).summaries == [], "the AGC's condition and counters are not ours to change")
        observed.secretExists = false
        let changed = plan(observed)
        #expect(changed.summaries == ["status"])
        let types = (changed.status?["conditions"] as? [any Sendable] ?? []).compactMap { ($0 as? JSONObject)?["type"] as? String }
        #expect(types == ["Ready", "ProxyAvailable", "AGCAvailable", "CredentialsAvailable", "Degraded", "RateLimited"])
        guard case .patchStatus(_, _, let version)? = changed.writes.first else {
            Issue.record("no status write")
            return
        }
        #expect(version == nil, "this observation has no resourceVersion")
        observed.gateway["metadata"] = (observed.gateway["metadata"] as? JSONObject ?? [:]).merging(["resourceVersion": "42"]) { $1 }
        guard case .patchStatus(_, _, let read)? = plan(observed).writes.first else {
            Issue.record("no status write")
            return
        }
        #expect(read == "42", "the write is conditional on what was read")
    }
}
