import CCurl
import CCurlShims
import EgressLoop
import EgressPosix

/// One libcurl multi handle driven by one EventLoop through the multi-socket API: curl tells
/// us (socket callback) which descriptors to watch, we tell it (`curl_multi_socket_action`)
/// which ones are ready; curl asks (timer callback) for one deadline, our timer wheel keeps it.
///
/// Confined to `loop`'s thread: every curl call on the multi handle and its easy handles
/// happens there (curl handles are not thread-safe). Other threads reach it through
/// `loop.execute`. Descriptors are registered level-triggered, because curl does not promise
/// to drain a socket on each call.
final class CurlDriver: TimerTarget {
    let loop: EventLoop
    private let multi: UnsafeMutableRawPointer
    private var watchers: [curl_socket_t: SocketWatcher] = [:]
    private var timer: TimerHandle?
    private var transfers: [ObjectIdentifier: Transfer] = [:]
    var stats = PoolStats()
    private let configuration: PoolConfiguration
    /// The pool's own HTTP/2 client for long polls; what it cannot carry comes back here.
    private(set) lazy var mux = H2Multiplexer(
        loop: loop, configuration: configuration,
        fallback: { [unowned self] request, call, completion in begin(request, call: call, completion: completion) },
        record: { [unowned self] host, started, result in
            stats.multiplexedRequests += 1
            stats.record(host: host, started: started, result: result, now: loop.now())
        })

