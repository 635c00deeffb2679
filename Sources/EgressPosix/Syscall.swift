import CEgressShims
import Glibc
import SystemPackage

/// A failed system call: the errno (as swift-system's `Errno`) and the C function's name.
///
/// Only runtime conditions are thrown (ECONNRESET, EMFILE, ECONNREFUSED, ...). errno values
/// that can only mean a bug in this process (EBADF, EFAULT) trap instead; see `Syscall`.
public struct IOError: Error, CustomStringConvertible, Sendable, Equatable {
    public let errno: Errno
    public let function: String

    public init(errno: Errno, function: String) {
        self.errno = errno
        self.function = function
    }

    public var description: String { "\(function): \(errno)" }
}

/// The outcome of a non-blocking call: done (with a value), or "try again when ready".
/// Would-block is a value, not an error, because on an edge-triggered loop it is the normal
/// way every read and write loop ends.
public enum IOResult<Value> {
    case processed(Value)
    case wouldBlock
}

extension IOResult: Sendable where Value: Sendable {}
extension IOResult: Equatable where Value: Equatable {}

/// The one helper every wrapper in this module goes through.
///
/// - EINTR is retried (never for `close`, which does not use this helper: after an
///   interrupted close the descriptor is already gone and may have been reused).
/// - EAGAIN/EWOULDBLOCK become `.wouldBlock` when the caller said would-block is expected.
/// - EBADF and EFAULT trap: they mean we passed a closed descriptor or a bad pointer.
/// - Anything else is thrown as `IOError`.
///
/// `@inline(never)` so no ARC traffic can run between the call and the read of errno.
enum Syscall {
    @inline(never)
    static func call(
        _ function: StaticString,
        wouldBlockIsValue: Bool = false,
        _ body: () -> Int
    ) throws(IOError) -> IOResult<Int> {
        while true {
            let result = body()
            if result != -1 { return .processed(result) }
            let code = cegress_errno()
            if code == EINTR { continue }
            if wouldBlockIsValue && (code == EAGAIN || code == EWOULDBLOCK) { return .wouldBlock }
            if code == EBADF || code == EFAULT {
                preconditionFailure("\(function) failed with \(Errno(rawValue: code)): a bug in this process")
            }
            throw IOError(errno: Errno(rawValue: code), function: "\(function)")
        }
    }

    /// For calls where would-block is impossible or a bug: returns the plain result.
    @inline(never)
    static func value(_ function: StaticString, _ body: () -> Int) throws(IOError) -> Int {
        switch try call(function, wouldBlockIsValue: false, body) {
        case .processed(let value): return value
        case .wouldBlock: preconditionFailure("unreachable: would-block not requested")
        }
    }
}
