import EgressProxyCore
import Foundation
import KubeKit

/// `spec.oidc`, as a tenant writes it: the cloud trust its workflows' OIDC tokens should buy.
public struct OIDCSpec: Codable, Sendable, Equatable {
    public var aws: AWS?
    public var vault: Vault?

    /// An IAM role workflows assume with their token (`sts:AssumeRoleWithWebIdentity`).
    public struct AWS: Codable, Sendable, Equatable {
        public var accountId: String?
        /// Must begin with the gateway's namespace and a dash, so tenants sharing an account
        /// can never name one another's roles.
        public var roleName: String?
        /// For the regional STS host on the proxy's allowlist (the global one is always there).
        public var region: String?
        /// Repositories of the gateway's organisation: `name`, `org/name`, or `*` for all of them.
        public var repositories: [String]?
    }

    /// A Vault JWT auth role workflows log in with.
    public struct Vault: Codable, Sendable, Equatable {
        /// `https://HOST[:PORT]`, covered by the platform's `--allowed-extra-hosts`.
        public var address: String?
        public var mount: String?
        public var role: String?
        public var policies: [String]?
        /// 15m to 60m (default 30m).
        public var ttl: String?
        public var repositories: [String]?
    }
}

/// The OIDC trust of a validated gateway (issue 18, item 3): what the platform's provisioning
/// tool creates, rendered by the GMC into the gateway's `<gateway>-oidc` ConfigMap.
/// Every subject condition and bound claim names the gateway's own organisation, never a
/// wildcard owner, so a tenant's tokens buy nothing another tenant's role or Vault role trusts.
public struct OIDCTrust: Sendable, Equatable {
    public struct AWS: Sendable, Equatable {
        public var accountID: String
        public var roleName: String
        public var region: String?
        /// `org/name` or `org/*`.
        public var repositories: [String]
    }

    public struct Vault: Sendable, Equatable {
        public var host: String
        public var port: UInt16
        public var mount: String
        public var role: String
        public var policies: [String]
        public var ttlSeconds: Int
        public var repositories: [String]
    }

    public var aws: AWS?
    public var vault: Vault?

    public static let audienceSTS = "sts.amazonaws.com"
    public static let cloudIssuer = "https://token.actions.githubusercontent.com"
    public static let fileAWS = "aws.json"
    public static let fileVault = "vault.json"

    /// GitHub's token issuer for the gateway's GitHub: github.com's, or a GHES host's own.
    public static func issuer(gitHubHost: String, port: UInt16) -> String {
        guard gitHubHost != "github.com" else { return cloudIssuer }
        return "https://\(gitHubHost)\(port == 443 ? "" : ":\(port)")/_services/token"
    }

    /// The hosts the tenant's proxy must reach for this trust: STS, the Vault server.
    public func hosts() -> [(host: String, port: UInt16)] {
        var hosts: [(String, UInt16)] = []
        if let aws {
            hosts.append(("sts.amazonaws.com", 443))
            if let region = aws.region { hosts.append(("sts.\(region).amazonaws.com", 443)) }
        }
        if let vault { hosts.append((vault.host, vault.port)) }
        return hosts
    }

