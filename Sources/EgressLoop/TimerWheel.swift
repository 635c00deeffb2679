/// Something a timer fires into. Called on the loop thread that owns the wheel.
public protocol TimerTarget: AnyObject {
    func timerFired(_ token: UInt64)
}

/// Identifies one scheduled timer so it can be cancelled; stale handles are harmless.
public struct TimerHandle: Hashable, Sendable {
    let index: Int32
    let generation: UInt32
}

/// A hashed timer wheel: O(1) schedule and cancel, expiry work proportional to the timers
/// that are due plus a visit per wheel turn for far ones. Pure (time is passed in), so tests
/// drive it with a manual clock; the loop arms one timerfd for the first slot that holds a timer.
///
/// Entries live in a slab with a free list, and slots hold slab indices, so steady-state
/// scheduling allocates nothing once the arrays have grown.
public struct TimerWheel {
    /// A scheduled timer in the slab; `target == nil` marks a free or cancelled entry.
    struct Entry {
        var deadline: UInt64
        var token: UInt64
        var generation: UInt32
        var target: TimerTarget?
    }

    public let tickNanoseconds: UInt64
    private var slots: [[Int32]]
    private var entries: [Entry] = []
    private var freeEntries: [Int32] = []
    private var lastTick: UInt64
    public private(set) var count = 0

    public init(start: Instant, tick: Duration = .milliseconds(50), slotCount: Int = 512) {
        tickNanoseconds = max(1, tick.nanosecondsClamped)
        slots = Array(repeating: [], count: max(1, slotCount))
        lastTick = start.nanoseconds / tickNanoseconds
    }

    /// Schedules `target.timerFired(token)` at `deadline` (or at the next advance if already due).
    public mutating func schedule(at deadline: Instant, target: TimerTarget, token: UInt64) -> TimerHandle {
        let index: Int32
        if let free = freeEntries.popLast() {
            index = free
            entries[Int(index)].deadline = deadline.nanoseconds
            entries[Int(index)].token = token
            entries[Int(index)].target = target
        } else {
            index = Int32(entries.count)
            entries.append(Entry(deadline: deadline.nanoseconds, token: token, generation: 0, target: target))
        }
        // The slot visited when time first reaches the deadline: the tick boundary at or
        // after it (rounding down would park it in a slot visited just before it is due,
        // for a whole turn). A deadline in the past goes into the next slot to be visited.
        let tick = max((deadline.nanoseconds + tickNanoseconds - 1) / tickNanoseconds, lastTick + 1)
        slots[Int(tick % UInt64(slots.count))].append(index)
        count += 1
        return TimerHandle(index: index, generation: entries[Int(index)].generation)
    }

    /// Cancels a timer; a handle whose timer already fired or was cancelled is ignored.
    public mutating func cancel(_ handle: TimerHandle) {
        let index = Int(handle.index)
        guard index < entries.count, entries[index].generation == handle.generation,
            entries[index].target != nil
        else { return }
        release(index)
    }

    private mutating func release(_ index: Int) {
        entries[index].target = nil
        entries[index].generation &+= 1
        freeEntries.append(Int32(index))
        count -= 1
    }

    /// Moves the wheel to `now` and appends every due timer to `due` (target and token), in
    /// no particular order. The caller fires them after this returns, so a firing timer may
    /// schedule or cancel others without touching a wheel that is mid-scan.
    public mutating func advance(to now: Instant, into due: inout [(TimerTarget, UInt64)]) {
        let nowTick = now.nanoseconds / tickNanoseconds
        guard nowTick > lastTick else { return }
        let steps = min(nowTick - lastTick, UInt64(slots.count))
        for step in 1...steps {
            let slot = Int((lastTick + step) % UInt64(slots.count))
            var kept = 0
            for position in slots[slot].indices {
                let index = Int(slots[slot][position])
                let entry = entries[index]
                guard let target = entry.target else { continue }  // cancelled; slot forgets it
                if entry.deadline <= now.nanoseconds {
                    due.append((target, entry.token))
                    release(index)
                } else {
                    slots[slot][kept] = Int32(index)
                    kept += 1
                }
            }
            slots[slot].removeLast(slots[slot].count - kept)
        }
        lastTick = nowTick
    }

    /// The tick boundary at which a timer due at `deadline` is first looked at.
    public func wakeup(for deadline: Instant) -> Instant {
        Instant(nanoseconds: max((deadline.nanoseconds + tickNanoseconds - 1) / tickNanoseconds, lastTick + 1) * tickNanoseconds)
    }

    /// When the loop should next look at the wheel, or nil when it is empty: the boundary of
    /// the first slot ahead that holds a live timer. Not every tick: with a 1 ms tick and one
    /// timer 55 s away that is one wakeup per turn (512 ms), not a thousand a second.
    /// Cancelled entries stay in their slots until visited (cancel is O(1)); they are skipped
    /// here, else a timer that is cancelled and rescheduled on every change (curl's) would
    /// leave a trail of slots that each cost a wakeup. A slot whose live timers belong to a
    /// later turn still costs one, never a late timer. O(slots + entries) at worst; the loop
    /// calls it after firing, not per schedule.
    public func nextWakeup(after now: Instant) -> Instant? {
        guard count > 0 else { return nil }
        let from = max(now.nanoseconds / tickNanoseconds, lastTick) + 1
        let count = UInt64(slots.count)
        for step in 0..<count {
            let tick = from + step
            let boundary = tick * tickNanoseconds
            // Live, and really this slot's: a cancelled entry's slab index may already serve a
            // timer parked in another slot. Due by this boundary, or this slot in a later turn.
            let wanted = slots[Int(tick % count)].contains { index in
                let entry = entries[Int(index)]
                guard entry.target != nil else { return false }
                return entry.deadline <= boundary || ((entry.deadline + tickNanoseconds - 1) / tickNanoseconds) % count == tick % count
            }
            if wanted { return Instant(nanoseconds: boundary) }
        }
        return Instant(nanoseconds: from * tickNanoseconds)
    }
}
