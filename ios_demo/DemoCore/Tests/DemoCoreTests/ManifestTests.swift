import XCTest

@testable import DemoCore

final class ManifestTests: XCTestCase {
    func methods(_ o: [String: Any]) -> [[String: Any]] { o["methods"] as! [[String: Any]] }

    func testGoldenContractParses() throws {
        let m = TestFiles.golden.manifest
        XCTAssertEqual(
            m.methods.map(\.name), ["text_encoder"] + (0...9).map { String(format: "scale_%02d", $0) } + ["diffusion_head", "vae_decoder"])
        XCTAssertEqual(m.schemaVersion, 1)
        XCTAssertEqual(m.imageSize, 256)
        XCTAssertEqual(m.defaultCfg, 4.5)
        let noise = try m.method("diffusion_head").inputs.first { $0.name == "noise" }!
        XCTAssertEqual(noise.source, .rng)
        XCTAssertEqual(noise.rng!.dist, .normal)
        XCTAssertEqual(noise.rng!.streams, [2000, 2008, 2007, 2006, 2005, 2004, 2003, 2002])
        XCTAssertEqual(try m.method("text_encoder").inputs[0].dtype, .int64)
    }

    func testUnsupportedSchemaVersionIsRejected() {
        var o = TestFiles.manifestJSON()
        o["schema_version"] = 99
        XCTAssertThrowsError(try Manifest.parse(o)) { XCTAssertTrue("\($0)".contains("99")) }
        o.removeValue(forKey: "schema_version")
        XCTAssertThrowsError(try Manifest.parse(o))
    }

    func testBrokenWiringIsRejectedBeforeRunning() {
        var o = TestFiles.manifestJSON()
        var ms = methods(o)
        var inputs = ms[4]["inputs"] as! [[String: Any]]
        inputs[1]["name"] = "f_hat_typo"
        ms[4]["inputs"] = inputs
        o["methods"] = ms
        XCTAssertThrowsError(try Manifest.parse(o)) { XCTAssertTrue("\($0)".contains("f_hat_typo")) }
    }

    func testRngStreamCountMustMatchLeadingDim() {
        var o = TestFiles.manifestJSON()
        var ms = methods(o)
        var inputs = ms[1]["inputs"] as! [[String: Any]]
        inputs[3]["rng"] = ["dist": "uniform", "streams": [0]]
        ms[1]["inputs"] = inputs
        o["methods"] = ms
        XCTAssertThrowsError(try Manifest.parse(o))
    }

    func testExportBundleLayoutIsAccepted() throws {
        var o = TestFiles.manifestJSON()
        for k in ["schema_version", "default_cfg", "image_size"] { o.removeValue(forKey: k) }
        o["format"] = "hart-mobile-bundle"
        o["version"] = 1
        o["backend"] = "coreml"
        o["model"] = ["name": "default", "image_size": 256, "default_cfg": 3.0]
        o["coreml"] = ["compute_units": "cpuAndNeuralEngine"]
        o["files"] = ["ArTransformer.mlpackage/Manifest.json": ["bytes": 3, "sha256": String(repeating: "a", count: 64)]]
        var ms = methods(o)
        ms[1]["file"] = "ArTransformer.mlpackage/Manifest.json"
        ms[1]["package"] = "ArTransformer.mlpackage"
        ms[1]["coreml_outputs"] = [["name": "idx", "coreml_name": "idx_out", "coreml_dtype": "int32"]]
        ms[1]["function"] = "scale_00"
        ms[1]["states"] = [["name": "k_cache_0", "shape": [1], "dtype": "float16"]]
        var inputs = ms[1]["inputs"] as! [[String: Any]]
        inputs.append(["name": "kv", "shape": [2, 4], "dtype": "float32", "source": "zeros", "coreml_name": "kv_in"])
        ms[1]["inputs"] = inputs
        o["methods"] = ms
        let m = try Manifest.parse(o)
        XCTAssertEqual(m.model, "default")
        XCTAssertEqual(m.defaultCfg, 3.0)
        XCTAssertEqual(m.computeUnits, "cpuAndNeuralEngine")
        XCTAssertEqual(m.files.first!.size, 3)
        let s0 = try m.method("scale_00")
        XCTAssertEqual(s0.function, "scale_00")
        XCTAssertEqual(s0.states, ["k_cache_0"])
        XCTAssertEqual(s0.inputs.last!.source, .zeros)
        XCTAssertEqual(s0.inputs.last!.backendName, "kv_in")
        XCTAssertEqual(s0.package, "ArTransformer.mlpackage")
        XCTAssertEqual(s0.outputs[0].backendName, "idx_out")
        XCTAssertEqual(s0.outputs[0].backendDType, "int32")
    }

    func testFileEntriesAreValidated() {
        var o = TestFiles.manifestJSON()
        o["files"] = [["path": "../x", "sha256": String(repeating: "a", count: 64), "size": 1]]
        XCTAssertThrowsError(try Manifest.parse(o))
        o["files"] = [["path": "x", "sha256": "abc", "size": 1]]
        XCTAssertThrowsError(try Manifest.parse(o))
    }

    /// manifest.json + manifest.sha256 exactly as export/bundle.py write_manifest wrote them (docs/app_golden.json).
    func writeExporterManifest(_ dir: URL) throws -> String {
        let c = TestFiles.golden.root["bundle_digest"] as! [String: Any]
        try Data((c["manifest_json"] as! String).utf8).write(to: dir.appendingPathComponent(ModelBundle.manifestName))
        try Data((c["manifest_sha256"] as! String).utf8).write(to: dir.appendingPathComponent(ModelBundle.digestName))
        return c["manifest_json"] as! String
    }

