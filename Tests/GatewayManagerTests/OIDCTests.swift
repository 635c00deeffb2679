import EgressProxyCore
import Foundation
import KubeKit
import Testing

@testable import GatewayManager

/// OIDC trust (issue 18, item 3): the documents the GMC renders for cloud and GHES, checked
/// field by field, and the claims a tenant may not make.
@Suite struct OIDCTests {
    static let oidc = """
          oidc:
            aws: {accountId: "123456789012", roleName: team-a-deploy, region: eu-west-1, repositories: [widgets, team-a-org/infra, widgets]}
            vault: {address: "https://vault.example.net:8200", role: team-a-ci, policies: [ci-read], ttl: 20m, repositories: ["*"]}
        """
    var platform: GatewayEnvironment {
        var environment = GatewayEnvironment(allowedPriorityClasses: ["runner-critical", "runner-standard"],
                                             allowedExtraHosts: ["*.example.net"].compactMap(HostPattern.parse))
        environment.allowedAWSAccounts = ["123456789012"]
        return environment
    }

    func yaml(_ oidc: String = Self.oidc, url: String = "https://github.com/team-a-org") -> String {
        ValidationTests.example.replacingFirst("  runnerGroups:", with: oidc + "\n  runnerGroups:")
            .replacingFirst("https://github.com/team-a-org", with: url)
    }

    func files(_ yaml: String) throws -> [String: Any] {
        let gateway = try ActionsGateway.parse(yaml: yaml).validated(in: platform).get()
        let map = DesiredState.objects(for: gateway, uid: nil).compactMap { object -> ConfigMap? in
            if case .configMap(let map) = object, map.metadata.name == "team-a-gateway-oidc" { return map }
            return nil
        }.first
        var out: [String: Any] = [:]
        for (key, value) in map?.data ?? [:] { out[key] = try JSONSerialization.jsonObject(with: Data(value.utf8)) }
        return out
    }

    func problems(_ yaml: String) throws -> [String] {
        switch try ActionsGateway.parse(yaml: yaml).validated(in: platform) {
        case .success: return []
        case .failure(let rejection): return rejection.problems.map(\.description)
        }
    }

