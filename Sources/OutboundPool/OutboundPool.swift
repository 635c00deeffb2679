import EgressLoop
import EgressPosix
import Synchronization
import Vocabulary

/// The process's one outbound HTTP pool (GitHub REST, broker long-polls, the Kubernetes API):
/// libcurl's multi interface driven by an EgressLoop thread of its own, HTTP/2 multiplexing
/// where the server offers it, keep-alive otherwise, through the tenant's egress proxy.
///
/// `send` and `stream` may be called from any task; all curl work happens on the pool's loop.
public final class OutboundPool: Sendable {
    public let configuration: PoolConfiguration
    private let loop: EventLoop
    private let driver: LoopBound<CurlDriver>

    /// Starts the pool's loop thread (1 ms timer resolution: curl's own timers are short).
    public init(configuration: PoolConfiguration = PoolConfiguration()) throws(IOError) {
        self.configuration = configuration
        loop = try EventLoop(name: "outbound", timerTick: .milliseconds(1))
        driver = LoopBound(CurlDriver(loop: loop, configuration: configuration), on: loop)
        try loop.start()
    }

    /// Stops the loop; requests in flight never complete. For tests and process exit.
    public func shutdown() { loop.stop() }

    /// Sends a request and returns the whole response; 4xx/5xx come back as
    /// `OutboundError(kind: .http(status))` with the response attached. Idempotent requests
    /// (or those with `retry: true`) are retried on connection errors, 429 and 5xx with
    /// jittered exponential backoff, honouring `Retry-After`. A cancelled task removes its
    /// transfer at once.
    public func send(_ request: OutboundRequest) async throws(OutboundError) -> OutboundResponse {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await sendOnce(request)
            } catch {
                guard request.retries, error.isRetryable, attempt < request.maxAttempts, !Task.isCancelled else { throw error }
                let delay = backoff(attempt: attempt, retryAfter: error.response?.retryAfterSeconds)
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    throw OutboundError(kind: .cancelled, detail: "cancelled while waiting to retry")
                }
            }
        }
    }

    /// Full-jitter exponential backoff; a Retry-After (seconds) from the server wins.
    func backoff(attempt: Int, retryAfter seconds: Int?) -> Duration {
        if let seconds {
            return .seconds(min(Int64(seconds), Int64(configuration.maxBackoff.components.seconds)))
        }
        let base = configuration.baseBackoff.nanosecondsClamped
        let cap = configuration.maxBackoff.nanosecondsClamped
        let ceiling = min(cap, base << UInt64(min(attempt - 1, 20)))
        return .nanoseconds(Int64(UInt64.random(in: 0...max(1, ceiling))))
    }

    private func sendOnce(_ request: OutboundRequest) async throws(OutboundError) -> OutboundResponse {
        let holder = Mutex<Transfer?>(nil)
        let cancelled = Atomic<Bool>(false)
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<OutboundResponse, any Error>) in
                    let configuration = self.configuration
                    let driver = self.driver
                    loop.execute {
                        guard let transfer = Transfer(
                            request: request, configuration: configuration, sink: .whole(continuation), now: driver.loop.now())
                        else {
                            continuation.resume(throwing: OutboundError(kind: .other, detail: "curl_easy_init failed"))
                            return
                        }
                        holder.withLock { $0 = transfer }
                        if cancelled.load(ordering: .acquiring) {
                            transfer.finish(.failure(OutboundError(kind: .cancelled, detail: "cancelled")))
                            return
                        }
                        driver.value.add(transfer)
                    }
                }
            } onCancel: {
                cancelled.store(true, ordering: .releasing)
                let driver = self.driver
                loop.execute {
                    if let transfer = holder.withLock({ $0 }) { driver.value.cancel(transfer) }
                }
            }
        } catch let error as OutboundError {
            throw error
        } catch {
            throw OutboundError(kind: .other, detail: "\(error)")
        }
    }

    /// Starts one request (no retries) and calls `completion` exactly once with its result, on
    /// the pool's loop thread: the completion must not block (hand the result to a task or an
    /// actor). No task waits meanwhile, which is what a held long poll needs: thousands of
    /// them cost a transfer each and nothing else. `OutboundCall.cancel` completes it with
    /// `.cancelled` unless it finished first.
    public func begin(_ request: OutboundRequest,
                      completion: @escaping @Sendable (Result<OutboundResponse, OutboundError>) -> Void) -> OutboundCall {
        let call = OutboundCall(loop: loop, driver: driver)
        let driver = self.driver
        loop.execute {
            if driver.value.mux.start(request, call: call, completion: completion) { return }
            driver.value.begin(request, call: call, completion: completion)
        }
        return call
    }

    /// Streams a response body as it arrives (Kubernetes watches, broker long-polls). Memory
    /// is bounded: curl is paused while the consumer is more than `highWater` bytes behind.
    /// No retries: a stream's caller decides how to resume.
    public func stream(_ request: OutboundRequest, highWater: Int = 1 << 20) -> ResponseStream {
        let holder = Mutex<Transfer?>(nil)
        let driver = self.driver
        let loop = self.loop
        let buffer = StreamBuffer(highWater: highWater) {
            loop.execute { if let transfer = holder.withLock({ $0 }) { driver.value.unpause(transfer) } }
        }
        let configuration = self.configuration
        loop.execute {
            guard let transfer = Transfer(request: request, configuration: configuration, sink: .stream(buffer), now: loop.now()) else {
                buffer.finish(OutboundError(kind: .other, detail: "curl_easy_init failed"))
                return
            }
            holder.withLock { $0 = transfer }
            driver.value.add(transfer)
        }
        return ResponseStream(buffer: buffer) {
            loop.execute { if let transfer = holder.withLock({ $0 }) { driver.value.cancel(transfer) } }
        }
    }

    /// Counters for /metrics, copied on the pool's loop.
    public func statistics() async -> PoolStats {
        await withCheckedContinuation { continuation in
            let driver = self.driver
            loop.execute {
                var stats = driver.value.stats
                stats.openSockets = driver.value.openSockets + driver.value.mux.openConnections
                stats.activeTransfers = driver.value.activeTransfers + driver.value.mux.activeStreams
                stats.multiplexedConnections = driver.value.mux.openConnections
                continuation.resume(returning: stats)
            }
        }
    }
}

