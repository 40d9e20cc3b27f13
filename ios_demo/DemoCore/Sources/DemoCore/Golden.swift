import Foundation

public struct GoldenRngCase {
    public let seed: UInt64
    public let spec: TensorSpec
    public let bits: [UInt32]
}

public struct GoldenTokenizerCase {
    public let text: String
    public let ids: [Int]
    public let maskSum: Int
}

public struct GoldenTokenizer {
    public let name: String
    public let padId: Int
    public let maxTokens: Int
    public let json: [String: Any]
    public let cases: [GoldenTokenizerCase]
}

public struct CheckResult: CustomStringConvertible {
    public let name: String
    public let passed: Bool
    public let detail: String
    public var description: String { "\(passed ? "PASS" : "FAIL") \(name): \(detail)" }
}

/// docs/app_golden.json, written by tools/make_app_golden.py from the Python reference.
public struct AppGolden {
    public let root: [String: Any]
    public let manifest: Manifest
    public let rng: [GoldenRngCase]
    public let tokenizers: [GoldenTokenizer]
    public let run: Recording
    public let pixels: [String: Any]

    public init(data: Data) throws {
        let root = try J.object(J.parse(data), "app golden")
        guard try J.int(root["schema_version"], "schema_version") == 1 else {
            throw ManifestError("app golden schema_version is not 1")
        }
        self.root = root
        manifest = try Manifest.parse(J.object(root["manifest"], "manifest"))
        rng = try J.array(root["rng"], "rng").map {
            let c = try J.object($0, "rng case")
            let dist = try J.string(c["dist"], "dist") == "uniform" ? Dist.uniform : Dist.normal
            let streams = try J.array(c["streams"], "streams").map { UInt64(try J.int64($0, "stream")) }
            let spec = TensorSpec(
                name: "noise", shape: try J.ints(c["shape"], "shape"), dtype: .float32, source: .rng,
                rng: RngSpec(dist: dist, streams: streams))
            let bits = try J.array(c["bits"], "bits").map { UInt32(try J.string($0, "bits"), radix: 16)! }
            return GoldenRngCase(seed: UInt64(try J.int64(c["seed"], "seed")), spec: spec, bits: bits)
        }
        tokenizers = try J.array(root["tokenizers"], "tokenizers").map {
            let o = try J.object($0, "tokenizer")
            return GoldenTokenizer(
                name: try J.string(o["name"], "name"), padId: try J.int(o["pad_id"], "pad_id"),
                maxTokens: try J.int(o["max_tokens"], "max_tokens"), json: try J.object(o["tokenizer_json"], "tokenizer_json"),
                cases: try J.array(o["cases"], "cases").map {
                    let c = try J.object($0, "case")
                    return GoldenTokenizerCase(
                        text: try J.string(c["text"], "text"), ids: try J.ints(c["ids"], "ids"),
                        maskSum: try J.int(c["mask_sum"], "mask_sum"))
                })
        }
        run = try Recording.fromJSON(J.object(root["run"], "run"))
        pixels = try J.object(root["pixels"], "pixels")
    }

    public func tokenizer(_ name: String) throws -> GoldenTokenizer {
        guard let t = tokenizers.first(where: { $0.name == name }) else { throw ManifestError("no golden tokenizer \(name)") }
        return t
    }
}

/// The portable self-check the tests and the app's "Verify bundle" screen both run.
public enum SelfCheck {
    public static func rng(_ g: AppGolden) -> CheckResult {
        for (k, c) in g.rng.enumerated() {
            guard let got = try? Philox.drawNoise(c.spec, seed: c.seed).floats, got.count == c.bits.count else {
                return CheckResult(name: "rng", passed: false, detail: "case \(k): wrong count")
            }
            for i in got.indices {
                let e = Float(bitPattern: c.bits[i])
                let ok =
                    c.spec.rng!.dist == .uniform
                    ? got[i].bitPattern == c.bits[i] : Fingerprint.close(Double(got[i]), Double(e))
                if !ok { return CheckResult(name: "rng", passed: false, detail: "case \(k) element \(i): \(got[i]) != \(e)") }
            }
        }
        return CheckResult(
            name: "rng", passed: true, detail: "\(g.rng.count) pipeline draws (uniform bit-exact, normal within tolerance)")
    }