    init(loop: EventLoop, configuration: PoolConfiguration) {
        self.loop = loop
        self.configuration = configuration
        guard let handle = curl_multi_init() else { preconditionFailure("curl_multi_init failed (out of memory)") }
        multi = handle
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = cegress_multi_setopt_socket(multi, curlSocketCallback)
        _ = cegress_multi_setopt_ptr(multi, CURLMOPT_SOCKETDATA, me)
        _ = cegress_multi_setopt_timer(multi, curlTimerCallback)
        _ = cegress_multi_setopt_ptr(multi, CURLMOPT_TIMERDATA, me)
        _ = cegress_multi_setopt_long(multi, CURLMOPT_PIPELINING, CEGRESS_CURLPIPE_MULTIPLEX)
        _ = cegress_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, configuration.maxConnectionsPerHost)
        _ = cegress_multi_setopt_long(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, configuration.maxStreamsPerConnection)
    }

    var activeTransfers: Int { transfers.count }
    var openSockets: Int { watchers.count }

    // MARK: transfers

    func add(_ transfer: Transfer) {
        guard transfer.prepare() else {
            transfer.finish(.failure(OutboundError(kind: .other, detail: "cannot set up the request")))
            return
        }
        transfers[ObjectIdentifier(transfer)] = transfer
        let code = curl_multi_add_handle(multi, transfer.easy)
        if code != CURLM_OK {
            transfers[ObjectIdentifier(transfer)] = nil
            transfer.finish(.failure(OutboundError(kind: .other, detail: String(cString: curl_multi_strerror(code)))))
        }
    }

    /// Starts a `begin` request on curl; `call` learns its transfer (for cancel).
    func begin(_ request: OutboundRequest, call: OutboundCall,
               completion: @escaping @Sendable (Result<OutboundResponse, OutboundError>) -> Void) {
        guard let transfer = Transfer(request: request, configuration: configuration, sink: .callback(completion), now: loop.now()) else {
            completion(.failure(OutboundError(kind: .other, detail: "curl_easy_init failed")))
            return
        }
        // On the loop, so a cancel (also run on the loop) sees the transfer or the flag, never neither.
        if call.attach(transfer) {
            transfer.finish(.failure(OutboundError(kind: .cancelled, detail: "cancelled")))
            return
        }
        add(transfer)
    }

    /// Removes a transfer at once (task cancelled); its continuation gets `.cancelled`.
    func cancel(_ transfer: Transfer) {
        guard transfers.removeValue(forKey: ObjectIdentifier(transfer)) != nil else { return }
        curl_multi_remove_handle(multi, transfer.easy)
        transfer.finish(.failure(OutboundError(kind: .cancelled, detail: "cancelled")))
    }

    /// Resumes a paused transfer (a stream consumer caught up).
    func unpause(_ transfer: Transfer) {
        guard transfers[ObjectIdentifier(transfer)] != nil else { return }
        curl_easy_pause(transfer.easy, CEGRESS_CURLPAUSE_CONT)
        drainMessages()
    }

    // MARK: curl callbacks (called from inside curl_multi_socket_action, on the loop thread)

    fileprivate func socketCallback(_ fd: curl_socket_t, what: CInt) {
        if Int(what) == CEGRESS_CURL_POLL_REMOVE {
            if let watcher = watchers.removeValue(forKey: fd), let registration = watcher.registration {
                loop.deregisterForeign(registration, fd: fd)
            }
            return
        }
        var events: EpollEvents = []
        if Int(what) & CEGRESS_CURL_POLL_IN != 0 { events.insert(.readable) }
        if Int(what) & CEGRESS_CURL_POLL_OUT != 0 { events.insert(.writable) }
        if let watcher = watchers[fd], let registration = watcher.registration {
            try? loop.modify(fd, events: events, registration: registration, levelTriggered: true)
            return
        }
        let watcher = SocketWatcher(fd: fd, driver: self)
        watcher.registration = try? loop.register(fd, events: events, handler: watcher, levelTriggered: true)
        watchers[fd] = watcher
    }

    fileprivate func timerCallback(_ milliseconds: Int) {
        if let timer { loop.cancel(timer) }
        timer = nil
        guard milliseconds >= 0 else { return }
        if milliseconds == 0 {
            // Not from inside the callback: curl forbids re-entering socket_action there.
            let bound = LoopBound(self, on: loop)
            loop.execute { bound.value.timerFired(0) }
        } else {
            timer = loop.schedule(after: .milliseconds(Int64(milliseconds)), target: self)
        }
    }

    // MARK: driving

    func timerFired(_ token: UInt64) {
        timer = nil
        action(CEGRESS_CURL_SOCKET_TIMEOUT, 0)
    }

    fileprivate func socketReady(_ fd: curl_socket_t, events: EpollEvents) {
        var mask: CInt = 0
        if !events.isDisjoint(with: [.readable, .hangup, .readHangup]) { mask |= CEGRESS_CURL_CSELECT_IN }
        if events.contains(.writable) { mask |= CEGRESS_CURL_CSELECT_OUT }
        if events.contains(.error) { mask |= CEGRESS_CURL_CSELECT_ERR }
        action(fd, mask)
    }

    private func action(_ fd: curl_socket_t, _ mask: CInt) {
        var running: CInt = 0
        _ = curl_multi_socket_action(multi, fd, mask, &running)
        drainMessages()
    }

    private func drainMessages() {
        var remaining: CInt = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
            let code = message.pointee.data.result
            var raw: UnsafeMutableRawPointer?
            _ = cegress_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &raw)
            curl_multi_remove_handle(multi, easy)
            guard let raw else { continue }
            let transfer = Unmanaged<Transfer>.fromOpaque(raw).takeUnretainedValue()
            transfers[ObjectIdentifier(transfer)] = nil
            let result = transfer.complete(code: code)
            stats.record(host: transfer.host, started: transfer.started, result: result, now: loop.now())
            transfer.finish(result)
        }
    }
}

/// Level-triggered readiness of one curl socket, forwarded to the driver.
private final class SocketWatcher: LoopHandler {
    let fd: curl_socket_t
    unowned let driver: CurlDriver
    var registration: Registration?

    init(fd: curl_socket_t, driver: CurlDriver) {
        self.fd = fd
        self.driver = driver
    }

    func handle(events: EpollEvents, tag: UInt32) { driver.socketReady(fd, events: events) }
}

private func curlSocketCallback(
    _ easy: UnsafeMutableRawPointer?, _ fd: curl_socket_t, _ what: CInt, _ userp: UnsafeMutableRawPointer?,
    _ socketp: UnsafeMutableRawPointer?
) -> CInt {
    guard let userp else { return 0 }
    Unmanaged<CurlDriver>.fromOpaque(userp).takeUnretainedValue().socketCallback(fd, what: what)
    return 0
}

private func curlTimerCallback(_ multi: UnsafeMutableRawPointer?, _ milliseconds: Int, _ userp: UnsafeMutableRawPointer?) -> CInt {
    guard let userp else { return 0 }
    Unmanaged<CurlDriver>.fromOpaque(userp).takeUnretainedValue().timerCallback(milliseconds)
    return 0
}
