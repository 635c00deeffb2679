import Dispatch
import EgressLoop
import EgressPosix
import Logging

/// How every executable starts and stops, so the proxy, the GMC and the AGC behave alike:
///
/// 1. `begin`, first thing in main, before any thread exists: the lifecycle signals (TERM,
///    INT, HUP) are blocked in every thread, so they arrive only on a signalfd that a loop
///    watches, never as asynchronous handlers; SIGPIPE is ignored; logging is JSON lines on
///    stderr at the chosen level.
/// 2. The process starts its admin endpoint and its work.
/// 3. On TERM or INT it stops in order: stop taking new work (readiness goes false), let the
///    work in flight end within its budget, then close the admin endpoint and exit. The proxy
///    runs that as its drain on its admin loop; controllers await `waitForStop` and cancel
///    their work (a leader's Lease then expires for the next replica).
public enum ProcessLifecycle {
    /// The entry of an executable whose work is async (the GMC, the AGC): blocks the
    /// lifecycle signals on the main thread, runs `body` on a task and exits 0 when it returns
    /// (`body` exits by itself on a usage error).
    ///
    /// Why not `static func main() async`: on Linux the async main parks the main thread in
    /// libdispatch's `dispatch_main`, which ends in `sigsuspend` with an *empty* mask. That
    /// thread then takes SIGTERM with its default action, death, however carefully every
    /// other thread blocks it: no drain, no Lease released, no session deleted (measured:
    /// exit status 143, main thread `SigBlk: 0`). Here the main thread blocks the signals
    /// before any other thread exists, so every thread inherits the mask, and waits on a
    /// semaphore instead, where a blocked signal stays pending for the signalfd.
    public static func runMain(_ body: @escaping @Sendable () async -> Void) -> Never {
        Signals.block(Signals.lifecycle)
        Posix.limitMallocArenas(2)
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            await body()
            done.signal()
        }
        done.wait()
        Posix.exit(0)
    }

    /// Step 1. Throws for an unknown log level (a usage error, before anything started).
    public static func begin(label: String, logLevel: String) throws(LifecycleError) -> Logger {
        Signals.block(Signals.lifecycle)
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw LifecycleError(description: "unknown log level \(logLevel) (trace, debug, info, notice, warning, error, critical)")
        }
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        return Logger(label: label)
    }

    /// Suspends until SIGTERM or SIGINT; SIGHUP calls `onHangup` (on the watcher's loop thread).
    /// The signals are read on a loop thread of its own, never on a Swift concurrency thread,
    /// which must not block.
    public static func waitForStop(onHangup: @escaping @Sendable () -> Void = {}) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do {
                let loop = try EventLoop(name: "signals")
                let watcher = try SignalWatcher(loop: loop, signals: Signals.lifecycle) { signal in
                    if signal == Signals.hangup { onHangup() } else { loop.stop() }
                }
                let held = LoopBound(watcher, on: loop)
                try loop.start(onExit: {
                    _ = held
                    continuation.resume()
                })
            } catch {
                continuation.resume()
            }
        }
    }
}

/// A lifecycle step that could not start (bad flag).
public struct LifecycleError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
