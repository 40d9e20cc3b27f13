import Foundation
import XCTest

@testable import DemoCore

/// docs/app_golden.json `split_methods`: the default model's split AR layout (the ExecuTorch exporter's
/// default, docs/executorch.md "AR program layouts") exactly as the exporter writes manifest["methods"],
/// parsed by the app's Manifest and run by its Pipeline.
final class SplitLayoutTests: XCTestCase {
    let g = TestFiles.golden
    let bodyCalls = (0..<10).map { String(format: "ar_body_%02d", $0) }

    /// The golden manifest with the split method list (and its call order) in place of the per-scale one.
    func splitManifest() throws -> Manifest {
        var o = TestFiles.manifestJSON()
        let methods = try XCTUnwrap(g.root["split_methods"] as? [[String: Any]])
        o["methods"] = methods
        o["call_order"] = methods.map { $0["name"] as! String }
        return try Manifest.parse(o)
    }

    func testEveryBodyCallRunsTheOneBodyProgramMethod() throws {
        let m = try splitManifest()
        XCTAssertEqual(m.methods.map(\.name).filter { $0.hasPrefix("ar_body_") }, bodyCalls)
        for name in bodyCalls {
            let b = try m.method(name)
            XCTAssertEqual(b.file, "ar_body.pte", name)
            XCTAssertEqual(b.entry, "ar_body", name)
            XCTAssertEqual(b.component, "ar_transformer", name)
        }
        XCTAssertEqual(m.methods.filter { $0.file == "ar_body.pte" }.map(\.name), bodyCalls, "only body calls live in ar_body.pte")
        for x in m.methods where !bodyCalls.contains(x.name) { XCTAssertEqual(x.entry, x.name, "\(x.name) is its own program method") }
        var files = [String]()
        for f in m.methods.compactMap(\.file) where !files.contains(f) { files.append(f) }
        XCTAssertEqual(files, ["text_encoder.pte", "ar_transformer.pte", "ar_body.pte", "diffusion_head.pte", "vae_decoder.pte"])
        // the body's query length is the only dim that varies between calls (static shapes per call)
        let lengths = try bodyCalls.map { try m.method($0).inputs.first { $0.name == "x" }!.shape[1] }
        XCTAssertEqual(lengths, [300, 4, 9, 16, 25, 36, 64, 100, 169, 256])
    }

    func testStartPosFlowsByNameFromThePreviousGlueToEachBodyCall() throws {
        let m = try splitManifest()
        for (i, b) in m.methods.enumerated() where bodyCalls.contains(b.name) {
            let si = Int(b.name.dropFirst("ar_body_".count))!
            let s = try XCTUnwrap(b.inputs.first { $0.name == "start_pos" }, b.name)
            XCTAssertEqual(s.dtype, .int64)
            XCTAssertEqual(s.source, .env)
            XCTAssertEqual(s.shape, [1])
            let prev = m.methods[i - 1]
            XCTAssertEqual(prev.name, si == 0 ? "ar_prefill" : String(format: "scale_%02d", si - 1))
            XCTAssertEqual(prev.outputs.filter { $0.name == "start_pos" }.map(\.dtype), [.int64], prev.name)
            // the glue's sampled tokens are its `idx` output; start_pos is bookkeeping, not tokens
            if si > 0 { XCTAssertEqual(prev.outputs.first?.name, "idx") }
        }
        XCTAssertFalse(try m.method("scale_09").outputs.contains { $0.name == "start_pos" }, "the last glue starts no further body call")
    }

    func testPipelineRoutesStartPosToTheBodyEntry() throws {
        let m = try splitManifest()
        // A runner in the shape of an app runner: manifest name -> (file, entry); outputs of the spec's shapes.
        var calls = [String]()
        var startPos = [String: Int64]()
        let runner = ClosureRunner { method, inputs in
            let spec = try m.method(method)
            calls.append("\(spec.file ?? "-"):\(spec.entry)")
            for (s, t) in zip(spec.inputs, inputs) where s.name == "start_pos" { startPos[method] = t.longs!.first }
            let k = Int64(m.methods.firstIndex { $0.name == method }!)
            return spec.outputs.map { s in
                switch s.name {
                case "start_pos": return Tensor(longs: [1000 + k], shape: s.shape)
                case "idx": return Tensor(longs: [Int64](repeating: k, count: s.numel), shape: s.shape)
                default: return Tensor.zeros(s.shape, s.dtype)
                }
            }
        }
        let gen = try Pipeline(manifest: m, runner: runner, encoder: try PromptEncoder(ByteTokenizer(), maxTokens: m.tokenizer.maxTokens))
            .generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg)
        XCTAssertEqual(calls, m.methods.map { "\($0.file ?? "-"):\($0.entry)" })
        XCTAssertEqual(calls.filter { $0 == "ar_body.pte:ar_body" }.count, 10)
        // each body call got the start_pos of the method just before it (ar_prefill, then the previous glue)
        let names = m.methods.map(\.name)
        var want = [String: Int64]()
        for b in bodyCalls { want[b] = 1000 + Int64(names.firstIndex(of: b)!) - 1 }
        XCTAssertEqual(startPos, want)
        // tokens are the glue methods' idx only
        XCTAssertEqual(gen.tokens.keys.sorted(), (0..<10).map { String(format: "scale_%02d", $0) })
        for (k, v) in gen.tokens { XCTAssertEqual(Set(v.longs!), [Int64(names.firstIndex(of: k)!)], k) }
    }
}
