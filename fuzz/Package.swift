// swift-tools-version:6.1
// libFuzzer harness for the CONNECT/HTTP request parser. Not part of `make test`; `make fuzz`
// builds and runs it. Coverage flags plus libFuzzer's no-main runtime, because SwiftPM links an
// executable's entry point under its own name (`-sanitize=fuzzer` then fails to link):
//   swift build --package-path fuzz -c release -Xswiftc -sanitize=address \
//     -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp -Xswiftc -parse-as-library \
//     -Xlinker $(clang runtime dir)/libclang_rt.fuzzer_no_main-x86_64.a -Xlinker -lstdc++
//   fuzz/.build/release/ParserFuzz -max_total_time=600 CORPUS_DIR fuzz/corpus
// The dependency is named by the root checkout's folder name (`main` here).
import PackageDescription

let package = Package(
    name: "fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .executableTarget(
            name: "ParserFuzz",
            dependencies: [.product(name: "EgressProxyCore", package: "main")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
