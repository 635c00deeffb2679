import EgressLoop
import EgressPosix
import Testing

@testable import EgressProxyCore

/// The tunnel's pure decision (spec sections 2 to 4) and the parent-proxy pieces, with no
/// socket: a head and a policy in, a refusal or the next step out.
struct TunnelAdmissionTests {
    static let yaml = """
        tenants:
          - name: team-a
            sources: [10.1.0.0/16]
            allow:
              - host: github.com
              - cidr: 203.0.113.0/24
                ports: [443, 22]
            connectRate: {perSecond: 1, burst: 3}
          - name: team-b
            sources: [10.2.0.0/16]
            mode: report
            allow: [{host: github.com}, {cidr: 198.51.100.0/24}]
            parentProxy: "http://corp:s%40cret@proxy.corp.example:8080"
          - name: off
            sources: [10.3.0.0/16]
            enabled: false
            allow: [{host: github.com}]
        """

    let policy: PolicySnapshot
    let now = Instant(nanoseconds: 1_000_000_000)

    init() throws {
        policy = try PolicySnapshot.make(config: try ProxyConfig.parse(yaml: Self.yaml).get())
    }

    func head(_ text: String) throws -> RequestHead {
        var parser = RequestHeadParser(limit: 8192)
        guard case .complete(let head, _) = Array(text.utf8).withUnsafeBytes({ parser.parse($0) }) else { throw HeadError() }
        return head
    }

    struct HeadError: Error {}

