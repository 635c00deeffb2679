import EgressLoop
import EgressPosix

/// The bytes before a tunnel's decision: from a trusted balancer an optional PROXY protocol
/// header (v1 or v2), then the request head. Pure over the tunnel's head buffer; the tunnel
/// reads the socket and performs what `step` returns.
struct TunnelHeadReader {
    private var parser: RequestHeadParser
    /// The peer is a trusted balancer and its header has not been seen (or ruled out) yet.
    private var awaitingProxyHeader: Bool

    enum Step {
        /// Read more bytes, then call again.
        case needMore
        /// A PROXY header named the real client; call again (the head may already be here).
        case source(SocketAddress)
        case refused(TunnelAdmission.Refusal, detail: String?)
        case complete(RequestHead)
    }

    init(headerLimit: Int, trustsProxyHeader: Bool) {
        parser = RequestHeadParser(limit: headerLimit)
        awaitingProxyHeader = trustsProxyHeader
    }

    /// Consumes what `buffer` holds; advances its `readIndex` past each part it accepts, so
    /// after `.complete` the buffer holds exactly the client's early bytes.
    mutating func step(_ buffer: IOBuffer) -> Step {
        if awaitingProxyHeader {
            switch ProxyProtocolHeader.parse(buffer.pending) {
            case .needMore:
                return .needMore
            case .invalid(let why):
                return .refused(TunnelAdmission.Refusal(status: 400, result: .badRequest, why: "bad_proxy_protocol"), detail: why)
            case .absent:
                awaitingProxyHeader = false
            case .parsed(let source, let length):
                awaitingProxyHeader = false
                buffer.readIndex += length
                if let source { return .source(source) }  // LOCAL (nil): the balancer itself
            }
        }
        if buffer.isEmpty { return .needMore }
        switch parser.parse(buffer.pending) {
        case .needMore:
            return .needMore
        case .rejected(let rejection):
            return .refused(TunnelAdmission.Refusal(status: rejection.status, result: .badRequest, why: rejection.reason), detail: nil)
        case .complete(let head, let length):
            buffer.readIndex += length
            return .complete(head)
        }
    }
}
