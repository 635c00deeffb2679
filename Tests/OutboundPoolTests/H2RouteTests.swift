@testable import OutboundPool
import Testing

/// The multiplexer's pure decisions, with no socket, loop or server.
struct H2RouteTests {
    @Test func urlsSplitIntoOriginAndPath() {
        let plain = H2Route.split("https://broker.actions.githubusercontent.com/message?sessionId=1")
        #expect(plain?.origin == H2Origin(host: "broker.actions.githubusercontent.com", port: 443))
        #expect(plain?.path == "/message?sessionId=1")
        #expect(plain?.origin.authority == "broker.actions.githubusercontent.com")
        let ported = H2Route.split("https://localhost:8443")
        #expect(ported?.origin == H2Origin(host: "localhost", port: 8443) && ported?.path == "/")
        #expect(ported?.origin.authority == "localhost:8443")
        let v6 = H2Route.split("https://[::1]:9000/a#fragment")
        #expect(v6?.origin.host == "::1" && v6?.origin.authority == "[::1]:9000" && v6?.path == "/a")
        #expect(H2Route.split("https://host?x=1")?.path == "/?x=1")
        for refused in ["http://plain/", "https://user:pw@host/", "https://host:0/", "https://host:99999/", "https:///x", "https://[::1/"] {
            #expect(H2Route.split(refused) == nil, "\(refused)")
        }
    }

    @Test func proxyChoiceFollowsCurl() throws {
        let origin = H2Origin(host: "api.github.com", port: 443)
        #expect(try H2Route.proxy(for: origin, configured: nil, environment: [:]).get() == nil)
        let env = ["HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "example.com"]
        #expect(try H2Route.proxy(for: origin, configured: nil, environment: env).get() == H2Proxy(host: "egress", port: 3128))
        #expect(try H2Route.proxy(for: origin, configured: nil, environment: ["https_proxy": "egress", "HTTPS_PROXY": "other:1"]).get()
            == H2Proxy(host: "egress", port: 1080), "lower case first; curl's default port")
        #expect(try H2Route.proxy(for: origin, configured: nil, environment: ["ALL_PROXY": "http://all:8080"]).get()?.host == "all")
        for bypass in ["github.com", ".github.com", "api.github.com", "*", "x, github.com "] {
            #expect(try H2Route.proxy(for: origin, configured: nil, environment: ["HTTPS_PROXY": "p:1", "NO_PROXY": bypass]).get() == nil, "\(bypass)")
        }
        #expect(try H2Route.proxy(for: origin, configured: nil, environment: ["HTTPS_PROXY": "p:1", "no_proxy": "hub.com"]).get() != nil,
                "a suffix that is not a domain boundary does not match")
        // An explicit proxy overrides the environment, NO_PROXY included (PoolConfiguration.proxy).
        #expect(try H2Route.proxy(for: origin, configured: "http://mine:3128", environment: ["NO_PROXY": "*"]).get()?.host == "mine")
        #expect(throws: H2Route.RouteRefusal.self) { try H2Route.proxy(for: origin, configured: "socks5://s:1", environment: [:]).get() }
        #expect(throws: H2Route.RouteRefusal.self) { try H2Route.proxy(for: origin, configured: "https://s:1", environment: [:]).get() }
    }

    @Test func proxyCredentialsBecomeBasicAuthorization() {
        let proxy = H2Route.parseProxy("http://tenant-a:s%40cret@egress.ns.svc:3128/")
        #expect(proxy == H2Proxy(host: "egress.ns.svc", port: 3128, authorization: "Basic dGVuYW50LWE6c0BjcmV0"))
        let request = String(decoding: H2Route.connectRequest(to: H2Origin(host: "::1", port: 443), proxy: proxy!, userAgent: "ua"), as: UTF8.self)
        #expect(request == "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nUser-Agent: ua\r\nProxy-Authorization: Basic dGVuYW50LWE6c0BjcmV0\r\n\r\n")
    }

    @Test func connectRepliesAreParsed() {
        #expect(H2Route.parseConnectReply(Array("HTTP/1.1 200 Connection established\r\n".utf8)) == .incomplete)
        #expect(H2Route.parseConnectReply(Array("HTTP/1.1 200 OK\r\nVia: x\r\n\r\n\u{16}\u{3}".utf8)) == .established(leftover: 2))
        #expect(H2Route.parseConnectReply(Array("HTTP/1.1 403 Forbidden\r\nX-Egress-Proxy-Error: denied\r\n\r\n".utf8))
            == .refused(status: 403, line: "HTTP/1.1 403 Forbidden"))
        #expect(H2Route.parseConnectReply(Array("SSH-2.0-OpenSSH\r\n\r\n".utf8)) == .malformed)
        #expect(H2Route.parseConnectReply(Array(repeating: 65, count: H2Route.maxConnectReply + 1)) == .malformed)
    }

    @Test func streamsFillTheFullestConnectionWithRoom() {
        typealias Slot = H2Route.Slot
        #expect(H2Route.place(on: [], maxConnections: 4) == .open)
        #expect(H2Route.place(on: [Slot(load: 10, capacity: 100, accepting: true), Slot(load: 60, capacity: 100, accepting: true)],
                              maxConnections: 4) == .join(1))
        #expect(H2Route.place(on: [Slot(load: 100, capacity: 100, accepting: true)], maxConnections: 4) == .open)
        #expect(H2Route.place(on: [Slot(load: 3, capacity: 100, accepting: false)], maxConnections: 4) == .open, "GOAWAY: a new connection")
        #expect(H2Route.place(on: [Slot(load: 120, capacity: 100, accepting: true), Slot(load: 101, capacity: 100, accepting: true)],
                              maxConnections: 2) == .join(1), "at the cap: the least loaded queues it")
        #expect(H2Route.place(on: [Slot(load: 1, capacity: 100, accepting: false)], maxConnections: 1) == .open,
                "at the cap but nothing accepts: open anyway (the draining one goes soon)")
    }

    @Test func requestFieldsAreHTTP2Shaped() {
        let request = OutboundRequest(url: "https://h/p", headers: [("Authorization", "Bearer t"), ("Connection", "keep-alive"), ("Host", "h"),
                                                                   ("User-Agent", "mine")])
        let fields = H2Stream.fields(of: request, origin: H2Origin(host: "h", port: 443), path: "/p", userAgent: "default")
        #expect(fields.map(\.0) == [":method", ":scheme", ":authority", ":path", "authorization", "user-agent"])
        #expect(fields.last?.1 == "mine")
    }
}
