import XCTest

@testable import DemoCore

final class GoldenTests: XCTestCase {
    func testEverySelfCheckPasses() {
        let results = SelfCheck.all(TestFiles.golden)
        XCTAssertEqual(results.count, 5)
        for r in results { XCTAssertTrue(r.passed, r.description) }
    }

    func testGoldenFileIsSmallAndCoversTheWholeRun() throws {
        XCTAssertLessThan(try TestFiles.data("docs/app_golden.json").count, 2_000_000)
        let run = TestFiles.golden.run
        XCTAssertEqual(run.methods.map(\.name), TestFiles.golden.manifest.methods.map(\.name))
        XCTAssertEqual(run.tokens.count, 10)
        XCTAssertEqual(run.tokens.values.reduce(0) { $0 + $1.count }, 680)
    }

    func testRecordedWiringIsConsistent() {
        var latest = [String: Fingerprint]()
        for (meth, rec) in zip(TestFiles.golden.manifest.methods, TestFiles.golden.run.methods) {
            for (s, fp) in zip(meth.inputs, rec.inputs) where s.source == .env {
                XCTAssertEqual(Fingerprint.compare(fp, latest[s.name]!), [], "\(meth.name).\(s.name)")
            }
            for (s, fp) in zip(meth.outputs, rec.outputs) { latest[s.name] = fp }
        }
    }

    func testPixelCasesMatchPython() {
        let r = SelfCheck.pixels(TestFiles.golden)
        XCTAssertTrue(r.passed, r.description)
        XCTAssertEqual(Pixels.toUInt8(.nan), 0)
        XCTAssertEqual(Pixels.toUInt8(0.5), 127)
        XCTAssertEqual(Pixels.tokenPreview([1, 2, 3, 4], size: 8).count, 8 * 8 * 4)
    }

    func testFingerprintOfATensorMatchesPythonsDefinition() {
        let data = (0..<100).map { Float($0) * 0.5 - 10 }
        let fp = Fingerprint.of(Tensor(floats: data, shape: [10, 10]))
        XCTAssertEqual(fp.sum, data.reduce(0.0) { $0 + Double($1) })
        XCTAssertEqual(fp.absSum, data.reduce(0.0) { $0 + abs(Double($1)) })
        XCTAssertEqual(fp.maxAbs, 39.5)
        XCTAssertEqual(fp.head!.first, -10)
        XCTAssertEqual(fp.tail!.last, 39.5)
    }
}

final class BenchmarkTests: XCTestCase {
    func testBenchmarkJsonHasTheDocumentedFields() throws {
        let m = TestFiles.golden.manifest
        var calls = 0
        let zeros = ClosureRunner { method, _ in
            calls += 1
            return try m.method(method).outputs.map { Tensor.zeros($0.shape, $0.dtype) }
        }
        let p = Pipeline(manifest: m, runner: zeros, encoder: try PromptEncoder(ByteTokenizer(), maxTokens: m.tokenizer.maxTokens))
        let j = try Benchmark.run(p, prompt: "a cat", seed: 3, cfg: 4.5, runs: 2, warmup: 1, device: "linux-test")
        XCTAssertEqual(calls, 3 * 13)
        XCTAssertEqual(j["schema_version"] as? Int, 1)
        XCTAssertEqual(j["schema"] as? String, "hart-mobile/benchmark")
        XCTAssertEqual(j["device"] as? String, "linux-test")
        XCTAssertEqual(j["backend"] as? String, "reference")
        let stages = j["stages"] as! [String: [String: [Double]]]
        XCTAssertEqual(Set(stages.keys), Set(["tokenize"] + m.methods.map(\.name)))
        for (_, v) in stages { XCTAssertEqual(v["runs_ms"]!.count, 2) }
        XCTAssertEqual((j["total_ms"] as! [Double]).count, 2)
        let target = (j["targets"] as! [[String: Any]])[0]
        let s0 = (target["stages"] as! [String: [String: Any]])["scale_00"]!
        for k in ["min_ms", "median_ms", "p90_ms", "runs_ms"] { XCTAssertNotNil(s0[k], k) }
        let data = try Benchmark.jsonData(j)
        if let out = ProcessInfo.processInfo.environment["BENCHMARK_OUT"] {  // ci.sh validates it with benchmarks/schema.py
            try data.write(to: URL(fileURLWithPath: out))
        }
    }

    func testSummaryMatchesPythonNearestRank() {
        let s = Benchmark.summarize([5, 1, 3, 2])
        XCTAssertEqual(s["min_ms"] as? Double, 1)
        XCTAssertEqual(s["median_ms"] as? Double, 2.5)
        XCTAssertEqual(s["p90_ms"] as? Double, 5)
        XCTAssertEqual(Benchmark.summarize((1...10).map(Double.init))["p90_ms"] as? Double, 10)
        XCTAssertEqual(Benchmark.summarize((1...20).map(Double.init))["p90_ms"] as? Double, 18)
    }
}