    func decide(_ target: String, from client: String, extra: String = "") throws -> TunnelAdmission.Decision {
        let request = try head("CONNECT \(target) HTTP/1.1\r\nHost: \(target)\r\n\(extra)\r\n")
        return TunnelAdmission.decide(request, client: try #require(IPAddress(client)), policy: policy, now: now)
    }

    func refusal(_ decision: TunnelAdmission.Decision) -> TunnelAdmission.Refusal? {
        if case .failure(let refusal) = decision.outcome { return refusal }
        return nil
    }

    @Test func aNameOnTheAllowlistIsResolvedAndALiteralIsScreenedAtOnce() throws {
        let name = try decide("github.com:443", from: "10.1.0.5")
        #expect(name.tenant?.name == "team-a")
        #expect(try name.outcome.get() == .resolve(name: "github.com", port: 443))
        #expect(name.ranges == nil && name.reported == nil)
        let literal = try decide("203.0.113.9:22", from: "10.1.0.5")
        #expect(try literal.outcome.get() == .screen([try #require(SocketAddress(parsing: "203.0.113.9:22"))]))
        // A name only a cidr rule can admit: its answers must fall into the rule's ranges.
        let ruled = try decide("build.example.net:22", from: "10.1.0.5")
        #expect(try ruled.outcome.get() == .resolve(name: "build.example.net", port: 22))
        #expect(ruled.ranges == [try #require(CIDR("203.0.113.0/24"))], "the cidr rule's ranges go with the decision")
    }

    @Test func refusalsCarryStatusResultReasonAndTheirHeaders() throws {
        let unknown = try #require(refusal(try decide("github.com:443", from: "192.0.2.1")))
        #expect(unknown.status == 407 && unknown.result == .authFailed && unknown.why == "credentials_required")
        #expect(unknown.headers == [.init(name: "Proxy-Authenticate", value: "Basic realm=\"egress\"")])
        let port = try #require(refusal(try decide("github.com:8443", from: "10.1.0.5")))
        #expect(port == .deny(.portNotAllowed) && port.status == 403)
        let disabled = try decide("github.com:443", from: "10.3.0.1")
        #expect(refusal(disabled) == .deny(.tenantDisabled) && disabled.tenant?.name == "off", "counted under its tenant")
    }

    @Test func theConnectRateIsDecidedHereWithRetryAfter() throws {
        for _ in 0..<3 { #expect(refusal(try decide("github.com:443", from: "10.1.0.5")) == nil, "within the burst") }
        let limited = try #require(refusal(try decide("github.com:443", from: "10.1.0.5")))
        #expect(limited.status == 429 && limited.why == "connect_rate")
        #expect(limited.headers == [.init(name: "Retry-After", value: "1")])
    }

    @Test func reportModeAdmitsWhatEnforceRefusesAndSaysWhy() throws {
        let decision = try decide("example.org:8443", from: "10.2.0.7")
        #expect(try decision.outcome.get() == .resolve(name: "example.org", port: 8443))
        #expect(decision.reported == .notAllowed)
        let tenant = try #require(decision.tenant)
        // A cidr rule no address falls into: let through in report mode, and reported.
        let outside = [try #require(SocketAddress(parsing: "192.0.2.80:443"))]
        let screened = try TunnelAdmission.screen(outside, tenant: tenant, within: [try #require(CIDR("198.51.100.0/24"))], policy: policy).get()
        #expect(screened.addresses == outside && screened.reported == .notAllowed)
        // The deny ranges hold in report mode too.
        let metadata = [try #require(SocketAddress(parsing: "169.254.169.254:443"))]
        guard case .failure(let refused) = TunnelAdmission.screen(metadata, tenant: tenant, within: nil, policy: policy) else {
            Issue.record("a private address was admitted")
            return
        }
        #expect(refused == .deny(.privateAddress))
    }

    @Test func aForwardedRequestWithAChunkedBodyIsRefusedBeforeAnyLookup() throws {
        let request = try head("POST http://github.com/x HTTP/1.1\r\nHost: github.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        let decision = TunnelAdmission.decide(request, client: try #require(IPAddress("10.1.0.5")), policy: policy, now: now)
        #expect(refusal(decision)?.status == 411 && refusal(decision)?.why == "chunked_request_body")
    }

    @Test func aChainedTenantLooksUpBothLegsAndAnIPParentNeedsNoLookup() throws {
        let tenant = try #require(policy.tenants.first { $0.name == "team-b" })
        let parent = try #require(tenant.config.parentProxy)
        #expect(parent.authority == Authority(host: .name("proxy.corp.example"), port: 8080))
        #expect(parent.authorization == "Basic Y29ycDpzQGNyZXQ=", "user corp, password s@cret, percent-decoded")
        let destination = try #require(SocketAddress(parsing: "198.51.100.1:443"))
        #expect(DialTargets(.screen([destination]), parent: parent).known == nil, "the parent's name is looked up")
        let literalParent = try ParentProxy.parse("http://192.0.2.10:3128").get()
        let known = try #require(DialTargets(.screen([destination]), parent: literalParent).known)
        let parentAddress = try #require(SocketAddress(parsing: "192.0.2.10:3128"))
        #expect(known.destination == [destination] && known.parent == [parentAddress])
        #expect(DialTargets(.resolve(name: "github.com", port: 443), parent: nil).known == nil)
        #expect(DialTargets(.screen([]), parent: nil).known?.parent == [])
        let request = String(decoding: parent.connectRequest(to: Authority(host: .name("github.com"), port: 443)), as: UTF8.self)
        #expect(request == "CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\nProxy-Authorization: Basic Y29ycDpzQGNyZXQ=\r\n\r\n")
    }

    @Test func parentURLsAreParsedStrictly() {
        #expect(ParentProxy.parse("http://[2001:db8::1]:3128/").map(\.authority) == .success(Authority(host: .ip(IPAddress("2001:db8::1")!), port: 3128)))
        #expect(ParentProxy.parse("https://corp:443") == .failure(.tlsUnsupported))
        #expect(ParentProxy.parse("socks5://corp:1080") == .failure(.badScheme))
        #expect(ParentProxy.parse("http://corp") == .failure(.missingPort))
        #expect(ParentProxy.parse("http://corp:8080/x") == .failure(.path))
        #expect(ParentProxy.parse("http://user@corp:8080") == .failure(.badUserinfo))
        #expect(ParentProxy.parse("http://u:%zz@corp:8080") == .failure(.badUserinfo))
        #expect(ParentProxy.parse("http://corp:0") == .failure(.badAuthority(.portZero)))
        #expect(ParentProxy.parse("http://0177.0.0.1:8080") == .failure(.badAuthority(.badIPv4)))
    }

    func reply(_ text: String) -> ParentReply { Array(text.utf8).withUnsafeBytes { ParentReply.parse($0) } }

    @Test func theParentsReplyIsAcceptedOnlyAs2xxWithACompleteHead() {
        #expect(reply("HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0") == .established(length: 39))
        #expect(reply("HTTP/1.0 200\r\nVia: corp\r\n\r\n") == .established(length: 27))
        #expect(reply("HTTP/1.1 200 OK\r\nVia: c") == .needMore)
        #expect(reply("") == .needMore)
        #expect(reply("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n") == .refused(statusLine: "HTTP/1.1 407 Proxy Authentication Required"))
        #expect(reply("HTTP/1.1 2000 x\r\n\r\n") == .refused(statusLine: "HTTP/1.1 2000 x"))
        #expect(reply("SSH-2.0-OpenSSH\r\n\r\n") == .refused(statusLine: "SSH-2.0-OpenSSH"))
        #expect(reply("HTTP/1.1 200 OK\r\n" + String(repeating: "X-Pad: y\r\n", count: 900)) == .refused(statusLine: "HTTP/1.1 200 OK"),
                "a head over the limit is not a proxy reply")
    }

    @Test func theParentIsRenderedBackAndReparsedUnchanged() throws {
        let config = try ProxyConfig.parse(yaml: Self.yaml).get()
        let again = try ProxyConfig.parse(yaml: config.renderYAML()).get()
        #expect(again == config)
        #expect(again.tenants[1].parentProxy?.url == "http://corp:s%40cret@proxy.corp.example:8080")
    }
}
