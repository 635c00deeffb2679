import EgressLoop
import Testing

final class Recorder: TimerTarget {
    var fired: [UInt64] = []
    func timerFired(_ token: UInt64) { fired.append(token) }
}

@Suite struct TimerWheelTests {
    let clock = ManualClock()

    func advance(_ wheel: inout TimerWheel, by duration: Duration) {
        clock.advance(by: duration)
        var due: [(TimerTarget, UInt64)] = []
        wheel.advance(to: clock.now(), into: &due)
        for (target, token) in due { target.timerFired(token) }
    }

    @Test func firesAtDeadlineNotBefore() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(10), slotCount: 8)
        let recorder = Recorder()
        _ = wheel.schedule(at: clock.now() + .milliseconds(35), target: recorder, token: 7)
        advance(&wheel, by: .milliseconds(30))
        #expect(recorder.fired.isEmpty)
        advance(&wheel, by: .milliseconds(10))
        #expect(recorder.fired == [7])
        #expect(wheel.count == 0)
    }

    @Test func timersBeyondOneTurnWaitForTheirDeadline() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(10), slotCount: 8)
        let recorder = Recorder()
        _ = wheel.schedule(at: clock.now() + .milliseconds(250), target: recorder, token: 1)
        for _ in 0..<24 { advance(&wheel, by: .milliseconds(10)) }
        #expect(recorder.fired.isEmpty)
        advance(&wheel, by: .milliseconds(10))
        #expect(recorder.fired == [1])
    }

    @Test func scheduleAfterLongIdleGapFiresOnTime() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(50), slotCount: 512)
        let recorder = Recorder()
        clock.advance(by: .seconds(3600))  // nobody advanced the wheel for an hour
        _ = wheel.schedule(at: clock.now() + .milliseconds(100), target: recorder, token: 3)
        advance(&wheel, by: .milliseconds(50))
        #expect(recorder.fired.isEmpty)
        advance(&wheel, by: .milliseconds(50))
        advance(&wheel, by: .milliseconds(50))
        #expect(recorder.fired == [3])
    }

    @Test func cancelledTimerNeverFiresAndStaleHandleIsHarmless() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(10), slotCount: 8)
        let recorder = Recorder()
        let handle = wheel.schedule(at: clock.now() + .milliseconds(20), target: recorder, token: 1)
        wheel.cancel(handle)
        #expect(wheel.count == 0)
        // The slab entry is reused; cancelling the old handle must not cancel the new timer.
        _ = wheel.schedule(at: clock.now() + .milliseconds(20), target: recorder, token: 2)
        wheel.cancel(handle)
        advance(&wheel, by: .milliseconds(30))
        #expect(recorder.fired == [2])
    }

    @Test func pastDeadlineFiresOnNextAdvance() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(10), slotCount: 8)
        let recorder = Recorder()
        clock.advance(by: .milliseconds(100))
        var due: [(TimerTarget, UInt64)] = []
        wheel.advance(to: clock.now(), into: &due)
        _ = wheel.schedule(at: Instant(nanoseconds: 1), target: recorder, token: 9)
        advance(&wheel, by: .milliseconds(10))
        #expect(recorder.fired == [9])
    }

    @Test func manyTimersFireInTheirOwnTicks() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(1), slotCount: 16)
        let recorder = Recorder()
        for index in 0..<100 { _ = wheel.schedule(at: clock.now() + .milliseconds(Int64(index + 1)), target: recorder, token: UInt64(index)) }
        for step in 1...100 {
            advance(&wheel, by: .milliseconds(1))
            #expect(recorder.fired.count == step)
        }
        #expect(recorder.fired.sorted() == Array(0..<100))
        #expect(wheel.nextWakeup(after: clock.now()) == nil)
    }

    /// A far timer is looked at once per turn, not every tick (an idle pool with a 1 ms tick
    /// and a 55 s transfer timeout woke a thousand times a second), and never fires late.
    @Test func aFarTimerWakesOncePerTurnAndFiresOnTime() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(1), slotCount: 512)
        let recorder = Recorder()
        let deadline = clock.now() + .seconds(55)
        _ = wheel.schedule(at: deadline, target: recorder, token: 1)
        var wakeups = 0
        while recorder.fired.isEmpty {
            guard let next = wheel.nextWakeup(after: clock.now()) else {
                Issue.record("a pending timer has no wakeup")
                return
            }
            #expect(next > clock.now())
            #expect(next <= wheel.wakeup(for: deadline), "never past the timer's own tick")
            wakeups += 1
            advance(&wheel, by: next.since(clock.now()))
        }
        #expect(clock.now().since(deadline) < .milliseconds(1), "fired within its tick")
        #expect(wakeups <= 55_000 / 512 + 2, "one wakeup per 512 ms turn, not per tick: \(wakeups)")
    }

    @Test func theNextWakeupIsTheFirstOccupiedSlot() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(10), slotCount: 64)
        let recorder = Recorder()
        _ = wheel.schedule(at: clock.now() + .milliseconds(200), target: recorder, token: 1)
        #expect(wheel.nextWakeup(after: clock.now()) == clock.now() + .milliseconds(200))
        let near = wheel.schedule(at: clock.now() + .milliseconds(45), target: recorder, token: 2)
        #expect(wheel.nextWakeup(after: clock.now()) == clock.now() + .milliseconds(50), "the near timer's tick boundary")
        wheel.cancel(near)
        #expect(wheel.nextWakeup(after: clock.now()) == clock.now() + .milliseconds(200), "a cancelled timer's slot is skipped")
        advance(&wheel, by: .milliseconds(50))
        #expect(recorder.fired.isEmpty)
        #expect(wheel.nextWakeup(after: clock.now()) == clock.now() + .milliseconds(150))
    }

    /// curl's one timer is cancelled and rescheduled on every change: the trail it leaves in the
    /// wheel must not wake the loop at each slot it passed through.
    @Test func aRescheduledTimerLeavesNoTrailOfWakeups() {
        var wheel = TimerWheel(start: clock.now(), tick: .milliseconds(1), slotCount: 512)
        let recorder = Recorder()
        var handle = wheel.schedule(at: clock.now() + .milliseconds(2), target: recorder, token: 1)
        for step in 3..<400 {
            wheel.cancel(handle)
            handle = wheel.schedule(at: clock.now() + .milliseconds(Int64(step)), target: recorder, token: 1)
        }
        #expect(wheel.count == 1)
        #expect(wheel.nextWakeup(after: clock.now()) == clock.now() + .milliseconds(399))
    }
}
