import EgressLoop
import EgressPosix
import Testing

@testable import EgressProxyCore

/// What a dialer keeps once its tunnel is up, and the refusal a failed parent exchange gets.
@Suite struct TunnelDialerTests {
    let destination = Authority(host: .name("github.com"), port: 443)

    func addresses(_ texts: String...) throws -> [SocketAddress] { try texts.map { try #require(SocketAddress(parsing: $0)) } }

    @Test func settlingKeepsTheDialedAddressAndWhetherItIsChained() throws {
        // A listener on loopback so the connect is real but stays on this machine.
        let listener = try Socket.listening(on: try #require(SocketAddress(parsing: "127.0.0.1:0")), reusePort: false)
        let target = try listener.localAddress()
        let parent = try ParentProxy.parse("http://user:pw@127.0.0.1:\(target.port)").get()
        var dialer = TunnelDialer(addresses: [], parent: parent, parentAddresses: [target], destination: destination)
        var upstream = Socket.closed
        guard case .opened = dialer.dial(into: &upstream, egress: nil) else { return #expect(Bool(false), "dial failed") }
        #expect(dialer.dialed == target && dialer.isChained)
        dialer.settle()
        #expect(dialer.dialed == target, "the audit line still names what was dialed")
        #expect(dialer.isChained, "and that it went through the parent")
        upstream.close()
    }

    @Test func aDirectDialThatNeverOpenedSettlesToNothing() throws {
        var dialer = TunnelDialer(addresses: try addresses("127.0.0.1:9"), parent: nil, parentAddresses: [], destination: destination)
        dialer.settle()
        #expect(dialer.dialed == nil && !dialer.isChained)
    }

    @Test func aFailedParentExchangeIsA502NamingWhy() {
        #expect(TunnelDialer.Handshake.refused(statusLine: "HTTP/1.1 407 Proxy Authentication Required").refusal?.0.why == "parent_refused")
        #expect(TunnelDialer.Handshake.failed(detail: "reset").refusal?.0.status == 502)
        #expect(TunnelDialer.Handshake.wait.refusal == nil && TunnelDialer.Handshake.established(headLength: 10).refusal == nil)
    }
}
