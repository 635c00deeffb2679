import EgressPosix
import Foundation

/// `agc worker`, PID 1 of a worker pod's `runner` container (spec/agc.md section 6): prepares
/// the runner from the mounted job Secret and runs it as its child, relaying TERM and INT to it
/// (SIGKILL after the grace period) and exiting with the runner's code mapped. Single-threaded:
/// one poll over the signalfd, the child's pidfd and, for classic, the job pipes.
public enum WorkerSupervisor {
    /// Prepares and runs the runner; the process's exit code. Errors before the child starts
    /// print one line (never the blob) and give 2.
    public static func main(environment: [String: String]) -> Int32 {
        // Before anything else, so a TERM that arrives while the runner starts is relayed, not lost.
        Signals.block([SIGTERM, SIGINT])
        do {
            let settings = try WorkerSettings.from(environment)
            let signals: SignalFd
            do { signals = try SignalFd(signals: [SIGTERM, SIGINT]) } catch { throw WorkerError("signalfd: \(error)") }
            let prepared = try prepare(settings, environment: environment)
            return try supervise(prepared, settings: settings, signals: signals)
        } catch let error as WorkerError {
            Posix.writeStderr(Array("agc worker: \(error.description)\n".utf8))
            return 2
        } catch {
            Posix.writeStderr(Array("agc worker: \(error)\n".utf8))
            return 2
        }
    }

    /// What the runner is started with.
    struct Prepared {
        var executable: String
        var arguments: [String]
        var environment: [String: String]
        /// Classic: the frame for fd 3.
        var frame: [UInt8]?
    }

    static func read(_ path: String, _ what: String) throws(WorkerError) -> [UInt8] {
        guard let bytes = Posix.readSmallFile(path, limit: 16 << 20) else { throw WorkerError("cannot read the job Secret's \(what) at \(path)") }
        return bytes
    }

    /// Writes the runner's files (0600) and the CA bundle; builds the command line.
    static func prepare(_ settings: WorkerSettings, environment: [String: String]) throws(WorkerError) -> Prepared {
        let blob = String(decoding: try read(settings.secretsDirectory + "/jitconfig", "jitconfig"), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        for (name, content) in try JITFiles.decode(blob) {
            let path = settings.runnerHome + "/" + name
            guard FileWriter.write(path, content) else { throw WorkerError("cannot write \(path)") }
            try? FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        }
        var env = environment
        var bundle = Posix.readSmallFile(settings.systemCAs, limit: 16 << 20) ?? []
        for extra in settings.extraCAs {
            guard let pem = Posix.readSmallFile(extra, limit: 1 << 20) else { throw WorkerError("cannot read the CA certificate \(extra)") }
            if bundle.last.map({ $0 != 10 }) ?? false { bundle.append(10) }
            bundle += pem
        }
        if !settings.extraCAs.isEmpty {
            let path = settings.runnerHome + "/.agc-ca-bundle.pem"
            guard FileWriter.write(path, bundle) else { throw WorkerError("cannot write \(path)") }
            env["SSL_CERT_FILE"] = path
        }
        // The runner needs none of the wrapper's own settings; the blob is a credential.
        for key in ["AGC_WORKER_MODE", "AGC_SECRETS_DIR", "WORKER_SHUTDOWN_GRACE", "AGC_SYSTEM_CA_BUNDLE"] { env[key] = nil }
        if settings.mode == "scaleset" {
            return Prepared(executable: settings.runnerHome + "/run.sh", arguments: ["--jitconfig", blob], environment: env, frame: nil)
        }
        let payload = String(decoding: try read(settings.secretsDirectory + "/payload", "payload"), as: UTF8.self)
        return Prepared(executable: settings.runnerHome + "/bin/Runner.Worker", arguments: ["spawnclient", "3", "4"], environment: env,
                        frame: JobFrame.encode(payload))
    }

    /// Runs the child to its end: the frame written to fd 3 (then closed), fd 4 drained, TERM
    /// and INT relayed, SIGKILL once the grace after the first relayed signal has passed.
    static func supervise(_ prepared: Prepared, settings: WorkerSettings, signals: borrowing SignalFd) throws(WorkerError) -> Int32 {
        var toChild: ChildPipe?
        var fromChild: ChildPipe?
        var descriptors: [CInt: CInt] = [:]
        if prepared.frame != nil {
            do {
                toChild = try ChildPipe(ours: .write)
                fromChild = try ChildPipe(ours: .read)
            } catch { throw WorkerError("pipe: \(error)") }
            descriptors = [3: toChild?.readEnd ?? -1, 4: fromChild?.writeEnd ?? -1]
        }
        var child: ChildProcess
        do {
            child = try ChildProcess.spawn(prepared.executable, arguments: prepared.arguments, environment: prepared.environment,
                                           descriptors: descriptors, directory: settings.runnerHome)
        } catch { throw WorkerError("cannot start \(prepared.executable): \(error)") }
        toChild?.closeRead()
        fromChild?.closeWrite()
        var pending = ArraySlice(prepared.frame ?? [])
        var killAt: UInt64?
        let graceNanoseconds = UInt64(max(0, settings.shutdownGrace.components.seconds)) * 1_000_000_000
        while true {
            var entries: [(descriptor: CInt, events: Int16)] = [(signals.descriptor, Posix.readable), (child.exitDescriptor, Posix.readable)]
            let writing = toChild != nil && !pending.isEmpty
            if writing, let descriptor = toChild?.writeEnd { entries.append((descriptor, Posix.writable)) }
            if let descriptor = fromChild?.readEnd, descriptor >= 0 { entries.append((descriptor, Posix.readable)) }
            var timeout: CInt = 1000
            if let killAt {
                let now = Posix.monotonicNanoseconds()
                timeout = now >= killAt ? 0 : CInt(min(1000, (killAt - now) / 1_000_000 + 1))
            }
            _ = Posix.poll(entries, timeoutMilliseconds: timeout)
            while let signal = signals.next() {
                child.signal(signal)
                if killAt == nil { killAt = Posix.monotonicNanoseconds() + graceNanoseconds }
            }
            if let killAt, Posix.monotonicNanoseconds() >= killAt { child.signal(SIGKILL) }
            if writing {
                do {
                    while !pending.isEmpty, let written = try toChild?.writeAvailable(pending) { pending = pending.dropFirst(written) }
                } catch {
                    pending = []  // the runner closed fd 3: it will say why on its own
                }
                if pending.isEmpty { toChild = nil }  // closes our end: the frame is complete
            }
            if fromChild != nil {
                do {
                    while let bytes = try fromChild?.readAvailable() {
                        if bytes.isEmpty { fromChild = nil; break }
                    }
                } catch { fromChild = nil }
            }
            if let status = child.poll() { return WorkerExit.code(status) }
        }
    }
}
