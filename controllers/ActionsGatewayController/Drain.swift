import KubeKit

/// Draining a gateway's AGC for a blue/green cut-over: the annotation
/// `actions-gateway.github.com/drain: "true"` on the ActionsGateway makes this cluster's AGC
/// give up its sessions at GitHub (so the other cluster's AGC, waiting as standby, takes them
/// within one retry interval) while the jobs it runs go on: classic jobs need this AGC to renew
/// their locks until they end, which a stopped AGC cannot do and the other cluster cannot see.
/// `Drained=True` says when this AGC holds nothing more and can be stopped; removing the
/// annotation (a rollback) makes it ask for sessions again.
///
/// The annotation is the tenant's input, so only the exact values `"true"` and `"false"` mean
/// anything; any other value drains nothing and is said in the condition, not guessed at.
public enum Drain {
    public static let annotation = "actions-gateway.github.com/drain"

    /// What the gateway's annotation asks for.
    public enum Request: Sendable, Equatable {
        case serve
        case drain
        /// An annotation value that is neither "true" nor "false" (bounded for the message).
        case invalid(String)

        public var draining: Bool { self == .drain }
    }

    public static func request(_ gateway: JSONObject) -> Request {
        let annotations = (gateway["metadata"] as? JSONObject)?["annotations"] as? JSONObject
        guard let value = annotations?[annotation] else { return .serve }
        switch value as? String {
        case "true": return .drain
        case "false": return .serve
        case let text?: return .invalid(String(text.prefix(64)))
        case nil: return .invalid("(not a string)")
        }
    }

    /// The `Drained` condition: True once a draining AGC holds no session, no job lock and no
    /// job in progress (running, pending or acquired and held) in any group.
    public static func condition(_ request: Request, groups: [GroupFacts]) -> GatewayCondition {
        switch request {
        case .serve:
            return GatewayCondition(type: "Drained", status: "False", reason: "NotRequested", message: "")
        case .invalid(let value):
            return GatewayCondition(type: "Drained", status: "False", reason: "InvalidAnnotation",
                                    message: "\(annotation) is \"\(value)\": \"true\" drains, \"false\" or no annotation serves; serving")
        case .drain:
            let sessions = groups.reduce(0) { $0 + $1.activeSessions }
            let jobs = groups.reduce(0) { $0 + max($1.runningJobs + $1.pendingJobs, $1.locksHeld) }
            if sessions == 0 && jobs == 0 {
                return GatewayCondition(type: "Drained", status: "True", reason: "NothingRunning",
                                        message: "no session held and no job running here: this AGC can be stopped")
            }
            return GatewayCondition(type: "Drained", status: "False", reason: "JobsRunning",
                                    message: "\(jobs) job(s) still running here, \(sessions) session(s) closing; no new job is taken")
        }
    }
}