    func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bundle-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    func testExporterDigestVerifiesAndAnyEditFails() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = try writeExporterManifest(dir)
        let b = try ModelBundle.open(dir, verifyFiles: false)  // the digest is checked either way; no files here
        XCTAssertEqual(b.manifest.goldenLimits["token_agreement"], 0.6)  // the documented 8da4w limit, as written
        let loosened = text.replacingOccurrences(of: "\"token_agreement\": 0.6,", with: "\"token_agreement\": 0.1,")
        XCTAssertNotEqual(loosened, text)
        let spaced = text.replacingOccurrences(of: "\n \"files\"", with: "\n  \"files\"")
        XCTAssertNotEqual(spaced, text)
        for edit in [loosened, spaced, String(text.dropLast())] {
            try Data(edit.utf8).write(to: dir.appendingPathComponent(ModelBundle.manifestName))
            XCTAssertThrowsError(try ModelBundle.open(dir, verifyFiles: false)) {
                XCTAssertTrue("\($0)".contains("edited after export (digest mismatch"), "\($0)")
            }
        }
        _ = try writeExporterManifest(dir)
        let digest = try String(contentsOf: dir.appendingPathComponent(ModelBundle.digestName), encoding: .utf8)
        let upper = digest.uppercased().replacingOccurrences(of: "MANIFEST.JSON", with: "manifest.json")
        for bad in [upper, String(digest.dropLast()), digest + "\n"] {
            try Data(bad.utf8).write(to: dir.appendingPathComponent(ModelBundle.digestName))
            XCTAssertThrowsError(try ModelBundle.open(dir)) { XCTAssertTrue("\($0)".contains("is not one line"), "\($0)") }
        }
        try FileManager.default.removeItem(at: dir.appendingPathComponent(ModelBundle.digestName))
        XCTAssertThrowsError(try ModelBundle.open(dir)) { XCTAssertTrue("\($0)".contains("has no manifest.sha256"), "\($0)") }
    }

    func testSymlinkedFilesAreRefused() throws {
        let dir = try tempDir()
        let outside = try tempDir()
        defer {
            try? FileManager.default.removeItem(at: dir)
            try? FileManager.default.removeItem(at: outside)
        }
        let pte = Array("program bytes".utf8)
        try Data(pte).write(to: outside.appendingPathComponent("model.pte"))
        try FileManager.default.createSymbolicLink(
            at: dir.appendingPathComponent("model.pte"), withDestinationURL: outside.appendingPathComponent("model.pte"))
        var o = TestFiles.manifestJSON()
        o["files"] = [["path": "model.pte", "sha256": SHA256.hex(pte), "size": pte.count]]
        try TestFiles.writeManifest(dir, JSONSerialization.data(withJSONObject: o))
        let b = try ModelBundle.open(dir, verifyFiles: false)
        XCTAssertEqual(ModelBundle.verify(dir, b.manifest).first, ModelBundle.symlinkMessage("model.pte"))
        try FileManager.default.removeItem(at: dir.appendingPathComponent(ModelBundle.digestName))
        try FileManager.default.createSymbolicLink(
            at: dir.appendingPathComponent(ModelBundle.digestName), withDestinationURL: outside.appendingPathComponent("model.pte"))
        XCTAssertThrowsError(try ModelBundle.open(dir)) { XCTAssertTrue("\($0)".contains("manifest.sha256 is a symlink"), "\($0)") }
    }

    func testBundleSha256Verification() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bundle-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let pte = Array("program bytes".utf8)
        let tok = try JSONSerialization.data(withJSONObject: TestFiles.golden.tokenizer("byte_level").json)
        try Data(pte).write(to: dir.appendingPathComponent("model.pte"))
        try tok.write(to: dir.appendingPathComponent("tokenizer.json"))
        var o = TestFiles.manifestJSON()
        o["files"] = [
            ["path": "model.pte", "sha256": SHA256.hex(pte), "size": pte.count],
            ["path": "tokenizer.json", "sha256": SHA256.hex(tok), "size": tok.count],
        ]
        try TestFiles.writeManifest(dir, JSONSerialization.data(withJSONObject: o))
        let b = try ModelBundle.open(dir)
        XCTAssertEqual(ModelBundle.verify(dir, b.manifest), [])
        XCTAssertEqual(try b.promptEncoder().padId, 256)

        try Data("program bytez".utf8).write(to: dir.appendingPathComponent("model.pte"))
        XCTAssertTrue(ModelBundle.verify(dir, b.manifest).first!.contains("sha256"))
        XCTAssertThrowsError(try ModelBundle.open(dir))
        try Data("short".utf8).write(to: dir.appendingPathComponent("model.pte"))
        XCTAssertTrue(ModelBundle.verify(dir, b.manifest).first!.contains("size"))
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.pte"))
        XCTAssertTrue(ModelBundle.verify(dir, b.manifest).first!.contains("missing"))
    }

    func testSha256KnownAnswers() {
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex([UInt8]()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        XCTAssertEqual(SHA256.hex(long), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var s = SHA256()
        for _ in 0..<1000 { s.update(Array(repeating: UInt8(ascii: "a"), count: 1000)) }
        XCTAssertEqual(s.finalizeHex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}
