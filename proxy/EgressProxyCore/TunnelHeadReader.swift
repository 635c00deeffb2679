import EgressLoop
import EgressPosix

/// The bytes before a tunnel's decision: from a trusted balancer an optional PROXY protocol
/// header (v1 or v2), then the request head. `step` is pure over the head buffer; `read`
/// feeds it from the client socket (any `StreamEndpoint`, so tests script the bytes).
struct TunnelHeadReader {
    private var parser: RequestHeadParser
    /// The peer is a trusted balancer and its header has not been seen (or ruled out) yet.
    private var awaitingProxyHeader: Bool
    /// A `.source` was returned with bytes still unparsed behind the header: the next `read`
    /// steps them before reading (the head often arrives in the same segment).
    private var stepBeforeReading = false

    enum Step {
        /// Read more bytes, then call again.
        case needMore
        /// A PROXY header named the real client; call again (the head may already be here).
        case source(SocketAddress)
        case refused(TunnelAdmission.Refusal, detail: String?)
        case complete(RequestHead)
        /// The client closed or failed before its head was complete: no reply, just close.
        case ended(why: String)
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

    /// Reads from `client` into the channel's buffer (taken from the pool if needed) and
    /// steps what arrived, until a step other than `.needMore` or the socket would block.
    /// A buffer left empty goes back to the pool, so a connection that has sent nothing
    /// holds none.
    mutating func read<Client: StreamEndpoint & ~Copyable>(from client: borrowing Client, into channel: inout RelayChannel,
                                                           pools: RelayPools) -> Step {
        if stepBeforeReading, let buffer = channel.buffer {
            stepBeforeReading = false
            let step = step(buffer)
            if case .needMore = step {} else { return step }
        }
        while true {
            let buffer = channel.buffer ?? pools.buffers.acquire()
            channel.buffer = buffer
            let result: IOResult<Int>
            do {
                result = try client.read(into: buffer.free)
            } catch {
                return .ended(why: "client_error")
            }
            switch result {
            case .wouldBlock:
                if buffer.isEmpty { channel.releaseBuffer(pools: pools) }
                return .needMore
            case .processed(0):
                return .ended(why: "client_closed_before_request")
            case .processed(let count):
                buffer.writeIndex += count
                let step = step(buffer)
                switch step {
                case .needMore: continue
                case .source: stepBeforeReading = true
                default: break
                }
                return step
            }
        }
    }
}
