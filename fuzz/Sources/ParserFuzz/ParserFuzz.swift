import EgressProxyCore

/// One input: parse it whole and split in two; the outcomes must agree.
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
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

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point under this name; hand control to libFuzzer.
@_cdecl("ParserFuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzOne(data, size) }
}
