import Foundation

/// Desktop check of a bundle folder before it goes on a phone, with the app's own code: manifest
/// validation, size + sha256 of every file, the tokenizer, and (when the bundle has golden/) a replay
/// of the golden run through Pipeline: the app loop must reproduce every golden input from the
/// prompt and seed alone. `swift run bundle-check BUNDLE_DIR`.
public enum BundleCheck {
    public static func run(_ dir: URL) -> [CheckResult] {
        var out = [CheckResult]()
        let bundle: ModelBundle
        do {
            bundle = try ModelBundle.open(dir)
            out.append(
                CheckResult(
                    name: "manifest + files", passed: true,
                    detail: "\(bundle.manifest.methods.count) methods, \(bundle.manifest.files.count) files verified"))
        } catch {
            out.append(CheckResult(name: "manifest + files", passed: false, detail: "\(error)"))
            return out
        }
        let encoder: PromptEncoder
        do {
            encoder = try bundle.promptEncoder()
            out.append(CheckResult(name: "tokenizer", passed: true, detail: "pad id \(encoder.padId), max \(encoder.maxTokens)"))
        } catch {
            out.append(CheckResult(name: "tokenizer", passed: false, detail: "\(error)"))
            return out
        }
        guard let index = bundle.manifest.goldenIndex else { return out }
        do {
            let golden = try BundleGolden.load(bundleDir: dir, index: index)
            let runner = ReplayRunner(try golden.recording(bundle.manifest))
            _ = try Pipeline(manifest: bundle.manifest, runner: runner, encoder: encoder)
                .generate(prompt: golden.prompt, seed: golden.seed, cfg: golden.cfg)
            out.append(
                CheckResult(
                    name: "golden replay", passed: runner.finished,
                    detail: "\(runner.calls.count) methods: the app loop reproduces every golden input"))
        } catch {
            out.append(CheckResult(name: "golden replay", passed: false, detail: "\(error)"))
        }
        return out
    }
}
