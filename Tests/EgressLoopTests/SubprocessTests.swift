import EgressPosix
import Glibc
import Testing

/// Child processes through posix_spawn: output, exit status, the deadline, the signal state a
/// child starts with, and that a dropped child is reaped.
@Suite struct SubprocessTests {
    @Test func collectsOutputAndExitStatus() throws {
        let result = try Posix.run("sh", arguments: ["-c", "printf 'out'; printf 'err' >&2; exit 3"],
                                   environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(10))
        #expect(String(decoding: result.output, as: UTF8.self) == "out")
        #expect(result.status == .exited(3))
        #expect(!result.timedOut)
    }

    @Test func theEnvironmentIsExactlyWhatWasGiven() throws {
        let result = try Posix.run("/usr/bin/env", arguments: [], environment: ["ONLY": "this"], timeout: .seconds(10))
        #expect(String(decoding: result.output, as: UTF8.self) == "ONLY=this\n")
    }

    @Test func aHungChildIsKilledAtTheDeadline() throws {
        let started = Posix.monotonicNanoseconds()
        let result = try Posix.run("sleep", arguments: ["30"], environment: ["PATH": "/usr/bin:/bin"], timeout: .milliseconds(200))
        #expect(result.timedOut)
        #expect(result.status == .signalled(SIGKILL))
        #expect(Posix.monotonicNanoseconds() - started < 20_000_000_000, "returned long before the child's own 30 s")
    }

    @Test func outputPastTheLimitIsDropped() throws {
        let result = try Posix.run("head", arguments: ["-c", "100000", "/dev/zero"], environment: ["PATH": "/usr/bin:/bin"],
                                   timeout: .seconds(10), outputLimit: 1000)
        #expect(result.output.count == 1000)
        #expect(result.truncated)
        #expect(result.status == .exited(0))
    }

    @Test func aMissingProgramIsAnError() {
        #expect(throws: IOError.self) {
            try Posix.run("no-such-program-here", arguments: [], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(5))
        }
    }

    /// Our executables block TERM for their signalfd; a child must not inherit that, or a
    /// worker's runner could never be stopped.
    @Test func theChildStartsWithNoBlockedSignals() throws {
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        let result = try Posix.run("grep", arguments: ["SigBlk", "/proc/self/status"], environment: ["PATH": "/usr/bin:/bin"],
                                   timeout: .seconds(10))
        #expect(String(decoding: result.output, as: UTF8.self) == "SigBlk:\t0000000000000000\n")
    }

    @Test func aDroppedChildIsKilledAndReaped() throws {
        var pid: pid_t = 0
        do {
            let child = try ChildProcess.spawn("sleep", arguments: ["30"], environment: ["PATH": "/usr/bin:/bin"])
            pid = child.pid
            #expect(kill(pid, 0) == 0)
        }
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "no process and no zombie left under that pid")
    }

    @Test func childDescriptorsAreTheOnesNamed() throws {
        var pipe = try ChildPipe(ours: .read)
        var child = try ChildProcess.spawn("sh", arguments: ["-c", "echo to-four >&4"], environment: ["PATH": "/usr/bin:/bin"],
                                           descriptors: [4: pipe.writeEnd])
        pipe.closeWrite()
        #expect(child.wait() == .exited(0))
        var collected: [UInt8] = []
        while let bytes = try pipe.readAvailable(), !bytes.isEmpty { collected += bytes }
        #expect(String(decoding: collected, as: UTF8.self) == "to-four\n")
    }
}