/// A request started with `begin`: a handle to cancel it. Crosses threads (the caller's and
/// the pool's loop); the transfer is only touched on the loop.
public final class OutboundCall: Sendable {
    private let loop: EventLoop
    private let driver: LoopBound<CurlDriver>
    /// The transfer or HTTP/2 stream once the loop made it (weak: a finished one goes at once,
    /// however long the caller keeps this handle), and whether a cancel came first.
    private struct State {
        weak var transfer: Transfer?
        weak var stream: H2Stream?
        var cancelled = false
    }
    private let state = Mutex(State())

    init(loop: EventLoop, driver: LoopBound<CurlDriver>) {
        self.loop = loop
        self.driver = driver
    }

    /// Loop thread: records the transfer; true if the call was cancelled before it existed.
    func attach(_ transfer: Transfer) -> Bool {
        state.withLock { state in
            if !state.cancelled { state.transfer = transfer }
            return state.cancelled
        }
    }

    /// Loop thread: records the stream; true if the call was cancelled before it existed.
    func attach(_ stream: H2Stream) -> Bool {
        state.withLock { state in
            if !state.cancelled { state.stream = stream }
            return state.cancelled
        }
    }

    /// Withdraws the request (its completion gets `.cancelled`); harmless after it finished.
    public func cancel() {
        let (transfer, stream): (Transfer?, H2Stream?) = state.withLock { state in
            state.cancelled = true
            defer {
                state.transfer = nil
                state.stream = nil
            }
            return (state.transfer, state.stream)
        }
        guard transfer != nil || stream != nil else { return }
        let driver = self.driver
        loop.execute {
            if let transfer { driver.value.cancel(transfer) }
            if let stream { driver.value.mux.cancel(stream) }
        }
    }
}

