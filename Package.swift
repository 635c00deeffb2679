// swift-tools-version:6.1
//
// Folder -> target (see ../shared/DESIGN.md, "Layout"):
//
// | folder                      | target               | kind                        |
// |-----------------------------|----------------------|-----------------------------|
// | Sources/CEgressShims        | CEgressShims         | C: epoll, eventfd, timerfd, signalfd, splice, accept4 |
// | Sources/CCurlShims          | CCurlShims           | C: typed wrappers for libcurl's variadic calls |
// | Sources/COpenSSL            | COpenSSL             | system library: libcrypto (libssl-dev) |
// | Sources/CCurl               | CCurl                | system library: libcurl (libcurl4-openssl-dev) |
// | Sources/CNghttp2            | CNghttp2             | system library: libnghttp2 + libssl (long polls' own HTTP/2) |
// | Sources/OutboundPool        | OutboundPool         | libcurl multi on EgressLoop, async API |
// | Sources/EgressPosix         | EgressPosix          | the only Glibc I/O seam     |
// | Sources/EgressLoop          | EgressLoop           | loop threads, timers, pools |
// | Sources/Vocabulary          | Vocabulary           | Prometheus text, histograms, JSON strings, times |
// | Sources/CYAML               | CYAML                | system library: libyaml (libyaml-dev) |
// | Sources/YAMLNodes           | YAMLNodes            | YAML text <-> a node tree over libyaml (the proxy's config; no Foundation) |
// | Sources/GatewayOps          | GatewayOps           | admin HTTP, process metrics, logs, signals |
// | proxy/EgressProxyCore       | EgressProxyCore      | CONNECT, policy, tunnels    |
// | proxy/EgressProxy           | EgressProxy          | executable `egress-proxy`   |
// | bench/ConnectFlood          | ConnectFlood         | executable `connect-flood` (load generator) |
// | controllers/GitHubKit       | GitHubKit            | App JWT, installation tokens, GHES URLs |
// | controllers/KubeKit         | KubeKit              | Kubernetes object subsets (Codable) |
// | controllers/GatewayManager  | GatewayManager       | ActionsGateway types, validation, desired state (GMC) |
// | controllers/GatewayManagerCLI | GatewayManagerCLI  | executable `gmc` (run, render) |
// | controllers/ActionsGatewayController | ActionsGatewayController | AGC: sources, admission, worker pods, lifecycle |
// | controllers/AGCCLI          | AGCCLI               | executable `agc` (run, render-pod, worker) |
// | controllers/AGCWorker       | AGCWorker            | `agc worker`: the wrapper, PID 1 of a worker pod |
// | Tests/GatewayManagerTests   | GatewayManagerTests  | tests                       |
// | Tests/GitHubKitTests        | GitHubKitTests       | tests                       |
// | Tests/OutboundPoolTests     | OutboundPoolTests    | tests                       |
// | Tests/TestSupport           | TestSupport          | child processes, Python fakes, polling (tests only) |
// | Tests/EgressPosixTests      | EgressPosixTests     | tests (the syscall seam, on loopback) |
// | Tests/EgressLoopTests       | EgressLoopTests      | tests                       |
// | Tests/EgressProxyCoreTests  | EgressProxyCoreTests | tests                       |
// | Tests/VocabularyTests       | VocabularyTests      | tests                       |
// | Tests/GatewayOpsTests       | GatewayOpsTests      | tests                       |
// | Tests/integration           | (pytest, not SwiftPM)| real clients against the binary |
//
// Dependencies point one way: EgressPosix <- EgressLoop <- GatewayOps <- EgressProxyCore <- EgressProxy;
// Vocabulary depends on nothing, and OutboundPool does not depend on GatewayOps.

