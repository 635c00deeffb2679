import EgressPosix
import Synchronization

/// Receives readiness for one registered descriptor. Called only on the owning loop's thread.
public protocol LoopHandler: AnyObject {
    /// `tag` is the value given at registration, so one object can own several descriptors
    /// (a tunnel's client and upstream sockets) without a helper object per descriptor.
    func handle(events: EpollEvents, tag: UInt32)
}

/// Names one registration. The epoll token packs the slot index (low 32 bits) and a
/// generation (high 32 bits); a report whose generation no longer matches is dropped, so a
/// reused descriptor number can never receive an event meant for its previous owner.
public struct Registration: Hashable, Sendable {
    let slot: UInt32
    let generation: UInt32
    var token: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
}

/// One event-loop thread: its own selector (epoll, or a test's fake), an eventfd doorbell for
/// work from other threads, one timerfd driving a timer wheel, an injected clock and a
/// buffer pool.
///
/// Threading contract: everything except `execute`, `stop` and `isOnLoop` must be called on
/// the loop's own thread (inside a handler, a timer or an executed task). That confinement is
/// what makes the class `@unchecked Sendable`: the only state touched from other threads is
/// the task queue, behind a mutex.
public final class EventLoop: @unchecked Sendable {
    /// One registration: its handler, tag, and the generation that stale epoll reports are checked against.
    private struct Slot {
        var generation: UInt32 = 0
        var tag: UInt32 = 0
        var handler: LoopHandler?
    }

    private static let wakeupToken = UInt64.max
    private static let timerToken = UInt64.max - 1

    public let name: String
    public let clock: LoopClock
    public let buffers: BufferPool
    public let pipes = PipePool()
    private let selector: any Selector
    private let doorbell: EventFd
    private let timerFd: TimerFd
    private let tasks = Mutex<[@Sendable () -> Void]>([])
    private let stopping = Atomic<Bool>(false)
    private let threadID = Atomic<UInt>(0)
    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    private var wheel: TimerWheel
    private var armedWakeup: UInt64 = 0
    private var dueTimers: [(TimerTarget, UInt64)] = []
    private var runningTasks: [@Sendable () -> Void] = []
    /// The clock read once per iteration, right after epoll_wait: cheap timestamps for
    /// activity tracking on the hot path.
    public private(set) var iterationTime: Instant
    /// Stale-generation reports dropped (a registration went away while its event was queued).
    public private(set) var staleEvents = 0

    /// - Parameters:
    ///   - timerTick: the wheel's resolution; 50 ms suits timeouts, a load generator pacing
    ///     an open-loop rate wants 1 ms.
    ///   - selector: where readiness comes from; a new epoll instance unless a test brings
    ///     its own. The doorbell and the timerfd are registered in it too (under tokens no
    ///     registration can have), so a fake sees everything the loop asks for.
    public init(
        name: String, clock: LoopClock = MonotonicClock(), buffers: BufferPool = BufferPool(),
        timerTick: Duration = .milliseconds(50), selector: (any Selector)? = nil
    ) throws(IOError) {
        self.name = name
        self.clock = clock
        self.buffers = buffers
        if let selector { self.selector = selector } else { self.selector = try EpollSelector() }
        doorbell = try EventFd()
        timerFd = try TimerFd()
        iterationTime = clock.now()
        wheel = TimerWheel(start: iterationTime, tick: timerTick)
        try self.selector.add(doorbell.descriptor, events: [.readable, .edgeTriggered], token: Self.wakeupToken)
        try self.selector.add(timerFd.descriptor, events: [.readable, .edgeTriggered], token: Self.timerToken)
    }

    // MARK: registrations (loop thread only)

