@testable import AGCWorker
import EgressPosix
import Foundation
import Testing

/// The wrapper's pure parts: the JIT config's files, the classic frame, exit codes, settings.
@Suite struct WorkerTests {
    static func blob(_ files: [String: String], bom: Bool = false) -> String {
        let encoded = files.mapValues { Data($0.utf8).base64EncodedString() }
        var json = [UInt8]((try? JSONSerialization.data(withJSONObject: encoded)) ?? Data())
        if bom { json = [0xEF, 0xBB, 0xBF] + json }
        return Data(json).base64EncodedString()
    }

    static let three = [".runner": #"{"agentId": 1}"#, ".credentials": #"{"scheme": "OAuth"}"#, ".credentials_rsaparams": #"{"d": "x"}"#]

    @Test func theThreeFilesAndNothingElse() throws {
        var files = Self.three
        files["../../etc/passwd"] = "root"
        files["other.txt"] = "ignored"
        let decoded = try JITFiles.decode(Self.blob(files))
        #expect(Set(decoded.keys) == [".runner", ".credentials", ".credentials_rsaparams"])
        #expect(String(decoding: decoded[".runner"] ?? [], as: UTF8.self) == #"{"agentId": 1}"#)
    }

    @Test func aBOMAndOtherCasingAreTolerated() throws {
        let files = [".Runner": "r", ".Credentials": "c", ".Credentials_RsaParams": "k"]
        let decoded = try JITFiles.decode(Self.blob(files, bom: true))
        #expect(decoded[".credentials_rsaparams"] == Array("k".utf8))
    }

    @Test func corruptConfigsAreClearErrorsThatNeverQuoteTheBlob() {
        let missing = Self.blob([".runner": "r"])
        #expect(throws: WorkerError("the JIT config has no .credentials")) { try JITFiles.decode(missing) }
        #expect(throws: WorkerError("the JIT config is not base64")) { try JITFiles.decode("not base64!") }
        #expect(throws: WorkerError("the JIT config is not a JSON object of files")) { try JITFiles.decode(Data("[1]".utf8).base64EncodedString()) }
    }

    @Test func theFrameIsTypeLengthAndUTF16LE() {
        #expect(JobFrame.encode("") == [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(JobFrame.encode("aé") == [1, 0, 0, 0, 4, 0, 0, 0, 0x61, 0, 0xE9, 0])
        let emoji = JobFrame.encode("😀")
        #expect(emoji.count == 12 && emoji[4] == 4, "a surrogate pair is two UTF-16 units")
    }

    @Test func exitCodesFollowTheContract() {
        #expect(WorkerExit.code(.exited(100)) == 0 && WorkerExit.code(.exited(101)) == 0)
        #expect(WorkerExit.code(.exited(102)) == 102 && WorkerExit.code(.exited(0)) == 0)
        #expect(WorkerExit.code(.signalled(9)) == 137 && WorkerExit.code(.signalled(15)) == 143)
    }

    @Test func settingsAreBoundedAndClear() throws {
        let defaults = try WorkerSettings.from([:])
        #expect(defaults.mode == "scaleset" && defaults.runnerHome == "/home/runner" && defaults.shutdownGrace == .seconds(25))
        #expect(try WorkerSettings.from(["WORKER_SHUTDOWN_GRACE": "40"]).shutdownGrace == .seconds(40))
        #expect(try WorkerSettings.from(["WORKER_SHUTDOWN_GRACE": "2m"]).shutdownGrace == .seconds(120))
        #expect(throws: WorkerError.self) { try WorkerSettings.from(["WORKER_SHUTDOWN_GRACE": "-5s"]) }
        #expect(throws: WorkerError.self) { try WorkerSettings.from(["WORKER_SHUTDOWN_GRACE": "2h"]) }
        #expect(throws: WorkerError.self) { try WorkerSettings.from(["AGC_WORKER_MODE": "docker"]) }
    }
}
