import EgressPosix
import Testing

@testable import EgressProxyCore

func authority(_ text: String) -> Authority {
    guard case .success(let value) = Authority.parse(Substring(text)) else { preconditionFailure("bad test authority \(text)") }
    return value
}

func rules(_ yaml: String) -> [AllowRule] {
    switch ProxyConfig.parse(yaml: "tenants:\n  - name: t\n    allow:\n" + yaml) {
    case .success(let config): return config.tenants[0].allow
    case .failure(let error): preconditionFailure("bad test rules: \(error)")
    }
}

@Suite struct AllowRuleTests {
    let github = rules("""
              - host: github.com
              - host: "*.githubusercontent.com"
              - host: api.example.org
                ports: [443, "8000-8999"]
        """)

    @Test(arguments: [
        ("github.com:443", AllowDecision.allowed),
        ("GitHub.com.:443", .allowed),
        ("GITHUB.COM:443", .allowed),
        ("objects.githubusercontent.com:443", .allowed),
        ("a.b.githubusercontent.com:443", .allowed),
        ("githubusercontent.com:443", .denied(.notAllowed)),
        ("evilgithub.com:443", .denied(.notAllowed)),
        ("github.com.evil.com:443", .denied(.notAllowed)),
        ("api.github.com:443", .denied(.notAllowed)),
        ("evilgithubusercontent.com:443", .denied(.notAllowed)),
        ("github.com:80", .denied(.portNotAllowed)),
        ("github.com:22", .denied(.portNotAllowed)),
        ("api.example.org:8000", .allowed),
        ("api.example.org:8999", .allowed),
        ("api.example.org:9000", .denied(.portNotAllowed)),
        ("api.example.org:7999", .denied(.portNotAllowed)),
        ("140.82.112.3:443", .denied(.notAllowed)),
    ])
    func hostRules(target: String, expected: AllowDecision) {
        #expect(github.decide(authority(target)) == expected, "\(target)")
    }

    @Test func cidrRules() {
        let list = rules("""
                  - cidr: 203.0.113.0/24
                    ports: [443, 22]
                  - cidr: "2001:db8::/32"
                    ports: ["*"]
            """)
        #expect(list.decide(authority("203.0.113.9:22")) == .allowed)
        #expect(list.decide(authority("203.0.113.9:80")) == .denied(.portNotAllowed))
        #expect(list.decide(authority("203.0.114.1:443")) == .denied(.notAllowed))
        #expect(list.decide(authority("[::ffff:203.0.113.9]:443")) == .allowed)
        #expect(list.decide(authority("[2001:db8::5]:1")) == .allowed)
        // A name is allowed only if it resolves into a range that allows the port.
        #expect(list.decide(authority("host.example:443")) == .allowedIfResolvedInto([CIDR("203.0.113.0/24")!, CIDR("2001:db8::/32")!]))
        #expect(list.decide(authority("host.example:80")) == .allowedIfResolvedInto([CIDR("2001:db8::/32")!]))
    }

    @Test func denyRanges() {
        let deny = DenyList.builtIn
        for text in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "172.31.255.255", "192.168.1.1", "100.64.0.1", "0.0.0.0",
                     "::1", "::", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fe80::1", "fd00::1", "ff02::1", "64:ff9b::a00:1",
                     "::127.0.0.1", "224.0.0.1", "255.255.255.255", "198.18.0.1"]
        {
            #expect(DenyList.isDenied(IPAddress(text)!, deny: deny, allowPrivate: []), "\(text)")
        }
        for text in ["140.82.112.3", "8.8.8.8", "2606:4700::1111", "::ffff:140.82.112.3", "172.32.0.1", "192.0.2.1"] {
            #expect(!DenyList.isDenied(IPAddress(text)!, deny: deny, allowPrivate: []), "\(text)")
        }
        #expect(!DenyList.isDenied(IPAddress("127.0.0.1")!, deny: deny, allowPrivate: [CIDR("127.0.0.0/8")!]))
        #expect(!DenyList.isDenied(IPAddress("::ffff:127.0.0.1")!, deny: deny, allowPrivate: [CIDR("127.0.0.0/8")!]))
        #expect(DenyList.isDenied(IPAddress("10.0.0.1")!, deny: deny, allowPrivate: [CIDR("127.0.0.0/8")!]))
    }

    @Test func cidrParsing() {
        #expect(CIDR("10.0.0.0/8")?.description == "10.0.0.0/8")
        #expect(CIDR("10.0.0.1/8") == nil)
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("10.0.0.0/") == nil)
        #expect(CIDR("10.0.0.0/-1") == nil)
        #expect(CIDR("fc00::/7")?.contains(IPAddress("fdff::1")!) == true)
        #expect(CIDR("fc00::/7")?.contains(IPAddress("fe00::1")!) == false)
        #expect(CIDR("1.2.3.4")?.prefix == 32)
        #expect(CIDR("0.0.0.0/0")?.contains(IPAddress("255.1.2.3")!) == true)
        #expect(CIDR("::/0")?.contains(IPAddress("::1")!) == true)
        #expect(CIDR("::/0")?.contains(IPAddress("1.2.3.4")!) == false)
        #expect(CIDR("10.0.0.0/8")?.contains(IPAddress("::ffff:10.1.2.3")!) == true, "mapped IPv6 is judged as its IPv4")
        #expect(CIDR("10.0.0.0/8")?.contains(IPAddress("::10.1.2.3")!) == false, "IPv4-compatible is not mapped")
    }
}