import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "actions-gateway",
    products: [
        .executable(name: "egress-proxy", targets: ["EgressProxy"]),
        .executable(name: "connect-flood", targets: ["ConnectFlood"]),
        .executable(name: "gmc", targets: ["GatewayManagerCLI"]),
        .executable(name: "agc", targets: ["AGCCLI"]),
        // For the libFuzzer harness in fuzz/ (a separate package, built only by hand).
        .library(name: "EgressProxyCore", targets: ["EgressProxyCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // The syscall seam's C, and libcurl's apart from it: the proxy links no libcurl.
        .target(name: "CEgressShims"),
        .target(name: "CCurlShims", dependencies: ["CCurl"]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev", "libssl-dev"])]),
        .systemLibrary(name: "CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),
        // The proxy's YAML, without Yams: Yams needs Foundation, whose ICU data (34 MB) a
        // static binary would carry (docs/operations/images.md).
        .target(name: "YAMLNodes", dependencies: ["CYAML"], swiftSettings: strict),
        .target(
            name: "EgressPosix",
            dependencies: ["CEgressShims", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .target(name: "EgressLoop", dependencies: ["EgressPosix"], swiftSettings: strict),
        // Text every binary writes (Prometheus exposition, histograms, JSON strings, RFC 3339
        // times): pure Swift, below OutboundPool and GatewayOps, so neither needs the other.
        .target(name: "Vocabulary", swiftSettings: strict),
        .target(
            name: "OutboundPool",
            dependencies: ["EgressLoop", "EgressPosix", "CCurlShims", "CCurl", "CNghttp2", "Vocabulary"],
            swiftSettings: strict
        ),
        .target(
            name: "GatewayOps",
            dependencies: ["EgressLoop", "EgressPosix", "Vocabulary", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        .target(
            name: "EgressProxyCore",
            dependencies: [
                "EgressLoop", "EgressPosix", "GatewayOps", "Vocabulary", "COpenSSL", "YAMLNodes",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "proxy/EgressProxyCore",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "EgressProxy",
            dependencies: [
                "EgressProxyCore", "GatewayOps",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "proxy/EgressProxy",
            swiftSettings: strict
        ),
        .target(
            name: "GitHubKit",
            dependencies: ["OutboundPool", "EgressPosix", "COpenSSL", "Vocabulary"],
            path: "controllers/GitHubKit",
            swiftSettings: strict
        ),
        .target(
            name: "KubeKit",
            dependencies: ["OutboundPool", "GatewayOps", "Vocabulary", "EgressPosix", .product(name: "Yams", package: "Yams"), .product(name: "Logging", package: "swift-log")],
            path: "controllers/KubeKit",
            swiftSettings: strict),
        .target(name: "AGCWorker", dependencies: ["EgressPosix", "GitHubKit"], path: "controllers/AGCWorker", swiftSettings: strict),
        .target(
            name: "GatewayManager",
            // EgressProxyCore: the proxy's own config model, host rules and parser, so what the
            // GMC renders and accepts is exactly what the tenant's proxy will load.
            dependencies: [
                "KubeKit", "OutboundPool", "GatewayOps", "Vocabulary", "EgressProxyCore", "EgressPosix", "COpenSSL", "EgressLoop", "GitHubKit",
                .product(name: "Yams", package: "Yams"), .product(name: "Logging", package: "swift-log"),
            ],
            path: "controllers/GatewayManager",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "GatewayManagerCLI",
            dependencies: [
                "GatewayManager", "KubeKit", "OutboundPool", "GatewayOps", "EgressLoop", "EgressPosix", "EgressProxyCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            path: "controllers/GatewayManagerCLI",
            swiftSettings: strict
        ),
        .target(
            name: "ActionsGatewayController",
            // GatewayManager: the ActionsGateway model and its validation, shared with the GMC.
            dependencies: [
                "KubeKit", "GitHubKit", "GatewayManager", "OutboundPool", "GatewayOps", "Vocabulary", "EgressLoop",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "controllers/ActionsGatewayController",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "AGCCLI",
            dependencies: [
                "ActionsGatewayController", "AGCWorker", "GatewayManager", "GitHubKit", "KubeKit", "OutboundPool", "GatewayOps", "Vocabulary", "EgressLoop",
                "EgressPosix", .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            path: "controllers/AGCCLI",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ConnectFlood",
            dependencies: [
                "EgressLoop", "EgressPosix",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "bench/ConnectFlood",
            swiftSettings: strict
        ),
        // Shared by the test targets that drive real programs (a plain target under Tests/).
        .target(name: "TestSupport", dependencies: ["EgressPosix", "EgressLoop"], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "EgressPosixTests", dependencies: ["EgressPosix"], swiftSettings: strict),
        .testTarget(name: "YAMLNodesTests", dependencies: ["YAMLNodes", .product(name: "Yams", package: "Yams")], swiftSettings: strict),
        .testTarget(name: "EgressLoopTests", dependencies: ["EgressLoop", "EgressPosix", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "OutboundPoolTests",
            dependencies: ["OutboundPool", "EgressLoop", "EgressPosix", "Vocabulary", "TestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "GitHubKitTests",
            dependencies: ["GitHubKit", "OutboundPool", "EgressPosix", "TestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "GatewayManagerTests",
            dependencies: ["GatewayManager", "KubeKit", "EgressProxyCore", "OutboundPool", "GatewayOps", "Vocabulary", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "ActionsGatewayControllerTests",
            dependencies: ["ActionsGatewayController", "KubeKit", "GatewayManager", "GitHubKit", "OutboundPool", "TestSupport",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .testTarget(name: "AGCWorkerTests", dependencies: ["AGCWorker", "EgressPosix"], swiftSettings: strict),
        .testTarget(name: "VocabularyTests", dependencies: ["Vocabulary"], swiftSettings: strict),
        .testTarget(
            name: "GatewayOpsTests", dependencies: ["GatewayOps", "EgressLoop", "EgressPosix", "Vocabulary"], swiftSettings: strict),
        .testTarget(
            name: "EgressProxyCoreTests",
            dependencies: ["EgressProxyCore", "EgressLoop", "EgressPosix", "GatewayOps", "TestSupport", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
    ]
)
