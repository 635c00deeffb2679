import EgressProxyCore

/// libFuzzer entry point: parse the input whole and split in two; the outcomes must agree.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    var whole = RequestHeadParser(limit: 8192)
    let first = whole.parse(bytes)
    var split = RequestHeadParser(limit: 8192)
    var second = split.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<(size / 2)]))
    if second == .needMore { second = split.parse(bytes) }
    precondition(first == second, "outcome depends on how the bytes arrived")
    if case .complete(let head, _) = first, case .connect(let authority) = head.kind {
        precondition(authority.port > 0)
    }
    return 0
}
