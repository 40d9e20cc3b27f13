import Foundation
import XCTest

@testable import DemoCore

/// The pieces of the on-device benchmark test that run on Linux: its environment and the framed JSON
/// that `python -m benchmarks.ios` cuts out of the xcodebuild log.
final class BenchmarkRequestTests: XCTestCase {
    func testDefaultsWithoutEnvironment() throws {
        let r = try BenchmarkRequest(environment: [:])
        XCTAssertEqual(r, BenchmarkRequest())
        XCTAssertEqual(r.runs, 3)
        XCTAssertNil(r.bundleDir)
        XCTAssertNil(r.bundleName)
    }

    func testEnvironmentValues() throws {
        let r = try BenchmarkRequest(environment: [
            "HART_BENCHMARK_RUNS": "5", "HART_BUNDLE_DIR": "/tmp/b", "HART_BUNDLE_NAME": "coreml-int4", "OTHER": "x",
        ])
        XCTAssertEqual(r.runs, 5)
        XCTAssertEqual(r.bundleDir, "/tmp/b")
        XCTAssertEqual(r.bundleName, "coreml-int4")
        XCTAssertNil(try BenchmarkRequest(environment: ["HART_BUNDLE_NAME": ""]).bundleName)
    }

    func testBadRunsIsAnErrorNamingTheVariable() {
        for bad in ["0", "-2", "five", "", "2.5"] {
            XCTAssertThrowsError(try BenchmarkRequest(environment: ["HART_BENCHMARK_RUNS": bad]), bad) {
                XCTAssertTrue("\($0)".contains("HART_BENCHMARK_RUNS=\(bad)"), "\($0)")
            }
        }
    }

    func testFramedJsonIsOneLineBetweenTheMarkers() throws {
        let result = try Self.coremlShapedResult()
        let lines = try Benchmark.framed(result).split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, 4)  // begin, JSON, end, "" after the final newline
        XCTAssertEqual(lines[0], "HART_BENCHMARK_JSON_BEGIN")
        XCTAssertEqual(lines[2], "HART_BENCHMARK_JSON_END")
        XCTAssertEqual(lines[3], "")
        let back = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as! [String: Any]
        XCTAssertEqual(back["schema"] as? String, "hart-mobile/benchmark")
        XCTAssertEqual(back["backend"] as? String, "coreml")
        let target = (back["targets"] as! [[String: Any]])[0]
        XCTAssertEqual(target["name"] as? String, "coreml-int4")
        XCTAssertEqual((target["stages"] as! [String: Any]).count, 14)
    }

    func testEmitWritesTheFramedTextInOnePiece() throws {
        let result = try Self.coremlShapedResult()
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("emit-\(UUID().uuidString).log")
        FileManager.default.createFile(atPath: url.path, contents: Data("xcodebuild noise without newline".utf8))
        defer { try? FileManager.default.removeItem(at: url) }
        let handle = try FileHandle(forWritingTo: url)
        handle.seekToEndOfFile()
        try Benchmark.emit(result, to: handle)
        try handle.close()
        let text = try String(contentsOf: url, encoding: .utf8)
        XCTAssertEqual(text, "xcodebuild noise without newline\n" + (try Benchmark.framed(result)))
        if let out = ProcessInfo.processInfo.environment["BENCHMARK_FRAMED_OUT"] {  // ci.sh parses it with benchmarks.ios
            try Data(text.utf8).write(to: URL(fileURLWithPath: out))
        }
    }

    /// Benchmark.run over the golden manifest marked as a Core ML bundle, with a runner of zeros
    /// (Linux has no Core ML; the timings are those of the zeros runner).
    static func coremlShapedResult() throws -> [String: Any] {
        var o = TestFiles.manifestJSON()
        o["backend"] = "coreml"
        let m = try Manifest.parse(o)
        let zeros = ClosureRunner { method, _ in try m.method(method).outputs.map { Tensor.zeros($0.shape, $0.dtype) } }
        let p = Pipeline(manifest: m, runner: zeros, encoder: try PromptEncoder(ByteTokenizer(), maxTokens: m.tokenizer.maxTokens))
        let r = BenchmarkRequest()
        return try Benchmark.run(
            p, prompt: BenchmarkRequest.prompt, seed: BenchmarkRequest.seed, cfg: BenchmarkRequest.cfg, runs: r.runs,
            warmup: BenchmarkRequest.warmup, device: "linux-test (DemoCore zeros runner)", bundleName: "coreml-int4")
    }
}