    /// Registers `fd` for `events`; `handler` is held strongly until `deregister`. Edge-triggered
    /// unless `levelTriggered` (for libcurl, which does not promise to drain a socket per call).
    public func register(
        _ fd: CInt, events: EpollEvents, handler: LoopHandler, tag: UInt32 = 0, levelTriggered: Bool = false
    ) throws(IOError) -> Registration {
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = UInt32(slots.count)
            slots.append(Slot())
        }
        slots[Int(slot)].handler = handler
        slots[Int(slot)].tag = tag
        let registration = Registration(slot: slot, generation: slots[Int(slot)].generation)
        do {
            try selector.add(fd, events: levelTriggered ? events : events.union(.edgeTriggered), token: registration.token)
        } catch {
            release(slot)
            throw error
        }
        return registration
    }

    /// Changes the interest set of a registered descriptor.
    public func modify(_ fd: CInt, events: EpollEvents, registration: Registration, levelTriggered: Bool = false)
        throws(IOError)
    {
        try selector.modify(fd, events: levelTriggered ? events : events.union(.edgeTriggered), token: registration.token)
    }

    /// Forgets a registration whose descriptor someone else owns and may already have closed
    /// (libcurl's sockets): removal from epoll is best effort and never traps.
    public func deregisterForeign(_ registration: Registration, fd: CInt) {
        guard Int(registration.slot) < slots.count, slots[Int(registration.slot)].generation == registration.generation
        else { return }
        selector.removeIfPresent(fd)
        release(registration.slot)
    }

    /// Forgets a registration. Pass `fd` only when the descriptor stays open; closing a
    /// descriptor removes it from epoll by itself. Events already queued for it are dropped.
    public func deregister(_ registration: Registration, fd: CInt? = nil) {
        guard Int(registration.slot) < slots.count,
            slots[Int(registration.slot)].generation == registration.generation
        else { return }
        if let fd { try? selector.remove(fd) }
        release(registration.slot)
    }

    private func release(_ slot: UInt32) {
        slots[Int(slot)].handler = nil
        slots[Int(slot)].generation &+= 1
        freeSlots.append(slot)
    }

    // MARK: timers (loop thread only)

    public func now() -> Instant { clock.now() }

    @discardableResult
    public func schedule(at deadline: Instant, target: TimerTarget, token: UInt64 = 0) -> TimerHandle {
        let handle = wheel.schedule(at: deadline, target: target, token: token)
        arm(wheel.wakeup(for: deadline))
        return handle
    }

    @discardableResult
    public func schedule(after delay: Duration, target: TimerTarget, token: UInt64 = 0) -> TimerHandle {
        schedule(at: clock.now() + delay, target: target, token: token)
    }

    public func cancel(_ handle: TimerHandle) { wheel.cancel(handle) }

    /// After firing: the wheel's next occupied slot (a scan, once per firing).
    private func rearmTimer() {
        guard let wakeup = wheel.nextWakeup(after: clock.now()) else { return }
        arm(wakeup)
    }

    /// Arms the timerfd only when the wanted wakeup is earlier than the armed one, because
    /// timerfd_settime is a syscall and the wheel changes on every tunnel. A new timer needs
    /// no scan: the wakeup it wants is its own tick boundary.
    private func arm(_ wakeup: Instant) {
        if armedWakeup == 0 || wakeup.nanoseconds < armedWakeup {
            armedWakeup = wakeup.nanoseconds
            try? timerFd.arm(deadline: wakeup.nanoseconds)
        }
    }

    /// Fires due timers (on timerfd expiry, or when an iteration finds the armed wakeup passed).
    private func fireTimers() {
        timerFd.drain()
        armedWakeup = 0
        wheel.advance(to: clock.now(), into: &dueTimers)
        for index in dueTimers.indices {
            let (target, token) = dueTimers[index]
            target.timerFired(token)
        }
        dueTimers.removeAll(keepingCapacity: true)
        rearmTimer()
    }

    // MARK: cross-thread

    /// Runs `task` on the loop thread soon. Safe from any thread; the doorbell is rung only
    /// when the queue goes from empty to non-empty.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        let wasEmpty = tasks.withLock { queue in
            queue.append(task)
            return queue.count == 1
        }
        if wasEmpty { doorbell.signal() }
    }

    /// Asks the loop to return from `run` after the current iteration. Safe from any thread.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        doorbell.signal()
    }

    /// True on the loop's own thread.
    public var isOnLoop: Bool { threadID.load(ordering: .relaxed) == Posix.currentThreadID() }

    // MARK: running

    /// Starts a thread that runs the loop until `stop`; `onExit` runs on that thread afterwards.
    public func start(onExit: (@Sendable () -> Void)? = nil) throws(IOError) {
        try Posix.spawnThread(name: name) { [self] in
            run()
            onExit?()
        }
    }

    /// Runs the loop on the calling thread until `stop`.
    public func run() {
        threadID.store(Posix.currentThreadID(), ordering: .relaxed)
        let capacity = 256
        let reports = UnsafeMutableBufferPointer<EpollReport>.allocate(capacity: capacity)
        defer { reports.deallocate() }
        while !stopping.load(ordering: .acquiring) {
            runOnce(reports: reports, timeout: -1)
        }
    }

    /// Runs one iteration on the calling thread, which becomes the loop's: with a fake
    /// selector, a test steps the loop report by report (and fires due timers by advancing a
    /// `ManualClock`) instead of starting a thread.
    public func runIteration(timeout: CInt = 0) {
        let reports = UnsafeMutableBufferPointer<EpollReport>.allocate(capacity: 64)
        defer { reports.deallocate() }
        runOnce(reports: reports, timeout: timeout)
    }

    /// One iteration: wait (up to `timeout` ms), dispatch reports, run queued tasks.
    private func runOnce(reports: UnsafeMutableBufferPointer<EpollReport>, timeout: CInt) {
        threadID.store(Posix.currentThreadID(), ordering: .relaxed)
        let count: Int
        do {
            count = try selector.wait(into: reports, timeout: timeout)
        } catch {
            preconditionFailure("epoll_wait failed: \(error)")
        }
        iterationTime = clock.now()
        var timersDue = false
        for index in 0..<count {
            let report = reports[index]
            switch report.data {
            case Self.wakeupToken:
                doorbell.drain()
            case Self.timerToken:
                timersDue = true
            default:
                let slot = Int(truncatingIfNeeded: report.data & 0xffff_ffff)
                let generation = UInt32(truncatingIfNeeded: report.data >> 32)
                guard slot < slots.count, slots[slot].generation == generation,
                    let handler = slots[slot].handler
                else {
                    staleEvents += 1
                    continue
                }
                handler.handle(events: EpollEvents(rawValue: report.events), tag: slots[slot].tag)
            }
        }
        if timersDue || (armedWakeup != 0 && iterationTime.nanoseconds >= armedWakeup) { fireTimers() }
        runTasks()
    }

    private func runTasks() {
        tasks.withLock { queue in swap(&queue, &runningTasks) }
        guard !runningTasks.isEmpty else { return }
        for task in runningTasks { task() }
        runningTasks.removeAll(keepingCapacity: true)
    }
}

/// Carries a loop-confined value through a `@Sendable` closure back to its loop.
/// The value is touched only on `loop`'s thread (checked in debug builds).
public struct LoopBound<Value>: @unchecked Sendable {
    private let storage: Value
    public let loop: EventLoop

    public init(_ value: Value, on loop: EventLoop) {
        self.storage = value
        self.loop = loop
    }

    public var value: Value {
        assert(loop.isOnLoop, "LoopBound value read off its loop")
        return storage
    }
}