    @Test func cloudTrustIsScopedToTheTenantsOwnRepositories() throws {
        let files = try files(yaml())
        let aws = try #require(files["aws.json"] as? [String: Any])
        #expect(aws["accountId"] as? String == "123456789012" && aws["roleName"] as? String == "team-a-deploy")
        #expect(aws["issuer"] as? String == "https://token.actions.githubusercontent.com")
        let statement = try #require(((aws["trustPolicy"] as? [String: Any])?["Statement"] as? [[String: Any]])?.first)
        #expect(statement["Effect"] as? String == "Allow" && statement["Action"] as? String == "sts:AssumeRoleWithWebIdentity")
        #expect((statement["Principal"] as? [String: Any])?["Federated"] as? String
            == "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com")
        let condition = try #require(statement["Condition"] as? [String: [String: Any]])
        #expect(condition["StringEquals"]?["token.actions.githubusercontent.com:aud"] as? String == "sts.amazonaws.com")
        #expect(condition["StringLike"]?["token.actions.githubusercontent.com:sub"] as? [String]
            == ["repo:team-a-org/widgets:*", "repo:team-a-org/infra:*"], "each repository once, always with its owner")

        let vault = try #require(files["vault.json"] as? [String: Any])
        #expect(vault["address"] as? String == "https://vault.example.net:8200" && vault["mount"] as? String == "jwt")
        #expect(vault["role"] as? String == "team-a-ci")
        #expect((vault["auth"] as? [String: String]) == ["oidc_discovery_url": "https://token.actions.githubusercontent.com",
                                                        "bound_issuer": "https://token.actions.githubusercontent.com"])
        let role = try #require(vault["roleConfig"] as? [String: Any])
        #expect(role["role_type"] as? String == "jwt" && role["user_claim"] as? String == "repository")
        #expect(role["bound_audiences"] as? [String] == ["https://github.com/team-a-org"])
        #expect(role["bound_claims_type"] as? String == "glob")
        let claims = try #require(role["bound_claims"] as? [String: Any])
        #expect(claims["repository_owner"] as? String == "team-a-org", "never a wildcard owner, even for *")
        #expect(claims["repository"] as? [String] == ["team-a-org/*"])
        #expect(role["token_policies"] as? [String] == ["ci-read"] && role["token_ttl"] as? String == "1200s")
    }

    @Test func ghesTrustNamesItsOwnIssuer() throws {
        let files = try files(yaml(url: "https://ghes.example.net/team-a-org"))
        let aws = try #require(files["aws.json"] as? [String: Any])
        #expect(aws["issuer"] as? String == "https://ghes.example.net/_services/token")
        let statement = try #require(((aws["trustPolicy"] as? [String: Any])?["Statement"] as? [[String: Any]])?.first)
        #expect((statement["Principal"] as? [String: Any])?["Federated"] as? String
            == "arn:aws:iam::123456789012:oidc-provider/ghes.example.net/_services/token")
        let condition = try #require(statement["Condition"] as? [String: [String: Any]])
        #expect(condition["StringEquals"]?["ghes.example.net/_services/token:aud"] as? String == "sts.amazonaws.com")
        #expect(condition["StringLike"]?["ghes.example.net/_services/token:sub"] as? [String] == ["repo:team-a-org/widgets:*", "repo:team-a-org/infra:*"])
        let vault = try #require(files["vault.json"] as? [String: Any])
        #expect((vault["auth"] as? [String: String])?["bound_issuer"] == "https://ghes.example.net/_services/token")
        #expect((vault["roleConfig"] as? [String: Any])?["bound_audiences"] as? [String] == ["https://ghes.example.net/team-a-org"])
    }

    @Test func theProxyMayReachSTSAndVaultAndNothingElseNew() throws {
        let gateway = try ActionsGateway.parse(yaml: yaml()).validated(in: platform).get()
        let config = try ProxyConfig.parse(yaml: DesiredState.proxyConfig(gateway)).get()
        // Asked of the proxy's own rules, as it will decide a CONNECT.
        func allowed(_ target: String) throws -> Bool {
            let authority = try Authority.parse(Substring(target), defaultPort: 443).get()
            if case .allowed = config.tenants[0].allow.decide(authority) { return true }
            return false
        }
        for host in ["sts.amazonaws.com:443", "sts.eu-west-1.amazonaws.com:443", "vault.example.net:8200"] {
            #expect(try allowed(host), "\(host)")
        }
        #expect(try !allowed("vault.example.net:443") && !allowed("sts.us-east-1.amazonaws.com:443"), "only what the trust needs")
        let plain = try ActionsGateway.parse(yaml: ValidationTests.example).validated(in: platform).get()
        #expect(!DesiredState.proxyConfig(plain).contains("sts."), "github-cloud.s3.amazonaws.com is GitHub's own; STS is not")
        #expect(try files(ValidationTests.example).isEmpty, "no trust asked, none rendered")
    }

    @Test func claimsThatReachAnotherTenantAreRefusedByField() throws {
        func refused(_ oidc: String) throws -> [String] { try problems(yaml(oidc)) }
        #expect(try refused("""
              oidc:
                aws: {accountId: "123456789012", roleName: team-a-deploy, repositories: [widgets, other-org/widgets]}
            """) == ["spec.oidc.aws.repositories[1]: must be a repository of team-a-org, the gateway's organisation ('other-org' is another owner)"])
        #expect(try refused("""
              oidc:
                vault: {address: "https://vault.example.net", role: r, policies: [p], repositories: ["*/*"]}
            """) == ["spec.oidc.vault.repositories[0]: must be a repository of team-a-org, the gateway's organisation ('*' is another owner)"])
        #expect(try refused("""
              oidc:
                aws: {accountId: "123456789012", roleName: team-b-deploy, repositories: [widgets]}
            """) == ["spec.oidc.aws.roleName: must begin with team-a- (the gateway's namespace), so no tenant names another's role"])
        #expect(try refused("""
              oidc:
                aws: {accountId: "999999999999", roleName: team-a-x, repositories: [widgets]}
            """) == ["spec.oidc.aws.accountId: 999999999999 is not an account the platform allows (--allowed-aws-accounts)"])
        let many = try refused("""
              oidc:
                aws: {accountId: "12", roleName: "team-a-x y", region: Mars, repositories: ["a/b/c", "w*"]}
                vault: {address: "http://vault.example.net", mount: "a//b", role: "", policies: [root], ttl: 5m, repositories: []}
            """)
        for field in ["aws.accountId", "aws.roleName", "aws.region", "aws.repositories[0]", "aws.repositories[1]", "vault.address",
                      "vault.mount", "vault.role", "vault.policies[0]", "vault.ttl", "vault.repositories"] {
            #expect(many.contains { $0.hasPrefix("spec.oidc.\(field):") }, "\(field) in \(many)")
        }
        #expect(try refused("""
              oidc:
                vault: {address: "https://vault.elsewhere.org", role: r, policies: [p], repositories: [x]}
            """).first?.hasPrefix("spec.oidc.vault.address:") == true, "a Vault host the platform does not allow")
        #expect(try problems(yaml(url: "https://github.com/enterprises/big")) .contains("spec.oidc: needs spec.gitHubURL to name an organisation"))
    }
}
