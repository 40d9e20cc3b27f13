import DemoCore
import Foundation
import XCTest

/// The on-device benchmark behind `python -m benchmarks.ios` (README.md, "On-device benchmark").
/// Loads the Core ML bundle that the harness copied to ios_demo/.build/BenchmarkBundle (a folder
/// reference, so it is the `BenchmarkBundle` resource of this test bundle) or the folder named by
/// HART_BUNDLE_DIR, runs DemoCore's `Benchmark` over `CoreMLRunner` (App/CoreMLRunner.swift is
/// compiled into this target too), prints the JSON between marker lines for the host to cut out of
/// the xcodebuild log, and attaches it (`benchmark.json`) to the result bundle.
///
/// NOT verified in this repository's CI (Linux): only parsed with `swiftc -parse`.
final class BenchmarkRunTests: XCTestCase {
    @MainActor
    func testBenchmark() async throws {
        let request = try BenchmarkRequest(environment: ProcessInfo.processInfo.environment)
        guard #available(iOS 18.0, macOS 15.0, *) else { throw PipelineError("Core ML states need iOS 18") }
        let dir = try Self.bundleDir(request)
        let bundle = try ModelBundle.open(dir)  // manifest checks + size and sha256 of every file
        guard bundle.manifest.backend == "coreml" else {
            throw PipelineError("\(dir.path): backend is \(bundle.manifest.backend), this benchmark runs Core ML bundles")
        }
        let runner: MethodRunner = try await CoreMLRunner.load(bundle: bundle)
        let pipeline = Pipeline(manifest: bundle.manifest, runner: runner, encoder: try bundle.promptEncoder())
        let (device, os, runs) = (Self.deviceName(), Self.osName(), request.runs)
        let name = request.bundleName ?? dir.lastPathComponent
        let result = try await Task.detached {
            try Benchmark.run(
                pipeline, prompt: BenchmarkRequest.prompt, seed: BenchmarkRequest.seed, cfg: BenchmarkRequest.cfg, runs: runs,
                warmup: BenchmarkRequest.warmup, device: device, os: os, bundleName: name)
        }.value
        try Benchmark.emit(result)
        let attachment = XCTAttachment(data: try Benchmark.jsonData(result), uniformTypeIdentifier: "public.json")
        attachment.name = "benchmark.json"
        attachment.lifetime = .keepAlways
        add(attachment)
    }

    static func bundleDir(_ request: BenchmarkRequest) throws -> URL {
        if let path = request.bundleDir { return URL(fileURLWithPath: path) }
        guard let url = Bundle(for: BenchmarkRunTests.self).url(forResource: "BenchmarkBundle", withExtension: nil) else {
            throw PipelineError("no BenchmarkBundle folder in the test bundle and no HART_BUNDLE_DIR: run python -m benchmarks.ios")
        }
        return url
    }

    /// Hardware model, e.g. "iPhone16,1" (on a simulator: the simulated model).
    static func deviceName() -> String {
        if let model = ProcessInfo.processInfo.environment["SIMULATOR_MODEL_IDENTIFIER"] { return "\(model) (simulator)" }
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    static func osName() -> String {
        let v = ProcessInfo.processInfo.operatingSystemVersion
        return "iOS \(v.majorVersion).\(v.minorVersion).\(v.patchVersion)"
    }
}
