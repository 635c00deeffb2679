import Testing

@testable import ActionsGatewayController

/// The wakes' queue times (issue 18, item 1): matched by repository, run and job name, taken
/// once, bounded and expiring on a hand-driven clock.
@Suite struct QueuedTimesTests {
    @Test func aNotedJobIsTakenOnceByItsNames() {
        var times = QueuedTimes()
        times.note(repository: "Acme/Widgets", runID: 77, jobName: "build (linux, 1)", queuedAt: 1_000, now: .seconds(1))
        #expect(times.take(repository: "acme/widgets", runID: 77, jobName: "build (linux, 2)", now: .seconds(2)) == nil, "another matrix job")
        #expect(times.take(repository: "acme/widgets", runID: 78, jobName: "build (linux, 1)", now: .seconds(2)) == nil, "another run")
        #expect(times.take(repository: "acme/widgets", runID: 77, jobName: "build (linux, 1)", now: .seconds(2)) == 1_000,
                "repositories compare without case, as GitHub's do")
        #expect(times.take(repository: "acme/widgets", runID: 77, jobName: "build (linux, 1)", now: .seconds(3)) == nil, "taken once")
        times.note(repository: nil, runID: 77, jobName: "build", queuedAt: 5, now: .seconds(3))
        #expect(times.count == 0, "a wake without the names cannot be matched, so it is not kept")
    }

    @Test func entriesExpireAndTheOldestGiveWay() {
        var times = QueuedTimes()
        times.note(repository: "a/b", runID: 1, jobName: "j", queuedAt: 10, now: .seconds(0))
        times.note(repository: "a/b", runID: 2, jobName: "j", queuedAt: 20, now: QueuedTimes.lifetime - .seconds(1))
        #expect(times.take(repository: "a/b", runID: 1, jobName: "j", now: QueuedTimes.lifetime) == nil, "expired")
        #expect(times.take(repository: "a/b", runID: 2, jobName: "j", now: QueuedTimes.lifetime) == 20)
        for run in 0..<(QueuedTimes.capacity + 5) {
            times.note(repository: "a/b", runID: Int64(run), jobName: "j", queuedAt: Int64(run), now: .seconds(Int64(run) / 100))
        }
        #expect(times.count == QueuedTimes.capacity)
        #expect(times.take(repository: "a/b", runID: 0, jobName: "j", now: .seconds(200)) == nil, "the oldest went first")
        #expect(times.take(repository: "a/b", runID: Int64(QueuedTimes.capacity + 4), jobName: "j", now: .seconds(200)) != nil)
    }

    @Test func aJobNotedAgainKeepsItsNewerTime() {
        var times = QueuedTimes()
        times.note(repository: "a/b", runID: 1, jobName: "j", queuedAt: 10, now: .seconds(0))
        times.note(repository: "a/b", runID: 1, jobName: "j", queuedAt: 11, now: .seconds(100))
        // The first note's expiry must not take the second's entry with it.
        #expect(times.take(repository: "a/b", runID: 1, jobName: "j", now: QueuedTimes.lifetime + .seconds(50)) == 11)
    }
}
