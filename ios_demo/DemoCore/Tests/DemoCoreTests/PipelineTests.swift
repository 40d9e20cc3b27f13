import XCTest

@testable import DemoCore

/// Wraps a runner to inject loop bugs.
final class ClosureRunner: MethodRunner {
    let body: (String, [Tensor]) throws -> [Tensor]
    init(_ body: @escaping (String, [Tensor]) throws -> [Tensor]) { self.body = body }
    func run(method: String, inputs: [Tensor]) throws -> [Tensor] { try body(method, inputs) }
}

final class PipelineTests: XCTestCase {
    let g = TestFiles.golden
    var encoder: PromptEncoder { try! PromptEncoder(ByteTokenizer(), maxTokens: g.manifest.tokenizer.maxTokens) }

    func pipeline(_ r: MethodRunner, _ m: Manifest? = nil) -> Pipeline {
        Pipeline(manifest: m ?? g.manifest, runner: r, encoder: encoder)
    }

    func assertMismatch(_ body: () throws -> Void, startsWith prefix: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            guard let m = e as? ReplayMismatch else { return XCTFail("not a replay mismatch: \(e)", file: file, line: line) }
            XCTAssertTrue(m.message.hasPrefix(prefix), m.message, file: file, line: line)
        }
    }

    func testReplayOfTheRecordedRunPasses() {
        let r = SelfCheck.replay(g)
        XCTAssertTrue(r.passed, r.description)
    }

    func testTokensAndListenerFollowTheRecording() throws {
        var seen = [String]()
        let gen = try pipeline(ReplayRunner(g.run)).generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg) {
            _, total, method, _, tokens in
            XCTAssertEqual(total, 13)
            if let t = tokens { seen.append("\(method):\(t.numel)") }
        }
        let sizes = [1, 4, 9, 16, 25, 36, 64, 100, 169, 256]
        XCTAssertEqual(seen, sizes.enumerated().map { String(format: "scale_%02d:%d", $0.offset, $0.element) })
        for (k, v) in g.run.tokens { XCTAssertEqual(gen.tokens[k]?.longs, v, k) }
        XCTAssertEqual(gen.image.shape, [1, 3, 256, 256])
        XCTAssertEqual(gen.timingsMs.map(\.0), ["tokenize"] + g.manifest.methods.map(\.name))
    }

    func testWrongSeedFailsOnTheFirstNoise() {
        assertMismatch(
            { _ = try pipeline(ReplayRunner(g.run)).generate(prompt: g.run.prompt, seed: g.run.seed + 1, cfg: g.run.cfg) },
            startsWith: "scale_00 input #3 'noise_u'")
    }

    func testWrongPromptFailsOnTokenIds() {
        assertMismatch(
            { _ = try pipeline(ReplayRunner(g.run)).generate(prompt: "a lighthouse at dawn", seed: g.run.seed, cfg: g.run.cfg) },
            startsWith: "text_encoder input #0 'token_ids'")
    }

    func testWrongCfgFails() {
        assertMismatch(
            { _ = try pipeline(ReplayRunner(g.run)).generate(prompt: g.run.prompt, seed: g.run.seed, cfg: 3.0) },
            startsWith: "scale_00 input #2 'cfg'")
    }

    /// A loop bug: scale_03 gets scale_01's f_hat (stale env) instead of scale_02's.
    func testStaleEnvTensorIsCaught() {
        let replay = ReplayRunner(g.run)
        var stale: Tensor?
        let buggy = ClosureRunner { method, inputs in
            var ins = inputs
            if method == "scale_03" { ins[1] = stale! }
            let outs = try replay.run(method: method, inputs: ins)
            if method == "scale_01" { stale = outs[1] }
            return outs
        }
        assertMismatch(
            { _ = try pipeline(buggy).generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg) },
            startsWith: "scale_03 input #1 'f_hat'")
    }

    /// A loop bug: the diffusion noise streams in another order.
    func testSwappedNoiseStreamsAreCaught() throws {
        var o = TestFiles.manifestJSON()
        var ms = o["methods"] as! [[String: Any]]
        var inputs = ms[11]["inputs"] as! [[String: Any]]
        inputs[2]["rng"] = ["dist": "normal", "streams": [2000, 2001, 2002, 2003, 2004, 2005, 2006, 2007]]
        ms[11]["inputs"] = inputs
        o["methods"] = ms
        let p = pipeline(ReplayRunner(g.run), try Manifest.parse(o))
        assertMismatch(
            { _ = try p.generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg) }, startsWith: "diffusion_head input #2 'noise'")
    }

    func testSkippedMethodIsCaught() throws {
        var o = TestFiles.manifestJSON()
        var ms = Array((o["methods"] as! [[String: Any]]).dropFirst())
        var inputs = ms[0]["inputs"] as! [[String: Any]]
        inputs[0] = ["name": "token_ids", "shape": [1, 300], "dtype": "int64", "source": "tokenizer"]
        ms[0]["inputs"] = inputs
        o["methods"] = ms
        let p = pipeline(ReplayRunner(g.run), try Manifest.parse(o))
        assertMismatch(
            { _ = try p.generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg) },
            startsWith: "call #0: app ran 'scale_00', the recording ran 'text_encoder'")
    }

    func testWrongOutputCountOrShapeIsAnError() {
        XCTAssertThrowsError(try pipeline(ClosureRunner { _, _ in [] }).generate(prompt: "x", seed: 1, cfg: 4.5))
        let wrong = ClosureRunner { _, _ in [Tensor.zeros([1, 300, 7], .float32)] }
        XCTAssertThrowsError(try pipeline(wrong).generate(prompt: "x", seed: 1, cfg: 4.5)) {
            XCTAssertTrue("\($0)".contains("context"), "\($0)")
        }
    }

    func testCancelStopsBetweenMethods() {
        let token = CancelToken()
        let replay = ReplayRunner(g.run)
        let r = ClosureRunner { method, inputs in
            if method == "scale_02" { token.cancel() }
            return try replay.run(method: method, inputs: inputs)
        }
        XCTAssertThrowsError(try pipeline(r).generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg, cancel: token)) {
            XCTAssertTrue($0 is CancelledError)
        }
        XCTAssertEqual(replay.calls.count, 4)
    }

    func testNegativeSeedIsRejected() {
        XCTAssertThrowsError(try pipeline(ReplayRunner(g.run)).generate(prompt: "x", seed: -1, cfg: 4.5))
    }

    func testCompareRunnerAgreesWithAnIdenticalRunner() throws {
        let cmp = CompareRunner(ReplayRunner(g.run), g.run)
        _ = try pipeline(cmp).generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg)
        XCTAssertEqual(cmp.tokensTotal, 680)
        XCTAssertEqual(cmp.tokensMatched, 680)
        XCTAssertTrue(cmp.outputs.allSatisfy { $0.maxAbsDiff < 1e-12 }, cmp.summary)  // JSON decimal -> Double parsing may be 1 ulp off
    }
}
