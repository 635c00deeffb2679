import Foundation
@testable import KubeKit
import Synchronization
import Testing

/// The exec-plugin token cache: one run at a time, never under the lock, valid tokens served
/// while a refresh runs, failures not retried per request.
@Suite struct ExecCredentialTests {
    /// A plugin double: counts runs and, while `gate` is closed, blocks like a slow plugin.
    final class Plugin: Sendable {
        let runs = Mutex(0)
        let gate = Mutex(true)
        let answer: Mutex<Result<(String, Date?), ExecPlugin.Failure>>

        init(_ answer: Result<(String, Date?), ExecPlugin.Failure>) { self.answer = Mutex(answer) }

        func run() throws -> (token: String, expires: Date?) {
            let run = runs.withLock { $0 += 1; return $0 }
            let deadline = Date().addingTimeInterval(10)
            while !gate.withLock({ $0 }) && Date() < deadline { usleep(1000) }
            let (token, expires) = try answer.withLock { $0 }.get()
            return ("\(token)-\(run)", expires)
        }
    }

    static func waitUntil(_ condition: () -> Bool) async throws {
        let deadline = Date().addingTimeInterval(10)
        while !condition() {
            guard Date() < deadline else { Issue.record("condition not met within 10 s"); return }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    @Test func concurrentCallersShareOneRun() async throws {
        let plugin = Plugin(.success(("t", nil)))
        plugin.gate.withLock { $0 = false }
        let clock = ManualControllerClock()
        let cache = ExecTokenCache(run: { try plugin.run() }, now: { clock.wallNow() })
        let tokens = Task {
            await withTaskGroup(of: String?.self) { group in
                for _ in 0..<20 { group.addTask { await cache.token() } }
                return await group.reduce(into: [String?]()) { $0.append($1) }
            }
        }
        try await Self.waitUntil { plugin.runs.withLock { $0 } == 1 }
        plugin.gate.withLock { $0 = true }
        #expect(await tokens.value == Array(repeating: "t-1", count: 20))
        #expect(plugin.runs.withLock { $0 } == 1)
        #expect(await cache.token() == "t-1", "no expiry: kept")
        #expect(plugin.runs.withLock { $0 } == 1)
    }

    @Test func aTokenNearExpiryIsServedWhileTheRefreshRuns() async throws {
        let clock = ManualControllerClock()
        let plugin = Plugin(.success(("t", clock.wallNow().addingTimeInterval(60))))
        let cache = ExecTokenCache(run: { try plugin.run() }, now: { clock.wallNow() })
        #expect(await cache.token() == "t-1")
        clock.advance(by: .seconds(55))  // 5 s left: refresh, but do not wait for it
        plugin.gate.withLock { $0 = false }
        #expect(await cache.token() == "t-1")
        try await Self.waitUntil { plugin.runs.withLock { $0 } == 2 }
        #expect(await cache.token() == "t-1", "a second caller neither waits nor starts another run")
        // The refresh's token is good for an hour (else it too is within the refresh margin, and
        // the next call starts run 3 behind it: a race with the count below).
        let later = clock.wallNow().addingTimeInterval(3600)
        plugin.answer.withLock { $0 = .success(("t", later)) }
        plugin.gate.withLock { $0 = true }
        var token: String?
        let deadline = Date().addingTimeInterval(10)
        repeat { token = await cache.token() } while token != "t-2" && Date() < deadline
        #expect(token == "t-2")
        #expect(plugin.runs.withLock { $0 } == 2)
    }

    @Test func aFailingPluginIsNotRerunOnEveryRequest() async throws {
        let clock = ManualControllerClock()
        let plugin = Plugin(.failure(ExecPlugin.Failure(description: "exit 1")))
        let cache = ExecTokenCache(run: { try plugin.run() }, now: { clock.wallNow() })
        #expect(await cache.token() == nil)
        #expect(await cache.token() == nil)
        #expect(plugin.runs.withLock { $0 } == 1)
        clock.advance(by: .seconds(6))
        plugin.answer.withLock { $0 = .success(("ok", nil)) }
        #expect(await cache.token() == "ok-2")
    }

    @Test func aHungPluginIsKilled() throws {
        let plugin = ExecPlugin(command: "sleep", arguments: ["30"], environment: [:], apiVersion: "client.authentication.k8s.io/v1")
        #expect(throws: ExecPlugin.Failure.self) { try plugin.credential(timeout: .milliseconds(200)) }
    }
}
