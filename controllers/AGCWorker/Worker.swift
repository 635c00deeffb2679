import EgressPosix
import Foundation
import GitHubKit

/// Why the worker could not start its runner: a corrupt or missing job Secret, a runner home
/// it cannot write. Exit code 2, a line on stderr, never a crash, and never the blob itself.
public struct WorkerError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The JIT config's three runner files (`GitHubKit.JITConfigFiles`), with the worker's error type.
public enum JITFiles {
    public static func decode(_ blob: String) throws(WorkerError) -> [String: [UInt8]] {
        do {
            return try JITConfigFiles.decode(blob)
        } catch {
            throw WorkerError(error.description)
        }
    }
}

/// The one message a classic `Runner.Worker spawnclient 3 4` reads from fd 3 (reference 3.1):
/// uint32 LE message type (1: a new job), uint32 LE byte length, then the payload JSON in UTF-16LE.
public enum JobFrame {
    public static func encode(_ payload: String, type: UInt32 = 1) -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(payload.utf16.count * 2)
        for unit in payload.utf16 { body += [UInt8(unit & 0xff), UInt8(unit >> 8)] }
        return littleEndian(type) + littleEndian(UInt32(body.count)) + body
    }

    static func littleEndian(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xff) } }
}

/// How the worker's own exit code follows the runner's (spec section 6): 100 and 101 (the
/// runner's "done, do not restart me") are success; a signalled child is 128+signal; others pass.
public enum WorkerExit {
    public static func code(_ status: ExitStatus) -> Int32 {
        switch status {
        case .exited(100), .exited(101): 0
        case .exited(let code): code
        case .signalled(let signal): 128 + signal
        }
    }
}

/// What the worker reads from its environment (the pod builder sets it).
public struct WorkerSettings: Sendable, Equatable {
    /// `scaleset` or `classic`.
    public var mode: String
    public var runnerHome: String
    public var secretsDirectory: String
    /// SIGTERM to the runner, then SIGKILL after this.
    public var shutdownGrace: Duration
    /// Extra CA certificates (PEM) the runner must trust: the proxy's and GitHub's.
    public var extraCAs: [String]
    public var systemCAs: String

    public static func from(_ environment: [String: String]) throws(WorkerError) -> WorkerSettings {
        let mode = environment["AGC_WORKER_MODE"] ?? "scaleset"
        guard mode == "scaleset" || mode == "classic" else { throw WorkerError("AGC_WORKER_MODE must be scaleset or classic, not \(mode)") }
        let graceText = environment["WORKER_SHUTDOWN_GRACE"] ?? "25s"
        guard let grace = parseSeconds(graceText), grace <= 3600 else {
            throw WorkerError("WORKER_SHUTDOWN_GRACE must be seconds or a duration such as 25s (at most 1h), not \(graceText)")
        }
        return WorkerSettings(
            mode: mode, runnerHome: environment["RUNNER_HOME"] ?? "/home/runner",
            secretsDirectory: environment["AGC_SECRETS_DIR"] ?? "/run/secrets/actions-gateway", shutdownGrace: .seconds(grace),
            extraCAs: ["PROXY_CA_CERT_PATH", "GITHUB_CA_CERT_PATH"].compactMap { environment[$0] }.filter { !$0.isEmpty },
            systemCAs: environment["AGC_SYSTEM_CA_BUNDLE"] ?? "/etc/ssl/certs/ca-certificates.crt")
    }

    /// `25`, `25s`, `2m`, `1h`: whole seconds.
    static func parseSeconds(_ text: String) -> Int64? {
        let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600]
        var digits = Substring(text)
        var scale: Int64 = 1
        if let last = text.last, let unit = units[last] {
            digits = digits.dropLast()
            scale = unit
        }
        guard !digits.isEmpty, digits.count <= 6, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int64(digits) else { return nil }
        return value * scale
    }
}
