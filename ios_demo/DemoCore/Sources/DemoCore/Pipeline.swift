import Foundation

/// Runs one named method of the bundle; inputs and outputs in the manifest's order.
public protocol MethodRunner: AnyObject {
    func run(method: String, inputs: [Tensor]) throws -> [Tensor]
}

public struct CancelledError: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "generation cancelled" }
}

public struct PipelineError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// Cooperative cancel flag, checked between methods.
public final class CancelToken: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    public init() {}
    public var cancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return flag
    }
    public func cancel() {
        lock.lock()
        flag = true
        lock.unlock()
    }
}

/// After each method; `tokens` is the scale's sampled `idx` (nil for other methods).
public typealias PipelineListener = (_ index: Int, _ total: Int, _ method: String, _ ms: Double, _ tokens: Tensor?) -> Void

/// After each scale method: the latent the per-scale preview shows (PreviewProjection.scaleLatent: f_hat,
/// at the last scale f_hat + e_last), [B, C, G, G] float32.
public typealias LatentListener = (_ index: Int, _ method: String, _ latent: Tensor) -> Void

public struct Generation {
    public let image: Tensor
    public let tokens: [String: Tensor]
    /// `tokenize` then the methods, in call order.
    public let timingsMs: [(String, Double)]
}

/// The app-side copy of runtime_py/pipeline.py: tokenize into the env; for each method in manifest
/// order gather inputs by name and source (env / tokenizer / user cfg / portable rng / zeros), run,
/// store the outputs by name; a scale method's `idx` output leaves the env as that scale's tokens.
public final class Pipeline {
    public let manifest: Manifest
    public let runner: MethodRunner
    public let encoder: PromptEncoder
    /// Called with each scale's preview latent during generate (set it before calling generate).
    public var latentListener: LatentListener?

    public init(manifest: Manifest, runner: MethodRunner, encoder: PromptEncoder) {
        self.manifest = manifest
        self.runner = runner
        self.encoder = encoder
    }

    static func nowNs() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    public func hostInput(_ spec: TensorSpec, env: [String: Tensor], seed: UInt64, cfg: Float) throws -> Tensor {
        switch spec.source {
        case .env:
            guard let t = env[spec.name] else { throw PipelineError("input '\(spec.name)' is not produced by any earlier method") }
            return t
        case .user:
            return Tensor(floats: [Float](repeating: cfg, count: spec.numel), shape: spec.shape, dtype: spec.dtype)
        case .rng:
            return try Philox.drawNoise(spec, seed: seed)
        case .zeros:
            return Tensor.zeros(spec.shape, spec.dtype)
        case .tokenizer:
            guard let t = env[spec.name] else { throw PipelineError("tokenizer gave no '\(spec.name)'") }
            return Pipeline.convert(t, to: spec.dtype)
        }
    }

    public func generate(
        prompt: String, seed: Int64, cfg: Float, listener: PipelineListener? = nil, cancel: CancelToken? = nil
    ) throws -> Generation {
        guard seed >= 0 else { throw PipelineError("seed must be >= 0") }
        var t0 = Pipeline.nowNs()
        let (ids, mask) = try encoder.encode(prompt)
        var env: [String: Tensor] = ["token_ids": ids, "context_mask": mask]
        var timings: [(String, Double)] = [("tokenize", Double(Pipeline.nowNs() - t0) / 1e6)]
        var tokens = [String: Tensor]()
        for (i, m) in manifest.methods.enumerated() {
            if cancel?.cancelled == true { throw CancelledError() }
            let inputs = try m.inputs.map { try hostInput($0, env: env, seed: UInt64(seed), cfg: cfg) }
            for (s, t) in zip(m.inputs, inputs) where t.shape != s.shape {
                throw PipelineError("\(m.name): input \(s.name) has shape \(t.shape), expected \(s.shape)")
            }
            t0 = Pipeline.nowNs()
            let outs = try runner.run(method: m.name, inputs: inputs)
            let ms = Double(Pipeline.nowNs() - t0) / 1e6
            timings.append((m.name, ms))
            guard outs.count == m.outputs.count else {
                throw PipelineError("\(m.name): runner returned \(outs.count) outputs, spec has \(m.outputs.count)")
            }
            for (s, t) in zip(m.outputs, outs) where t.shape != s.shape {
                throw PipelineError("\(m.name): output \(s.name) has shape \(t.shape), expected \(s.shape)")
            }
            if let onLatent = latentListener, m.name.hasPrefix("scale_") {
                let named = Dictionary(zip(m.outputs.map(\.name), outs), uniquingKeysWith: { a, _ in a })
                if let latent = PreviewProjection.scaleLatent(outputs: named, env: env) { onLatent(i, m.name, latent) }
            }
            for (s, t) in zip(m.outputs, outs) { env[s.name] = t }
            var idx: Tensor?
            if m.name.hasPrefix("scale_"), let t = env.removeValue(forKey: "idx") {
                idx = t
                tokens[m.name] = t
            }
            listener?(i, manifest.methods.count, m.name, ms, idx)
        }
        guard let image = env["image"] else { throw PipelineError("no method produced 'image'") }
        return Generation(image: image, tokens: tokens, timingsMs: timings)
    }

    public static func convert(_ t: Tensor, to dtype: DType) -> Tensor {
        if t.dtype == dtype { return t }
        if dtype.isFloat, let f = t.floats { return Tensor(floats: f, shape: t.shape, dtype: dtype) }
        if dtype.isFloat { return Tensor(floats: t.longs!.map { Float($0) }, shape: t.shape, dtype: dtype) }
        return Tensor(longs: t.floats!.map { Int64($0) }, shape: t.shape)
    }
}
