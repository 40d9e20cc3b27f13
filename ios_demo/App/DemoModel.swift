import DemoCore
import Foundation
import SwiftUI

#if canImport(UIKit)
    import UIKit
#endif

/// Owns the bundle, the Core ML runner and the pipeline; model work runs on a background task.
/// Bundles are copied into the app's Documents/bundle folder (Finder / Files app, see README).
@MainActor
final class DemoModel: ObservableObject {
    @Published var prompt = "a lighthouse at dusk"
    @Published var seed = "7"
    @Published var cfg = "4.5"
    @Published var running = false
    @Published var status = "Ready"
    @Published var preview: CGImage?
    @Published var checks = [CheckResult]()

    private var cancelToken: CancelToken?
    private var session: (ModelBundle, Pipeline, MethodRunner)?

    var bundleDir: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("bundle")
    }

    static func cgImage(rgba: [UInt8], width: Int, height: Int) -> CGImage? {
        let data = Data(rgba) as CFData
        guard let provider = CGDataProvider(data: data) else { return nil }
        return CGImage(
            width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
            space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
            provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }

    private func loadSession() async throws -> (ModelBundle, Pipeline, MethodRunner) {
        if let s = session { return s }
        status = "Loading bundle…"
        let bundle = try ModelBundle.open(bundleDir)
        #if canImport(CoreML)
            guard #available(iOS 18.0, macOS 15.0, *) else { throw PipelineError("Core ML states need iOS 18") }
            let runner: MethodRunner = try await CoreMLRunner.load(bundle: bundle)
        #else
            throw PipelineError("Core ML is not available on this platform")
        #endif
        let s = (bundle, Pipeline(manifest: bundle.manifest, runner: runner, encoder: try bundle.promptEncoder()), runner)
        session = s
        return s
    }

    private func work(_ body: @escaping () async throws -> Void) {
        guard !running else { return }
        running = true
        checks = []
        Task {
            do {
                try await body()
            } catch is CancelledError {
                status = "Cancelled"
            } catch {
                status = "Error: \(error)"
            }
            running = false
        }
    }

    func generate() {
        work { [self] in
            let (_, pipeline, _) = try await loadSession()
            let token = CancelToken()
            cancelToken = token
            let (p, s, c) = (prompt, Int64(seed) ?? 0, Float(cfg) ?? 4.5)
            // the manifest's latent-to-RGB projection when it has one (model/preview.py), else hashed token colours
            let projection = pipeline.manifest.preview
            pipeline.latentListener = projection.map { proj in
                { _, _, latent in
                    guard let rgba = try? proj.toRGBA(latent, size: 256) else { return }
                    Task { @MainActor in self.preview = Self.cgImage(rgba: rgba, width: 256, height: 256) }
                }
            }
            let gen = try await Task.detached(priority: .userInitiated) {
                try pipeline.generate(prompt: p, seed: s, cfg: c, cancel: token) { index, total, method, _, tokens in
                    let preview = projection == nil ? tokens.map { Pixels.tokenPreview($0.longs!, size: 256) } : nil
                    Task { @MainActor in
                        self.status = "Running \(method) (\(index + 1)/\(total))"
                        if let rgba = preview { self.preview = Self.cgImage(rgba: rgba, width: 256, height: 256) }
                    }
                }
            }.value
            let side = gen.image.shape.last!
            preview = Self.cgImage(rgba: try Pixels.toRGBA(gen.image), width: side, height: side)
            status = String(format: "Done in %.0f ms", gen.timingsMs.reduce(0) { $0 + $1.1 })
        }
    }

    func cancel() { cancelToken?.cancel() }

    /// Portable self-check (golden resource), bundle sha256 check, and a real run compared with the recording.
    func verify() {
        work { [self] in
            guard let url = Bundle.main.url(forResource: "app_golden", withExtension: "json") else {
                throw PipelineError("app_golden.json is not in the app bundle")
            }
            let golden = try AppGolden(data: Data(contentsOf: url))
            var results = SelfCheck.all(golden)
            checks = results
            if FileManager.default.fileExists(atPath: bundleDir.appendingPathComponent("manifest.json").path) {
                let manifest = try ModelBundle.open(bundleDir, verifyFiles: false).manifest
                let problems = ModelBundle.verify(bundleDir, manifest)
                results.append(
                    CheckResult(
                        name: "bundle files", passed: problems.isEmpty,
                        detail: problems.isEmpty ? "sha256 and size of every file match" : problems.joined(separator: "; ")))
                let (bundle, _, runner) = try await loadSession()
                if let index = bundle.manifest.goldenIndex {
                    let golden = try BundleGolden.load(bundleDir: bundle.dir, index: index)
                    let manifest = bundle.manifest
                    let report = try await Task.detached { try golden.check(manifest, runner: runner) }.value
                    let detail = String(format: "token agreement %.4f, min SQNR %.1f dB", report.tokenAgreement, report.minSqnrDb)
                    results.append(
                        CheckResult(
                            name: "golden tensors (bundle)", passed: report.passed,
                            detail: report.passed ? detail : detail + "; " + report.failures.joined(separator: ", ")))
                }
                if bundle.manifest.methods.map(\.name) == golden.manifest.methods.map(\.name),
                    bundle.manifest.model == golden.manifest.model
                {
                    let cmp = CompareRunner(runner, golden.run)
                    let pipeline = Pipeline(manifest: bundle.manifest, runner: cmp, encoder: try bundle.promptEncoder())
                    let run = golden.run
                    _ = try await Task.detached { try pipeline.generate(prompt: run.prompt, seed: run.seed, cfg: run.cfg) }.value
                    results.append(
                        CheckResult(name: "real run vs reference", passed: cmp.tokensMatched == cmp.tokensTotal, detail: cmp.summary))
                }
            } else {
                results.append(CheckResult(name: "bundle files", passed: false, detail: "no bundle at \(bundleDir.path)"))
            }
            checks = results
            status = "\(results.filter(\.passed).count)/\(results.count) checks passed"
        }
    }

    func benchmark(runs: Int = 3) {
        work { [self] in
            let (bundle, pipeline, _) = try await loadSession()
            let token = CancelToken()
            cancelToken = token
            status = "Benchmark: \(runs) runs…"
            let (p, s, c) = (prompt, Int64(seed) ?? 0, Float(cfg) ?? 4.5)
            #if canImport(UIKit)
                let device = UIDevice.current.model
            #else
                let device = Host.current().localizedName ?? "mac"
            #endif
            let name = bundle.dir.lastPathComponent
            let json = try await Task.detached {
                try Benchmark.run(
                    pipeline, prompt: p, seed: s, cfg: c, runs: runs, warmup: 1, device: device, bundleName: name, cancel: token)
            }.value
            let out = bundleDir.deletingLastPathComponent().appendingPathComponent("benchmark.json")
            try Benchmark.jsonData(json).write(to: out)
            status = "Benchmark written to \(out.lastPathComponent) (Files app)"
        }
    }
}
