import DemoCore
import Foundation

#if canImport(CoreML)
    import CoreML

    /// MethodRunner over Core ML. Each manifest method is one function of one model package
    /// (multifunction packages: MLModelConfiguration.functionName); methods that list `states` share
    /// one MLState per package (the KV cache), created fresh at the first method of every image.
    /// Compute units come from the manifest (`coreml.compute_units`). Inputs/outputs use the manifest's
    /// `coreml_name` / `coreml_dtype` when the export renamed or retyped a tensor.
    ///
    /// NOT verified in this repository's CI (Linux has no Core ML): only parsed with `swiftc -parse`.
    @available(iOS 18.0, macOS 15.0, *)
    final class CoreMLRunner: MethodRunner {
        private let manifest: Manifest
        private var models = [String: MLModel]()  // method -> function model
        private var states = [String: MLState]()  // package file -> shared state
        private let firstMethod: String

        private init(manifest: Manifest, models: [String: MLModel]) {
            self.manifest = manifest
            self.models = models
            self.firstMethod = manifest.methods.first?.name ?? ""
        }

        static func computeUnits(_ name: String?) -> MLComputeUnits {
            switch name {
            case "cpu_only", "cpuOnly", "CPU_ONLY": return .cpuOnly
            case "cpu_and_gpu", "cpuAndGPU", "CPU_AND_GPU": return .cpuAndGPU
            case "cpu_and_ne", "cpuAndNeuralEngine", "CPU_AND_NE": return .cpuAndNeuralEngine
            default: return .all
            }
        }

        /// Compiles each package once (cached next to the app's caches) and loads one MLModel per method.
        static func load(bundle: ModelBundle) async throws -> CoreMLRunner {
            let units = computeUnits(bundle.manifest.computeUnits)
            var compiled = [String: URL]()
            var models = [String: MLModel]()
            for m in bundle.manifest.methods {
                guard let file = m.package ?? m.file else { throw PipelineError("method \(m.name) names no model package") }
                if compiled[file] == nil {
                    let src = bundle.url(file)
                    compiled[file] = src.pathExtension == "mlmodelc" ? src : try await MLModel.compileModel(at: src)
                }
                let config = MLModelConfiguration()
                config.computeUnits = units
                config.functionName = m.function
                models[m.name] = try await MLModel.load(contentsOf: compiled[file]!, configuration: config)
            }
            return CoreMLRunner(manifest: bundle.manifest, models: models)
        }

        func run(method: String, inputs: [Tensor]) throws -> [Tensor] {
            guard let model = models[method] else { throw PipelineError("no Core ML model for \(method)") }
            let spec = try manifest.method(method)
            if method == firstMethod { states.removeAll() }  // new image: fresh KV cache
            var features = [String: MLFeatureValue]()
            for (s, t) in zip(spec.inputs, inputs) {
                features[s.backendName ?? s.name] = MLFeatureValue(multiArray: try Self.multiArray(t, coremlDType: s.backendDType))
            }
            let provider = try MLDictionaryFeatureProvider(dictionary: features)
            let out: MLFeatureProvider
            if spec.states.isEmpty {
                out = try model.prediction(from: provider)
            } else {
                let key = spec.package ?? spec.file ?? method
                let state = states[key] ?? model.makeState()
                states[key] = state
                out = try model.prediction(from: provider, using: state)
            }
            return try spec.outputs.map { s in
                guard let a = out.featureValue(for: s.backendName ?? s.name)?.multiArrayValue else {
                    throw PipelineError("\(method): Core ML output \(s.backendName ?? s.name) missing")
                }
                return try Self.tensor(a, spec: s)
            }
        }

        static func multiArray(_ t: Tensor, coremlDType: String?) throws -> MLMultiArray {
            let shape = t.shape.map { NSNumber(value: $0) }
            switch (t.dtype, coremlDType) {
            case (.int64, _):
                let a = try MLMultiArray(shape: shape, dataType: .int32)
                let src = t.longs!
                a.withUnsafeMutableBufferPointer(ofType: Int32.self) { p, _ in
                    for i in 0..<src.count { p[i] = Int32(truncatingIfNeeded: src[i]) }
                }
                return a
            case (_, "float16"), (.float16, _):
                let a = try MLMultiArray(shape: shape, dataType: .float16)
                let src = t.floats!
                #if arch(arm64)
                    a.withUnsafeMutableBufferPointer(ofType: Float16.self) { p, _ in
                        for i in 0..<src.count { p[i] = Float16(src[i]) }
                    }
                #else
                    for i in 0..<src.count { a[i] = NSNumber(value: src[i]) }
                #endif
                return a
            default:
                let a = try MLMultiArray(shape: shape, dataType: .float32)
                let src = t.floats!
                a.withUnsafeMutableBufferPointer(ofType: Float.self) { p, _ in
                    for i in 0..<src.count { p[i] = src[i] }
                }
                return a
            }
        }

        /// Reads any Core ML array (possibly strided, fp16/fp32/int32) into a contiguous host tensor.
        static func tensor(_ a: MLMultiArray, spec: TensorSpec) throws -> Tensor {
            let n = a.count
            guard n == spec.numel else { throw PipelineError("\(spec.name): Core ML returned \(n) elements, spec has \(spec.numel)") }
            if spec.dtype == .int64 {
                return Tensor(longs: (0..<n).map { a[$0].int64Value }, shape: spec.shape)
            }
            if a.dataType == .float32, a.strides == contiguousStrides(a.shape.map(\.intValue)).map({ NSNumber(value: $0) }) {
                var out = [Float](repeating: 0, count: n)
                a.withUnsafeBufferPointer(ofType: Float.self) { p in for i in 0..<n { out[i] = p[i] } }
                return Tensor(floats: out, shape: spec.shape)
            }
            return Tensor(floats: (0..<n).map { a[$0].floatValue }, shape: spec.shape)
        }

        static func contiguousStrides(_ shape: [Int]) -> [Int] {
            var s = [Int](repeating: 1, count: shape.count)
            for i in stride(from: shape.count - 2, through: 0, by: -1) { s[i] = s[i + 1] * shape[i + 1] }
            return s
        }
    }
#endif
