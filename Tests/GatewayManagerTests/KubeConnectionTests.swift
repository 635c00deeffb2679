import Foundation
import KubeKit
import Testing

/// Which cluster a controller talks to, in controller-runtime's order, from the environment alone.
@Suite struct KubeConnectionTests {
    static func kubeconfig(server: String) throws -> String {
        let directory = NSTemporaryDirectory() + "kc-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory + "/.kube", withIntermediateDirectories: true)
        let path = directory + "/.kube/config"
        try """
            apiVersion: v1
            kind: Config
            current-context: c
            contexts: [{name: c, context: {cluster: k, user: u}}]
            clusters: [{name: k, cluster: {server: "\(server)"}}]
            users: [{name: u, user: {token: t}}]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func theOrderIsFlagKubeconfigEnvironmentPodHome() throws {
        let fromEnv = try Self.kubeconfig(server: "https://env.example:6443")
        let home = try Self.kubeconfig(server: "https://home.example:6443")
        let homeDirectory = ((home as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
        let pod = ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"]
        let all = pod.merging(["KUBECONFIG": fromEnv + ":/other", "HOME": homeDirectory]) { first, _ in first }

        #expect(try KubeConnection.resolve(apiServer: "http://127.0.0.1:1", kubeconfig: home, context: nil, environment: all)
            .connection.server == "http://127.0.0.1:1")
        #expect(try KubeConnection.resolve(apiServer: nil, kubeconfig: home, context: nil, environment: all).connection.server
            == "https://home.example:6443")
        let environment = try KubeConnection.resolve(apiServer: nil, kubeconfig: nil, context: nil, environment: all)
        #expect(environment.connection.server == "https://env.example:6443")
        #expect(environment.warning?.contains("only") == true, "a list of files is not merged, and that is said")
        let inPod = try KubeConnection.resolve(apiServer: nil, kubeconfig: nil, context: nil,
                                               environment: pod.merging(["HOME": homeDirectory]) { first, _ in first })
        #expect(inPod.connection.server == "https://10.96.0.1:443")
        #expect(inPod.connection.tokenFile == KubeConnection.serviceAccountDirectory + "/token")
        #expect(inPod.connection.caFile == KubeConnection.serviceAccountDirectory + "/ca.crt")
        #expect(try KubeConnection.resolve(apiServer: nil, kubeconfig: nil, context: nil, environment: ["HOME": homeDirectory])
            .connection.server == "https://home.example:6443")
        #expect(throws: KubeConnection.Invalid.self) {
            try KubeConnection.resolve(apiServer: nil, kubeconfig: nil, context: nil, environment: ["HOME": "/nonexistent"])
        }
        let v6 = KubeConnection.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"])
        #expect(v6?.server == "https://[fd00::1]:443")
    }
}
