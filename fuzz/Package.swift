// swift-tools-version:6.1
// libFuzzer harness for the CONNECT/HTTP request parser. Not part of `make test`:
//   swift build --package-path fuzz -c release -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
//   fuzz/.build/release/ParserFuzz -max_total_time=600 fuzz/corpus
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
