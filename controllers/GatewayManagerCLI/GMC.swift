import ArgumentParser
import GatewayManager
import KubeKit
import Yams

/// `gmc`: the Gateway Manager Controller. Today it renders (`gmc render`); the controller loop
/// against a cluster arrives with the rest of issue 6.
@main
struct GMC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gmc", abstract: "Gateway Manager Controller for ActionsGateway resources.",
        subcommands: [Render.self])
}

/// Prints the objects the GMC would create for a CR, without a cluster: for reviews, GitOps
/// and tests, from the same desired-state function the controller uses.
struct Render: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the objects the GMC would create (YAML stream), or the problems (exit 1).")

    @Option(help: "File holding the ActionsGateway (other documents in it are ignored).") var file: String
    @Option(help: "Comma-separated PriorityClasses tenants may use.") var allowedPriorityClasses = ""
    @Option(help: "Labels of the gateway's namespace, k=v,k=v (e.g. the privileged-profile label).") var namespaceLabels = ""
    @Option(help: "CIDRs where the AGC reaches the Kubernetes API (NetworkPolicy).") var apiServerCidrs = ""
    @Option(help: "egress-proxy image.") var proxyImage = GatewayImages().proxy
    @Option(help: "AGC image.") var agcImage = GatewayImages().agc

    func run() throws {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read \(file)") }
        var gateway: ActionsGateway?
        for document in try Yams.load_all(yaml: text) {
            guard let mapping = document as? [String: Any], mapping["kind"] as? String == "ActionsGateway" else { continue }
            gateway = try YAMLDecoder().decode(ActionsGateway.self, from: try Yams.dump(object: mapping))
        }
        guard let gateway else { throw ValidationError("\(file) holds no ActionsGateway") }
        var labels: [String: String] = [:]
        for pair in namespaceLabels.split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--namespace-labels expects k=v pairs") }
            labels[String(parts[0])] = String(parts[1])
        }
        let environment = GatewayEnvironment(
            allowedPriorityClasses: Set(allowedPriorityClasses.split(separator: ",").map(String.init)), namespaceLabels: labels)
        switch gateway.validated(in: environment) {
        case .failure(let rejection):
            for problem in rejection.problems { print("error: \(problem)") }
            throw ExitCode(1)
        case .success(let defaulted):
            let images = GatewayImages(
                proxy: proxyImage, agc: agcImage,
                apiServerCIDRs: apiServerCidrs.split(separator: ",").map(String.init))
            let uid = gateway.metadata.uid ?? "00000000-0000-0000-0000-000000000000"
            let encoder = YAMLEncoder()
            encoder.options.sortKeys = true
            for object in DesiredState.objects(for: defaulted, uid: uid, images: images) {
                print("---")
                print(try encoder.encode(object), terminator: "")
            }
        }
    }
}
