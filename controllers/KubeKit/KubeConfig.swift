import Foundation
import OutboundPool
import Yams

/// How to reach an API server: in-cluster (service-account token and CA under
/// /var/run/secrets/kubernetes.io/serviceaccount) or from a kubeconfig file for development.
public struct KubeConnection: Sendable, Equatable {
    public var server: String
    /// A PEM file for the server's CA (kubeconfig `certificate-authority-data` is written to one).
    public var caFile: String?
    public var token: String?
    public var tokenFile: String?

    /// `KubeConnection.Invalid`, as the Kubernetes API defines it (the fields we use).
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// The current context of a kubeconfig (or `context` when given). Token and token-file
    /// users are supported; client-certificate users are refused with a clear error.
    public static func fromKubeconfig(_ path: String, context: String? = nil) throws -> KubeConnection {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            let root = try Yams.load(yaml: text) as? [String: Any]
        else { throw Invalid(description: "cannot read kubeconfig \(path)") }
        func named(_ list: String, _ name: String?, _ field: String) throws -> [String: Any] {
            guard let name, let entries = root[list] as? [[String: Any]],
                let entry = entries.first(where: { $0["name"] as? String == name }), let value = entry[field] as? [String: Any]
            else { throw Invalid(description: "kubeconfig: no \(field) named \(name ?? "(none)")") }
            return value
        }
        let contextName = context ?? root["current-context"] as? String
        let selected = try named("contexts", contextName, "context")
        let cluster = try named("clusters", selected["cluster"] as? String, "cluster")
        let user = try named("users", selected["user"] as? String, "user")
        guard let server = cluster["server"] as? String else { throw Invalid(description: "kubeconfig: cluster has no server") }
        var connection = KubeConnection(server: server)
        if let file = cluster["certificate-authority"] as? String {
            connection.caFile = file
        } else if let data = cluster["certificate-authority-data"] as? String, let pem = Data(base64Encoded: data) {
            let file = NSTemporaryDirectory() + "kubeconfig-ca-\(getpid()).pem"
            try pem.write(to: URL(fileURLWithPath: file))
            connection.caFile = file
        }
        if user["client-certificate"] != nil || user["client-certificate-data"] != nil {
            throw Invalid(description: "kubeconfig: client-certificate users are not supported; use a token")
        }
        connection.token = user["token"] as? String
        connection.tokenFile = user["tokenFile"] as? String
        return connection
    }
}

extension KubeClient {
    /// A client for a resolved connection (the pool must trust `connection.caFile`).
    public convenience init(connection: KubeConnection, pool: OutboundPool) {
        if let tokenFile = connection.tokenFile {
            self.init(server: connection.server, pool: pool, tokenFile: tokenFile)
        } else {
            self.init(server: connection.server, pool: pool, token: connection.token)
        }
    }
}