    /// The ConfigMap's files (JSON, sorted keys): none when the gateway asks for no trust.
    public func files(gateway: DefaultedGateway, organization: String) -> [String: String] {
        let issuer = Self.issuer(gitHubHost: gateway.gitHubHost, port: gateway.gitHubPort)
        let provider = String(issuer.dropFirst("https://".count))
        var files: [String: String] = [:]
        if let aws {
            let policy: JSONObject = [
                "Version": "2012-10-17",
                "Statement": [[
                    "Effect": "Allow",
                    "Principal": ["Federated": "arn:aws:iam::\(aws.accountID):oidc-provider/\(provider)"] as JSONObject,
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": [
                        "StringEquals": ["\(provider):aud": Self.audienceSTS] as JSONObject,
                        "StringLike": ["\(provider):sub": aws.repositories.map { "repo:\($0):*" } as [any Sendable]] as JSONObject,
                    ] as JSONObject,
                ] as JSONObject] as [any Sendable],
            ]
            var document: JSONObject = ["accountId": aws.accountID, "roleName": aws.roleName, "issuer": issuer, "trustPolicy": policy]
            if let region = aws.region { document["region"] = region }
            files[Self.fileAWS] = Self.json(document)
        }
        if let vault {
            // GitHub's default audience is the URL of the repository's owner.
            let audience = "https://\(gateway.gitHubHost)\(gateway.gitHubPort == 443 ? "" : ":\(gateway.gitHubPort)")/\(organization)"
            let ttl = "\(vault.ttlSeconds)s"
            let document: JSONObject = [
                "address": "https://\(vault.host)\(vault.port == 443 ? "" : ":\(vault.port)")", "mount": vault.mount, "role": vault.role,
                "auth": ["oidc_discovery_url": issuer, "bound_issuer": issuer] as JSONObject,
                "roleConfig": [
                    "role_type": "jwt", "bound_audiences": [audience] as [any Sendable], "user_claim": "repository",
                    "bound_claims_type": "glob",
                    "bound_claims": ["repository_owner": organization, "repository": vault.repositories as [any Sendable]] as JSONObject,
                    "token_policies": vault.policies as [any Sendable], "token_ttl": ttl, "token_max_ttl": ttl,
                ] as JSONObject,
            ]
            files[Self.fileVault] = Self.json(document)
        }
        return files
    }

    static func json(_ object: JSONObject) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// `spec.oidc`'s checks (called by `ActionsGateway.validated`).
enum OIDCValidation {
    static let maxRepositories = 100

    static func validate(_ spec: OIDCSpec?, namespace: String, organization: String?, environment: GatewayEnvironment,
                         problem: (String, String) -> Void) -> OIDCTrust? {
        guard let spec else { return nil }
        var trust = OIDCTrust()
        guard let organization else {
            problem("spec.oidc", "needs spec.gitHubURL to name an organisation")
            return nil
        }
        if let aws = spec.aws {
            let path = "spec.oidc.aws"
            let account = aws.accountId ?? ""
            if account.count != 12 || !account.allSatisfy(\.isASCIIDigit) {
                problem("\(path).accountId", "must be a 12-digit AWS account id")
            } else if !environment.allowedAWSAccounts.contains(account) {
                problem("\(path).accountId", "\(account) is not an account the platform allows (--allowed-aws-accounts)")
            }
            let role = aws.roleName ?? ""
            let roleBytes = role.utf8
            if !(1...64).contains(roleBytes.count) || !roleBytes.allSatisfy({ isAlphanumeric($0) || "+=,.@_-".utf8.contains($0) }) {
                problem("\(path).roleName", "must be an IAM role name (1 to 64 of letters, digits and +=,.@_-)")
            } else if !role.hasPrefix(namespace + "-") {
                problem("\(path).roleName", "must begin with \(namespace)- (the gateway's namespace), so no tenant names another's role")
            }
            if let region = aws.region, !isRegion(region) { problem("\(path).region", "must be an AWS region (us-east-1, eu-west-3, ...)") }
            let repositories = self.repositories(aws.repositories, path: "\(path).repositories", organization: organization, problem: problem)
            trust.aws = .init(accountID: account, roleName: role, region: aws.region, repositories: repositories)
        }
        if let vault = spec.vault {
            let path = "spec.oidc.vault"
            var host = ""
            var port: UInt16 = 443
            if let address = vault.address, address.hasPrefix("https://"), !address.dropFirst(8).contains("/"),
                case .success(let authority) = Authority.parse(address.dropFirst(8), defaultPort: 443), case .name(let name) = authority.host
            {
                host = name
                port = authority.port
                if let why = TenantHosts.refusal(name, allowed: environment.allowedExtraHosts) { problem("\(path).address", why) }
            } else {
                problem("\(path).address", "must be https://HOST[:PORT] (a host name, no path)")
            }
            let mount = vault.mount ?? "jwt"
            if !(1...128).contains(mount.utf8.count) || mount.split(separator: "/", omittingEmptySubsequences: false)
                .contains(where: { $0.isEmpty || !$0.utf8.allSatisfy { isAlphanumeric($0) || $0 == 0x2d || $0 == 0x5f } })
            {
                problem("\(path).mount", "must be a Vault mount path (segments of letters, digits, '-' and '_')")
            }
            let role = vault.role ?? ""
            if !isVaultName(role) { problem("\(path).role", "must be 1 to 128 of letters, digits, '.', '-' and '_'") }
            let policies = vault.policies ?? []
            if policies.isEmpty || policies.count > 20 { problem("\(path).policies", "1 to 20 policies") }
            for (index, policy) in policies.enumerated() where !isVaultName(policy) || policy == "root" {
                problem("\(path).policies[\(index)]", policy == "root" ? "root is never granted to workflows" : "must be a Vault policy name")
            }
            let ttl = durationSeconds(vault.ttl ?? "30m", max: 3600)
            if ttl == nil || ttl ?? 0 < 900 { problem("\(path).ttl", "must be 15m to 60m") }
            let repositories = self.repositories(vault.repositories, path: "\(path).repositories", organization: organization, problem: problem)
            trust.vault = .init(host: host, port: port, mount: mount, role: role, policies: policies, ttlSeconds: ttl ?? 1800,
                                repositories: repositories)
        }
        return trust
    }

