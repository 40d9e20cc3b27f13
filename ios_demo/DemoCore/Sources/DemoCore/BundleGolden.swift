import Foundation

/// A bundle's golden/ folder (export/bundle.py write_golden): eager reference inputs and outputs of
/// every method, raw little-endian C-order .bin files listed in golden/index.json. `check` is the
/// phone side of runtime_py/parity.py golden_check (same as the Kotlin BundleGolden): token agreement
/// over the int64 outputs named `idx`, SQNR over float outputs; every other int64 output (the split
/// layout's `start_pos`) is bookkeeping, not tokens, and must be exactly equal, else the report fails
/// naming the method and output.
public struct BundleGolden {
    public static let inf = 999.0
    /// The only int64 output counted as sampled tokens; other int64 outputs must match exactly.
    public static let tokens = "idx"

    public let prompt: String
    public let seed: Int64
    public let cfg: Float
    public let inputs: [String: [Tensor]]
    public let outputs: [String: [Tensor]]

    public struct Report {
        public let tokenAgreement: Double
        public let minSqnrDb: Double
        public let rows: [String]
        public let failures: [String]
        public var passed: Bool { failures.isEmpty }
    }

    public static func load(bundleDir: URL, index: String = "golden/index.json") throws -> BundleGolden {
        let indexURL = bundleDir.appendingPathComponent(index)
        let o = try J.object(J.parse(Data(contentsOf: indexURL)), "golden index")
        if let order = o["byte_order"] as? String, order != "little" { throw ManifestError("golden byte_order must be little") }
        var ins = [String: [(Int, Tensor)]]()
        var outs = [String: [(Int, Tensor)]]()
        for e in try J.array(o["tensors"], "tensors") {
            let t = try J.object(e, "golden tensor")
            let tensor = try readTensor(
                indexURL.deletingLastPathComponent().appendingPathComponent(try J.string(t["file"], "file")),
                shape: try J.ints(t["shape"], "shape"), dtype: try DType.parse(try J.string(t["dtype"], "dtype")))
            let method = try J.string(t["method"], "method")
            let entry = (try J.int(t["index"], "index"), tensor)
            if try J.string(t["io"], "io") == "in" {
                ins[method, default: []].append(entry)
            } else {
                outs[method, default: []].append(entry)
            }
        }
        func ordered(_ m: [String: [(Int, Tensor)]]) -> [String: [Tensor]] {
            m.mapValues { $0.sorted { $0.0 < $1.0 }.map(\.1) }
        }
        return BundleGolden(
            prompt: try J.string(o["prompt"], "prompt"), seed: try J.int64(o["seed"], "seed"), cfg: Float(try J.double(o["cfg"], "cfg")),
            inputs: ordered(ins), outputs: ordered(outs))
    }

    static func readTensor(_ url: URL, shape: [Int], dtype: DType) throws -> Tensor {
        let n = shape.reduce(1, *)
        let bytes = [UInt8](try Data(contentsOf: url))
        let width = dtype == .float16 ? 2 : (dtype == .float32 ? 4 : 8)
        guard bytes.count == n * width else {
            throw ManifestError("\(url.lastPathComponent): \(bytes.count) bytes, shape needs \(n * width)")
        }
        func word(_ i: Int, _ w: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in 0..<w { v |= UInt64(bytes[i * w + k]) << (8 * UInt64(k)) }
            return v
        }
        switch dtype {
        case .float32: return Tensor(floats: (0..<n).map { Float(bitPattern: UInt32(word($0, 4))) }, shape: shape)
        case .float16: return Tensor(floats: (0..<n).map { halfToFloat(UInt16(word($0, 2))) }, shape: shape, dtype: .float16)
        case .int64: return Tensor(longs: (0..<n).map { Int64(bitPattern: word($0, 8)) }, shape: shape)
        }
    }

    /// IEEE 754 binary16 -> Float (exact), without Float16 (unavailable on macOS x86_64).
    public static func halfToFloat(_ h: UInt16) -> Float {
        let sign: Float = h & 0x8000 != 0 ? -1 : 1
        let exp = Int((h >> 10) & 0x1F)
        let frac = Float(h & 0x3FF)
        switch exp {
        case 0: return sign * frac * 0x1p-24
        case 0x1F: return frac == 0 ? sign * .infinity : .nan
        default: return sign * (1 + frac / 1024) * Float(sign: .plus, exponent: exp - 15, significand: 1)
        }
    }