/// A response body as an `AsyncSequence` of byte chunks; `lines` splits it into lines
/// (newline-delimited JSON from Kubernetes watches). Cancelling the consuming task, or
/// calling `cancel`, removes the transfer.
public struct ResponseStream: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    let buffer: StreamBuffer
    let onCancel: @Sendable () -> Void

    public func cancel() { onCancel() }

    /// Queue high-water mark reached so far, and whether curl is paused (tests, diagnostics).
    public var observed: (maxBytes: Int, paused: Bool) { buffer.observed }

    /// Pulls chunks from the stream's bounded buffer; cancelling the consuming task cancels the transfer.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let buffer: StreamBuffer
        let onCancel: @Sendable () -> Void

        public mutating func next() async throws -> [UInt8]? {
            let buffer = self.buffer
            let onCancel = self.onCancel
            return try await withTaskCancellationHandler {
                try await buffer.next()
            } onCancel: {
                onCancel()
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(buffer: buffer, onCancel: onCancel) }

    /// The body split at `\n` (a trailing `\r` is dropped); a last line without newline counts.
    public var lines: AsyncThrowingStream<String, any Error> {
        let source = self
        return AsyncThrowingStream { continuation in
            let task = Task {
                var pending: [UInt8] = []
                do {
                    for try await chunk in source {
                        var start = pending.count
                        pending.append(contentsOf: chunk)
                        var lineStart = 0
                        while let newline = pending[start...].firstIndex(of: 10) {
                            var line = pending[lineStart..<newline]
                            if line.last == 13 { line = line.dropLast() }
                            continuation.yield(String(decoding: line, as: UTF8.self))
                            lineStart = newline + 1
                            start = lineStart
                        }
                        pending.removeFirst(lineStart)
                    }
                    if !pending.isEmpty { continuation.yield(String(decoding: pending, as: UTF8.self)) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in
                task.cancel()
                source.cancel()
            }
        }
    }
}

/// Request counters by host and status class, a latency histogram, sockets open.
public struct PoolStats: Sendable {
    public var requests: [String: UInt64] = [:]  // "host status-class" -> count
    public var latency = Histogram(bounds: Histogram.latencyBounds)
    public var openSockets = 0
    public var activeTransfers = 0
    /// Requests the pool's own HTTP/2 client carried (long polls on an h2 origin), and its connections open.
    public var multiplexedRequests: UInt64 = 0
    public var multiplexedConnections = 0
    /// GitHub's x-ratelimit-remaining / -reset, by host.
    public var rateLimitRemaining: [String: Int] = [:]
    public var rateLimitReset: [String: Int] = [:]

    mutating func record(host: String, started: Instant, result: Result<OutboundResponse, OutboundError>, now: Instant) {
        let statusClass: String
        let response: OutboundResponse?
        switch result {
        case .success(let answer):
            statusClass = "\(answer.status / 100)xx"
            response = answer
        case .failure(let error):
            if case .http(let status) = error.kind { statusClass = "\(status / 100)xx" } else { statusClass = "error" }
            response = error.response
        }
        requests["\(host) \(statusClass)", default: 0] += 1
        latency.observe(now.since(started).seconds)
        if let remaining = response?.header("x-ratelimit-remaining").flatMap({ Int($0) }) { rateLimitRemaining[host] = remaining }
        if let reset = response?.header("x-ratelimit-reset").flatMap({ Int($0) }) { rateLimitReset[host] = reset }
    }

    /// The transport's own series (sockets, requests in flight, the HTTP/2 multiplexer's share),
    /// for a process that counts requests by its own labels (the AGC, by runner group).
    public func writeTransport(into writer: inout PrometheusWriter, prefix: String) {
        writer.family("\(prefix)_outbound_connections_open", .gauge, help: "Sockets the pool has open (curl's and the multiplexer's).")
        writer.sample("\(prefix)_outbound_connections_open", Double(openSockets))
        writer.family("\(prefix)_outbound_requests_in_flight", .gauge, help: "Requests the pool is carrying now (held long polls included).")
        writer.sample("\(prefix)_outbound_requests_in_flight", Double(activeTransfers))
        writer.family("\(prefix)_outbound_multiplexed_requests_total", .counter,
                      help: "Long polls carried as streams of the pool's own HTTP/2 connections (not curl transfers).")
        writer.sample("\(prefix)_outbound_multiplexed_requests_total", Double(multiplexedRequests))
        writer.family("\(prefix)_outbound_multiplexed_connections_open", .gauge, help: "The multiplexer's HTTP/2 connections open.")
        writer.sample("\(prefix)_outbound_multiplexed_connections_open", Double(multiplexedConnections))
    }

    /// Appends the pool's series to a Prometheus exposition.
    public func write(into writer: inout PrometheusWriter, prefix: String) {
        writer.family("\(prefix)_outbound_requests_total", .counter, help: "Outbound requests by host and status class.")
        for key in requests.keys.sorted() {
            let parts = key.split(separator: " ", maxSplits: 1).map(String.init)
            writer.sample("\(prefix)_outbound_requests_total", labels: [("host", parts[0]), ("class", parts.count > 1 ? parts[1] : "")],
                          Double(requests[key] ?? 0))
        }
        writer.family("\(prefix)_outbound_request_seconds", .histogram, help: "Outbound request latency.")
        writer.histogram("\(prefix)_outbound_request_seconds", labels: [], latency)
        writeTransport(into: &writer, prefix: prefix)
        writer.family("\(prefix)_github_ratelimit_remaining", .gauge, help: "x-ratelimit-remaining last seen, by host.")
        for (host, value) in rateLimitRemaining.sorted(by: { $0.key < $1.key }) {
            writer.sample("\(prefix)_github_ratelimit_remaining", labels: [("host", host)], Double(value))
        }
        writer.family("\(prefix)_github_ratelimit_reset_timestamp_seconds", .gauge, help: "x-ratelimit-reset last seen (Unix time), by host.")
        for (host, value) in rateLimitReset.sorted(by: { $0.key < $1.key }) {
            writer.sample("\(prefix)_github_ratelimit_reset_timestamp_seconds", labels: [("host", host)], Double(value))
        }
    }
}