    /// `name`, `org/name` or `*`, always as `org/...` of the gateway's own organisation: a
    /// repository of another owner is refused with its field named.
    static func repositories(_ list: [String]?, path: String, organization: String, problem: (String, String) -> Void) -> [String] {
        let list = list ?? []
        if list.isEmpty { problem(path, "required: the repositories of \(organization) whose workflows may use it (or *)") }
        if list.count > maxRepositories { problem(path, "at most \(maxRepositories) repositories") }
        var out: [String] = []
        for (index, entry) in list.prefix(maxRepositories).enumerated() {
            let parts = entry.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            let name: String
            switch parts.count {
            case 1:
                name = parts[0]
            case 2 where parts[0].lowercased() == organization.lowercased():
                name = parts[1]
            case 2:
                problem("\(path)[\(index)]", "must be a repository of \(organization), the gateway's organisation ('\(parts[0])' is another owner)")
                continue
            default:
                problem("\(path)[\(index)]", "must be name, \(organization)/name or *")
                continue
            }
            guard name == "*" || ((1...100).contains(name.utf8.count) && name != "." && name != ".."
                && name.utf8.allSatisfy({ isAlphanumeric($0) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }))
            else {
                problem("\(path)[\(index)]", "'\(name)' is not a repository name (letters, digits, '.', '-' and '_'), nor *")
                continue
            }
            let full = "\(organization)/\(name)"
            if !out.contains(full) { out.append(full) }
        }
        return out
    }

    static func isAlphanumeric(_ byte: UInt8) -> Bool { (0x61...0x7a).contains(byte) || (0x41...0x5a).contains(byte) || (0x30...0x39).contains(byte) }

    static func isVaultName(_ text: String) -> Bool {
        (1...128).contains(text.utf8.count) && text.utf8.allSatisfy { isAlphanumeric($0) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }
    }

    /// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `ap-southeast-4`.
    static func isRegion(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard (3...4).contains(parts.count), let last = parts.last, last.count == 1, last.allSatisfy(\.isASCIIDigit) else { return false }
        return parts.dropLast().allSatisfy { !$0.isEmpty && $0.count <= 12 && $0.allSatisfy { $0.isASCII && $0.isLowercase } }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