    /// The first few values of an int64 output, for a report row.
    static func shown(_ a: [Int64]) -> String {
        let head = a.prefix(8).map(String.init).joined(separator: ", ")
        return a.count <= 8 ? "[\(head)]" : "[\(head), …]"
    }

    public static func sqnr(_ ref: Tensor, _ got: Tensor) -> Double {
        var signal = 0.0
        var noise = 0.0
        for i in 0..<ref.numel {
            let r = ref.value(at: i)
            let d = r - got.value(at: i)
            signal += r * r
            noise += d * d
        }
        return noise == 0 ? inf : min(inf, 10 * log10(signal / noise))
    }

    public func check(_ manifest: Manifest, runner: MethodRunner, limits: [String: Double]? = nil, cancel: CancelToken? = nil) throws
        -> Report
    {
        var equal = 0
        var total = 0
        var minSqnr = Self.inf
        var rows = [String]()
        var inexact = [String]()
        for m in manifest.methods {
            if cancel?.cancelled == true { throw CancelledError() }
            guard let ins = inputs[m.name], let ref = outputs[m.name] else { throw ManifestError("golden has no tensors for \(m.name)") }
            let got = try runner.run(method: m.name, inputs: ins)
            for (i, s) in m.outputs.enumerated() {
                guard ref[i].shape == got[i].shape else {
                    throw PipelineError("\(m.name).\(s.name): shape \(got[i].shape) != \(ref[i].shape)")
                }
                if s.dtype == .int64, s.name != Self.tokens {
                    let a = ref[i].longs!, b = got[i].longs!
                    if a == b {
                        rows.append("\(m.name).\(s.name): int64 exact \(Self.shown(a))")
                    } else {
                        rows.append("\(m.name).\(s.name): int64 \(Self.shown(b)) != golden \(Self.shown(a))")
                        inexact.append("\(m.name).\(s.name): int64 output differs (exact match required)")
                    }
                } else if s.dtype == .int64 {
                    let a = ref[i].longs!, b = got[i].longs!
                    let eq = a.indices.filter { a[$0] == b[$0] }.count
                    equal += eq
                    total += a.count
                    rows.append(String(format: "%@.%@: token agreement %.4f", m.name, s.name, Double(eq) / Double(a.count)))
                } else {
                    let q = Self.sqnr(ref[i], got[i])
                    minSqnr = min(minSqnr, q)
                    rows.append(String(format: "%@.%@: SQNR %.2f dB", m.name, s.name, q))
                }
            }
        }
        let agreement = total == 0 ? 1.0 : Double(equal) / Double(total)
        let values = ["token_agreement": agreement, "sqnr_db": minSqnr]
        let failures =
            inexact
            + (limits ?? manifest.goldenLimits).sorted { $0.key < $1.key }.compactMap { k, v -> String? in
                let got = values[k] ?? Self.inf
                return got < v ? String(format: "%@ %.4g < %.4g", k, got, v) : nil
            }
        return Report(tokenAgreement: agreement, minSqnrDb: minSqnr, rows: rows, failures: failures)
    }

    /// The golden run as a Recording, so ReplayRunner can check the app loop against a real bundle's golden/.
    public func recording(_ manifest: Manifest) throws -> Recording {
        var methods = [RecordedMethod]()
        var tokens = [String: [Int64]]()
        var image: Fingerprint?
        for m in manifest.methods {
            guard let ins = inputs[m.name], let outs = outputs[m.name] else { throw ManifestError("golden has no tensors for \(m.name)") }
            methods.append(
                RecordedMethod(
                    name: m.name, inputs: zip(m.inputs, ins).map { Fingerprint.of($1, name: $0.name) },
                    outputs: zip(m.outputs, outs).map { Fingerprint.of($1, name: $0.name) }))
            for (s, t) in zip(m.outputs, outs) {
                if s.name == "idx", m.name.hasPrefix("scale_") { tokens[m.name] = t.longs }
                if s.name == "image" { image = Fingerprint.of(t, name: "image") }
            }
        }
        guard let img = image else { throw ManifestError("golden has no image output") }
        return Recording(prompt: prompt, seed: seed, cfg: cfg, methods: methods, tokens: tokens, image: img)
    }
}