    public static func tokenizer(_ t: GoldenTokenizer) -> CheckResult {
        let name = "tokenizer \(t.name)"
        do {
            let enc = try PromptEncoder(HfTokenizer(json: t.json), maxTokens: t.maxTokens)
            if enc.padId != t.padId { return CheckResult(name: name, passed: false, detail: "pad id \(enc.padId) != \(t.padId)") }
            for c in t.cases {
                let ids = try enc.ids(c.text)
                if ids != c.ids {
                    let at = ids.indices.first { $0 >= c.ids.count || ids[$0] != c.ids[$0] } ?? ids.count
                    return CheckResult(
                        name: name, passed: false,
                        detail: "'\(c.text.prefix(30))': ids differ at \(at): \(ids.prefix(at + 3)) vs \(c.ids.prefix(at + 3))")
                }
                let mask = Int(try enc.encode(c.text).mask.floats!.reduce(0, +))
                if mask != c.maskSum {
                    return CheckResult(name: name, passed: false, detail: "'\(c.text.prefix(30))': mask sum \(mask) != \(c.maskSum)")
                }
            }
        } catch {
            return CheckResult(name: name, passed: false, detail: "\(error)")
        }
        return CheckResult(name: name, passed: true, detail: "\(t.cases.count) prompts match tokenizers")
    }

    public static func pixels(_ g: AppGolden) -> CheckResult {
        do {
            let p = g.pixels
            let bits = try J.array(p["bits"], "bits").map { UInt32(try J.string($0, "bits"), radix: 16)! }
            let u8 = try J.ints(p["uint8"], "uint8")
            for (i, b) in bits.enumerated() {
                let x = Float(bitPattern: b)
                let got = Int(Pixels.toUInt8(x))
                if got != u8[i] { return CheckResult(name: "pixels", passed: false, detail: "\(x) -> \(got), expected \(u8[i])") }
            }
            let img = try J.object(p["image"], "image")
            let shape = try J.ints(img["shape"], "shape")
            let t = Tensor(floats: try J.doubles(img["chw"], "chw").map { Float($0) }, shape: shape)
            let rgba = try Pixels.toRGBA(t).map { Int($0) }
            if rgba != (try J.ints(img["rgba"], "rgba")) { return CheckResult(name: "pixels", passed: false, detail: "rgba differs") }
            let argb = try Pixels.toARGB(t).map { Int($0) }
            if argb != (try J.ints(img["argb"], "argb")) { return CheckResult(name: "pixels", passed: false, detail: "argb differs") }
            return CheckResult(name: "pixels", passed: true, detail: "\(bits.count) values + a \(shape) image")
        } catch {
            return CheckResult(name: "pixels", passed: false, detail: "\(error)")
        }
    }

    /// Replays the recorded run through the app's own loop; any wiring difference fails.
    public static func replay(_ g: AppGolden) -> CheckResult {
        do {
            let bt = try g.tokenizer("byte_level")
            let encoder = try PromptEncoder(HfTokenizer(json: bt.json), maxTokens: bt.maxTokens)
            let runner = ReplayRunner(g.run)
            let gen = try Pipeline(manifest: g.manifest, runner: runner, encoder: encoder)
                .generate(prompt: g.run.prompt, seed: g.run.seed, cfg: g.run.cfg)
            if !runner.finished {
                return CheckResult(name: "replay", passed: false, detail: "only \(runner.calls.count) methods ran")
            }
            for (k, v) in g.run.tokens where gen.tokens[k]?.longs != v {
                return CheckResult(name: "replay", passed: false, detail: "\(k) tokens differ")
            }
            let img = Fingerprint.compare(runner.resolve(gen.image), g.run.image)
            if !img.isEmpty { return CheckResult(name: "replay", passed: false, detail: "image: \(img)") }
            return CheckResult(
                name: "replay", passed: true, detail: "\(runner.calls.count) methods, inputs and outputs match the recording")
        } catch {
            return CheckResult(name: "replay", passed: false, detail: "\(error)")
        }
    }

    public static func all(_ g: AppGolden) -> [CheckResult] {
        [rng(g)] + g.tokenizers.map { tokenizer($0) } + [pixels(g), replay(g)]
    }
}
