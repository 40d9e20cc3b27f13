// swift-tools-version:5.9
// DemoCore: the portable part of the iOS demo (Foundation only). Built and tested on Linux in CI
// (ios_demo/ci.sh); the Xcode app (ios_demo/project.yml) depends on it as a local package.
import PackageDescription

let package = Package(
    name: "DemoCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "DemoCore", targets: ["DemoCore"]),
        .executable(name: "bundle-check", targets: ["bundle-check"]),
    ],
    targets: [
        .target(name: "DemoCore"),
        .executableTarget(name: "bundle-check", dependencies: ["DemoCore"]),
        .testTarget(name: "DemoCoreTests", dependencies: ["DemoCore"]),
    ]
)
