import Foundation

/// Helpers shared by the Swift test targets that drive real programs: child processes, the
/// Python fakes in Tests/fakes, and polling with a deadline.

/// The repository root (for Tests/fakes and built binaries).
public let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A child process the test owns; stdin closed and the process killed when the value goes away.
public final class Child: @unchecked Sendable {
    public let process = Process()
    public let stdout = Pipe()
    public let stderr = Pipe()
    public let stdin = Pipe()

    public init(_ executable: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = stdin
        try process.run()
    }

    /// Reads stdout (or stderr) line by line until `match` returns a value.
    public func firstLine<T>(fromStderr: Bool = false, _ match: (String) -> T?) -> T? {
        let handle = (fromStderr ? stderr : stdout).fileHandleForReading
        var pending = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { return nil }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...newline)
                if let value = match(line) { return value }
            }
        }
    }

    /// SIGKILL, because a child spawned from a Swift concurrency thread inherits that thread's
    /// blocked signals (SIGTERM among them) and would ignore `terminate()`.
    deinit {
        try? stdin.fileHandleForWriting.close()
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// A Python fake from Tests/fakes that prints `{"port": N}` first and serves until its stdin closes.
public final class PythonFake: Sendable {
    public let child: Child
    public let port: Int
    public var url: String { "http://127.0.0.1:\(port)" }

    public init(_ script: String, _ arguments: [String] = []) throws {
        child = try Child("/usr/bin/env", ["python3", repositoryRoot.path + "/Tests/fakes/" + script] + arguments)
        guard let port = child.firstLine({ jsonField($0, "port").flatMap(Int.init) }) else {
            throw TestFailure("\(script) did not start")
        }
        self.port = port
    }
}

/// A string or integer field of a one-line JSON object.
public func jsonField(_ line: String, _ key: String) -> String? {
    guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
    if let value = object[key] as? String { return value }
    if let value = object[key] as? Int { return String(value) }
    return nil
}

/// Runs a program to completion; throws unless it exits 0.
public func runToCompletion(_ executable: String, _ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardError = FileHandle.nullDevice
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    if process.terminationStatus != 0 { throw TestFailure("\(executable) exited \(process.terminationStatus)") }
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Polls `condition` until true or the deadline passes (short sleeps between polls; no test
/// waits a fixed time for a condition).
public func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return false
}

/// A fresh RSA key pair (openssl genrsa) and a GitHub App credential directory (appId,
/// installationId, privateKey, as the mounted Secret has them), per test.
public struct AppFixture: Sendable {
    public let directory: String
    public let publicKey: String

    public init(appID: String = "424242", installationID: String = "99") throws {
        directory = NSTemporaryDirectory() + "gh-app-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        publicKey = directory + "/public.pem"
        try runToCompletion("/usr/bin/openssl", ["genrsa", "-out", directory + "/privateKey", "2048"])
        try runToCompletion("/usr/bin/openssl", ["rsa", "-in", directory + "/privateKey", "-pubout", "-out", publicKey])
        try (appID + "\n").write(toFile: directory + "/appId", atomically: true, encoding: .utf8)
        try installationID.write(toFile: directory + "/installationId", atomically: true, encoding: .utf8)
    }
}
