import XCTest

@testable import DemoCore

/// A two-method bundle in the export/bundle.py layout, with golden/ written the way write_golden writes it.
final class BundleGoldenTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("golden-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("golden"), withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    let manifestJSON = """
        {"format":"hart-mobile-bundle","schema_version":1,"min_runtime_version":1,"backend":"coreml",
        "model":{"name":"tiny","image_size":1},"call_order":["text_encoder","scale_00"],"sampler":{"cfg_default":3.5},
        "methods":[
         {"name":"text_encoder","component":"text_encoder","file":"t.mlpackage","function":"main",
          "inputs":[{"name":"token_ids","shape":[1,4],"dtype":"int64","source":"tokenizer"}],
          "outputs":[{"name":"context","shape":[1,40],"dtype":"float32"}]},
         {"name":"scale_00","component":"ar_transformer","file":"t.mlpackage","function":"scale_00","states":[{"name":"k"}],
          "inputs":[{"name":"context","shape":[1,40],"dtype":"float32"},
                    {"name":"noise_u","shape":[1,3],"dtype":"float32","source":"rng","rng":{"dist":"uniform","streams":[0]}}],
          "outputs":[{"name":"idx","shape":[1,2],"dtype":"int64"},{"name":"image","shape":[1,3,1,1],"dtype":"float32"}]}],
        "tokenizer":{"file":null,"max_tokens":4,"pad_token":"<|endoftext|>"},
        "parity":{"thresholds":{"golden":{"token_agreement":1.0,"sqnr_db":60.0}}},
        "golden":{"index":"golden/index.json","prompt":"ab","seed":7,"cfg":3.5},"files":{}}
        """

    func manifest() throws -> Manifest { try Manifest.parse(data: Data(manifestJSON.utf8)) }

    func bin(_ t: Tensor) -> Data {
        var d = Data()
        for i in 0..<t.numel {
            if let l = t.longs {
                withUnsafeBytes(of: l[i].littleEndian) { d.append(contentsOf: $0) }
            } else {
                withUnsafeBytes(of: t.floats![i].bitPattern.littleEndian) { d.append(contentsOf: $0) }
            }
        }
        return d
    }

    func writeGolden(_ m: Manifest) throws {
        let t: [String: Tensor] = [
            "token_ids": try PromptEncoder(ByteTokenizer(), maxTokens: 4).encode("ab").ids,
            "context": Tensor(floats: (0..<40).map { Float($0) * 0.25 - 3 }, shape: [1, 40]),
            "noise_u": try Philox.drawNoise(m.method("scale_00").inputs[1], seed: 7),
            "idx": Tensor(longs: [5, 9], shape: [1, 2]),
            "start_pos": Tensor(longs: [302], shape: [1]),
            "image": Tensor(floats: [0.1, 0.5, 0.9], shape: [1, 3, 1, 1]),
        ]
        var entries = [[String: Any]]()
        for meth in m.methods {
            for (io, specs) in [("in", meth.inputs), ("out", meth.outputs)] {
                for (i, s) in specs.enumerated() {
                    let data = bin(t[s.name]!)
                    let name = String(SHA256.hex(data).prefix(16)) + ".bin"
                    try data.write(to: dir.appendingPathComponent("golden/\(name)"))
                    entries.append([
                        "method": meth.name, "io": io, "index": i, "name": s.name, "shape": s.shape, "dtype": s.dtype.rawValue,
                        "file": name,
                    ])
                }
            }
        }
        let index: [String: Any] = ["version": 1, "byte_order": "little", "prompt": "ab", "seed": 7, "cfg": 3.5, "tensors": entries]
        try JSONSerialization.data(withJSONObject: index).write(to: dir.appendingPathComponent("golden/index.json"))
    }

    func testExportManifestFieldsAreRead() throws {
        let m = try manifest()
        XCTAssertEqual(m.defaultCfg, 3.5)
        XCTAssertEqual(m.goldenIndex, "golden/index.json")
        XCTAssertEqual(m.goldenLimits, ["token_agreement": 1.0, "sqnr_db": 60.0])
        XCTAssertEqual(try m.method("scale_00").function, "scale_00")
        XCTAssertEqual(try m.method("scale_00").states, ["k"])
        var o = try JSONSerialization.jsonObject(with: Data(manifestJSON.utf8)) as! [String: Any]
        o["call_order"] = ["scale_00", "text_encoder"]
        XCTAssertThrowsError(try Manifest.parse(o))
        o["call_order"] = ["text_encoder", "scale_00"]
        o["min_runtime_version"] = 2
        XCTAssertThrowsError(try Manifest.parse(o)) { XCTAssertTrue("\($0)".contains("update the app")) }
    }

    func testGoldenTensorsLoadAndAPerfectRunnerPasses() throws {
        let m = try manifest()
        try writeGolden(m)
        let g = try BundleGolden.load(bundleDir: dir)
        XCTAssertEqual(g.prompt, "ab")
        XCTAssertEqual(g.outputs["scale_00"]![0].longs!, [5, 9])
        var calls = [String]()
        let perfect = ClosureRunner { method, _ in
            calls.append(method)
            return g.outputs[method]!
        }
        let r = try g.check(m, runner: perfect)
        XCTAssertTrue(r.passed, "\(r.failures)")
        XCTAssertEqual(r.tokenAgreement, 1)
        XCTAssertEqual(r.minSqnrDb, BundleGolden.inf)
        XCTAssertEqual(calls, ["text_encoder", "scale_00"])
    }

    func testDriftAndWrongTokensFailTheThresholds() throws {
        let m = try manifest()
        try writeGolden(m)
        let g = try BundleGolden.load(bundleDir: dir)
        let noisy = ClosureRunner { method, _ in
            g.outputs[method]!.map { $0.dtype == .int64 ? $0 : Tensor(floats: $0.floats!.map { $0 + 0.05 }, shape: $0.shape) }
        }
        let r = try g.check(m, runner: noisy)
        XCTAssertFalse(r.passed)
        XCTAssertTrue(r.failures.first!.hasPrefix("sqnr_db"), "\(r.failures)")
        let wrong = ClosureRunner { method, _ in
            method == "scale_00" ? [Tensor(longs: [5, 8], shape: [1, 2]), g.outputs[method]![1]] : g.outputs[method]!
        }
        let w = try g.check(m, runner: wrong)
        XCTAssertEqual(w.tokenAgreement, 0.5)
        XCTAssertTrue(w.failures.first!.hasPrefix("token_agreement"))
    }

    /// `manifestJSON` with an int64 `start_pos` output of scale_00 (bookkeeping of the split AR layout, not tokens).
    func startPosManifest() throws -> Manifest {
        var o = try JSONSerialization.jsonObject(with: Data(manifestJSON.utf8)) as! [String: Any]
        var methods = o["methods"] as! [[String: Any]]
        methods[1]["outputs"] = [
            ["name": "idx", "shape": [1, 2], "dtype": "int64"], ["name": "start_pos", "shape": [1], "dtype": "int64"],
            ["name": "image", "shape": [1, 3, 1, 1], "dtype": "float32"],
        ]
        o["methods"] = methods
        return try Manifest.parse(o)
    }

    /// As runtime_py/parity.py: only `idx` outputs are tokens; any other int64 output must be exactly equal.
    func testOnlyIdxCountsAsTokensAndOtherInt64OutputsMustBeExact() throws {
        let m = try startPosManifest()
        try writeGolden(m)
        let g = try BundleGolden.load(bundleDir: dir)
        XCTAssertEqual(try m.method("scale_00").outputs.map(\.name), ["idx", "start_pos", "image"])
        func replacing(_ name: String, _ t: Tensor) -> ClosureRunner {
            ClosureRunner { method, _ in
                zip(try m.method(method).outputs, g.outputs[method]!).map { method == "scale_00" && $0.name == name ? t : $1 }
            }
        }
        let ok = try g.check(m, runner: ClosureRunner { method, _ in g.outputs[method]! })
        XCTAssertTrue(ok.passed, "\(ok.failures)")
        XCTAssertTrue(ok.rows.contains("scale_00.idx: token agreement 1.0000"), "\(ok.rows)")
        XCTAssertTrue(ok.rows.contains("scale_00.start_pos: int64 exact [302]"), "\(ok.rows)")

        let badPos = Tensor(longs: [303], shape: [1])
        let pos = try g.check(m, runner: replacing("start_pos", badPos))
        XCTAssertEqual(pos.failures, ["scale_00.start_pos: int64 output differs (exact match required)"])
        XCTAssertEqual(pos.tokenAgreement, 1, "start_pos is not a token")
        XCTAssertTrue(pos.rows.contains("scale_00.start_pos: int64 [303] != golden [302]"), "\(pos.rows)")
        // exactness is not a threshold: even limits that accept anything keep the failure
        XCTAssertFalse(try g.check(m, runner: replacing("start_pos", badPos), limits: [:]).passed)

        let badIdx = Tensor(longs: [5, 8], shape: [1, 2])
        let tok = try g.check(m, runner: replacing("idx", badIdx))
        XCTAssertEqual(tok.tokenAgreement, 0.5, "1 of the 2 idx tokens; start_pos does not count")
        XCTAssertEqual(tok.failures.map { $0.split(separator: " ").first.map(String.init) ?? "" }, ["token_agreement"])
        XCTAssertTrue(tok.rows.contains("scale_00.start_pos: int64 exact [302]"), "\(tok.rows)")
        let lenient = try g.check(m, runner: replacing("idx", badIdx), limits: ["token_agreement": 0.5])
        XCTAssertTrue(lenient.passed, "\(lenient.failures)")
    }

    func testAppLoopReproducesTheBundleGoldenInputs() throws {
        let m = try manifest()
        try writeGolden(m)
        let g = try BundleGolden.load(bundleDir: dir)
        let rec = try g.recording(m)
        let runner = ReplayRunner(rec)
        let gen = try Pipeline(manifest: m, runner: runner, encoder: try PromptEncoder(ByteTokenizer(), maxTokens: 4))
            .generate(prompt: g.prompt, seed: g.seed, cfg: g.cfg)
        XCTAssertTrue(runner.finished)
        XCTAssertEqual(gen.tokens["scale_00"]?.longs, [5, 9])
        let other = Pipeline(manifest: m, runner: ReplayRunner(rec), encoder: try PromptEncoder(ByteTokenizer(), maxTokens: 4))
        XCTAssertThrowsError(try other.generate(prompt: "ba", seed: 7, cfg: 3.5))
    }

    func testBundleCheckPassesOnAnIntactBundleAndNamesATamperedFile() throws {
        let m = try manifest()
        try writeGolden(m)
        try Data("program".utf8).write(to: dir.appendingPathComponent("t.mlpackage"))
        try JSONSerialization.data(withJSONObject: TestFiles.golden.tokenizer("byte_level").json)
            .write(to: dir.appendingPathComponent("tokenizer.json"))
        var files = [String: Any]()
        let fm = FileManager.default
        for rel in try fm.subpathsOfDirectory(atPath: dir.path) {
            let url = dir.appendingPathComponent(rel)
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: url.path, isDirectory: &isDir), !isDir.boolValue else { continue }
            files[rel] = ["bytes": try Data(contentsOf: url).count, "sha256": try SHA256.file(url)]
        }
        var o = try JSONSerialization.jsonObject(with: Data(manifestJSON.utf8)) as! [String: Any]
        o["files"] = files
        o["tokenizer"] = ["file": "tokenizer.json", "max_tokens": 4, "pad_token": "<|endoftext|>"]
        try TestFiles.writeManifest(dir, JSONSerialization.data(withJSONObject: o))
        let ok = BundleCheck.run(dir)
        XCTAssertEqual(ok.map(\.name), ["manifest + files", "tokenizer", "golden replay"])
        XCTAssertTrue(ok.allSatisfy(\.passed), "\(ok)")
        let bin = try fm.contentsOfDirectory(atPath: dir.appendingPathComponent("golden").path).first { $0.hasSuffix(".bin") }!
        let url = dir.appendingPathComponent("golden/\(bin)")
        var bytes = [UInt8](try Data(contentsOf: url))
        bytes[0] &+= 1
        try Data(bytes).write(to: url)
        let bad = BundleCheck.run(dir)
        XCTAssertFalse(bad[0].passed)
        XCTAssertTrue(bad[0].detail.contains(bin), bad[0].detail)
    }

    func testHalfFloatDecoding() {
        XCTAssertEqual(BundleGolden.halfToFloat(0x3C00), 1)
        XCTAssertEqual(BundleGolden.halfToFloat(0xC000), -2)
        XCTAssertEqual(BundleGolden.halfToFloat(0x7BFF), 65504)
        XCTAssertEqual(BundleGolden.halfToFloat(0x0001), 0x1p-24)
        XCTAssertEqual(BundleGolden.halfToFloat(0xFC00), -.infinity)
    }
}
