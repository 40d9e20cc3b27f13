import Foundation

/// A shrunk tensor as tools/make_app_golden.py writes it: full `values` when small (always for int64),
/// else the first/last `edge` values, the sequential Double sum, the sum of |x| and max |x|.
public struct Fingerprint {
    public static let fullMax = 64
    public static let edge = 16

    public let name: String?
    public let shape: [Int]
    public let dtype: String
    public let values: [Double]?
    public let head: [Double]?
    public let tail: [Double]?
    public let sum: Double
    public let absSum: Double
    public let maxAbs: Double

    public var numel: Int { shape.reduce(1, *) }

    public static func fromJSON(_ o: [String: Any]) throws -> Fingerprint {
        Fingerprint(
            name: o["name"] as? String,
            shape: try J.ints(o["shape"], "fingerprint shape"),
            dtype: try J.string(o["dtype"], "fingerprint dtype"),
            values: try o["values"].map { try J.doubles($0, "values") },
            head: try o["head"].map { try J.doubles($0, "head") },
            tail: try o["tail"].map { try J.doubles($0, "tail") },
            sum: (o["sum"] as? NSNumber)?.doubleValue ?? 0,
            absSum: (o["abs_sum"] as? NSNumber)?.doubleValue ?? 0,
            maxAbs: (o["max_abs"] as? NSNumber)?.doubleValue ?? 0)
    }

    public static func of(_ t: Tensor, name: String? = nil) -> Fingerprint {
        let n = t.numel
        if t.dtype == .int64 || n <= fullMax {
            return Fingerprint(
                name: name, shape: t.shape, dtype: t.dtype.rawValue, values: (0..<n).map { t.value(at: $0) },
                head: nil, tail: nil, sum: 0, absSum: 0, maxAbs: 0)
        }
        var sum = 0.0, abs = 0.0, mx = 0.0
        for i in 0..<n {
            let v = t.value(at: i)
            sum += v
            abs += Swift.abs(v)
            mx = Swift.max(mx, Swift.abs(v))
        }
        return Fingerprint(
            name: name, shape: t.shape, dtype: t.dtype.rawValue, values: nil,
            head: (0..<edge).map { t.value(at: $0) }, tail: (0..<edge).map { t.value(at: n - edge + $0) },
            sum: sum, absSum: abs, maxAbs: mx)
    }

    /// float32 tolerance of docs/rng.md for normals: 1e-6 absolute or about 2 ulps.
    public static func close(_ a: Double, _ e: Double) -> Bool { Swift.abs(a - e) <= 1e-6 + 2.5e-7 * Swift.abs(e) }

    /// Differences between an actual and an expected fingerprint; empty when they agree.
    public static func compare(_ actual: Fingerprint, _ expected: Fingerprint) -> [String] {
        var p = [String]()
        if actual.shape != expected.shape { return ["shape \(actual.shape) != \(expected.shape)"] }
        if actual.dtype != expected.dtype { p.append("dtype \(actual.dtype) != \(expected.dtype)") }
        let exact = expected.dtype == "int64"
        func cmp(_ what: String, _ a: [Double]?, _ e: [Double]?) {
            guard let e = e else { return }
            guard let a = a, a.count == e.count else {
                p.append("\(what): missing")
                return
            }
            if let bad = e.indices.first(where: { exact ? a[$0] != e[$0] : !close(a[$0], e[$0]) }) {
                p.append("\(what)[\(bad)] = \(a[bad]), expected \(e[bad])")
            }
        }
        cmp("values", actual.values, expected.values)
        cmp("head", actual.head, expected.head)
        cmp("tail", actual.tail, expected.tail)
        if expected.values == nil {
            let tol = 1e-6 * expected.absSum + 1e-9
            if Swift.abs(actual.sum - expected.sum) > tol { p.append("sum \(actual.sum) != \(expected.sum)") }
            if Swift.abs(actual.absSum - expected.absSum) > tol { p.append("abs_sum \(actual.absSum) != \(expected.absSum)") }
            if !close(actual.maxAbs, expected.maxAbs) { p.append("max_abs \(actual.maxAbs) != \(expected.maxAbs)") }
        }
        return p
    }
}

public struct RecordedMethod {
    public let name: String
    public let inputs: [Fingerprint]
    public let outputs: [Fingerprint]
}

/// One recorded reference generation (golden `run`).
public struct Recording {
    public let prompt: String
    public let seed: Int64
    public let cfg: Float
    public let methods: [RecordedMethod]
    public let tokens: [String: [Int64]]
    public let image: Fingerprint

    public static func fromJSON(_ o: [String: Any]) throws -> Recording {
        func fps(_ v: Any?) throws -> [Fingerprint] {
            try J.array(v, "fingerprints").map { try Fingerprint.fromJSON(J.object($0, "fingerprint")) }
        }
        let tok = try J.object(o["tokens"], "tokens")
        return Recording(
            prompt: try J.string(o["prompt"], "prompt"),
            seed: try J.int64(o["seed"], "seed"),
            cfg: Float(try J.double(o["cfg"], "cfg")),
            methods: try J.array(o["methods"], "methods").map {
                let m = try J.object($0, "method")
                return RecordedMethod(name: try J.string(m["name"], "name"), inputs: try fps(m["inputs"]), outputs: try fps(m["outputs"]))
            },
            tokens: try tok.mapValues { try J.array($0, "tokens").map { try J.int64($0, "token") } },
            image: try Fingerprint.fromJSON(J.object(o["image"], "image")))
    }
}

public struct ReplayMismatch: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// A MethodRunner that plays back a Recording: it returns the recorded outputs and FAILS when the app
/// calls methods in another order or passes inputs that differ from the recorded ones (token ids,
/// mask, cfg, every rng draw, and every env tensor, i.e. the wiring of the loop). Large recorded
/// outputs exist only as fingerprints, so they come back as tagged stand-ins (recorded head and tail,
/// middle filled with a marker naming the recorded output); when a stand-in is passed back as an
/// input, the marker maps it to the fingerprint it stands for. Same scheme as the Kotlin ReplayRunner.
public final class ReplayRunner: MethodRunner {
    private static let tagMask: UInt32 = 0xFFFF_0000
    private static let tagBase: UInt32 = 0xFEED_0000  // a finite negative Float no model emits

    private let recording: Recording
    private var next = 0
    private var tagged = [Fingerprint]()
    public private(set) var calls = [String]()

    public var finished: Bool { next == recording.methods.count }

    public init(_ recording: Recording) { self.recording = recording }

    public func run(method: String, inputs: [Tensor]) throws -> [Tensor] {
        calls.append(method)
        guard next < recording.methods.count else {
            throw ReplayMismatch(message: "call #\(next): app ran '\(method)' after the recording ended")
        }
        let rm = recording.methods[next]
        guard rm.name == method else {
            throw ReplayMismatch(message: "call #\(next): app ran '\(method)', the recording ran '\(rm.name)'")
        }
        next += 1
        guard inputs.count == rm.inputs.count else {
            throw ReplayMismatch(message: "\(method): app passed \(inputs.count) inputs, the recording has \(rm.inputs.count)")
        }
        for (i, t) in inputs.enumerated() {
            let expected = rm.inputs[i]
            let problems = Fingerprint.compare(resolve(t), expected)
            if !problems.isEmpty {
                throw ReplayMismatch(
                    message: "\(method) input #\(i) '\(expected.name ?? "?")': " + problems.joined(separator: "; "))
            }
        }
        return try rm.outputs.map { try standIn($0) }
    }

    /// The fingerprint a tensor stands for: its tag's recorded output, or its own content.
    public func resolve(_ t: Tensor) -> Fingerprint {
        if let k = tag(of: t) { return tagged[k] }
        return Fingerprint.of(t)
    }

    private func tag(of t: Tensor) -> Int? {
        guard let f = t.floats, f.count > 2 * Fingerprint.edge else { return nil }
        let bits = f[Fingerprint.edge].bitPattern
        guard bits & Self.tagMask == Self.tagBase else { return nil }
        for i in Fingerprint.edge..<(f.count - Fingerprint.edge) where f[i].bitPattern != bits { return nil }
        let k = Int(bits & 0xFFFF)
        return k < tagged.count ? k : nil
    }

    private func standIn(_ fp: Fingerprint) throws -> Tensor {
        let dtype = try DType.parse(fp.dtype)
        if let v = fp.values {
            return dtype == .int64
                ? Tensor(longs: v.map { Int64($0) }, shape: fp.shape)
                : Tensor(floats: v.map { Float($0) }, shape: fp.shape, dtype: dtype)
        }
        let k = tagged.count
        tagged.append(fp)
        let n = fp.numel
        var data = [Float](repeating: Float(bitPattern: Self.tagBase | UInt32(k)), count: n)
        for i in 0..<Fingerprint.edge {
            data[i] = Float(fp.head![i])
            data[n - Fingerprint.edge + i] = Float(fp.tail![i])
        }
        return Tensor(floats: data, shape: fp.shape, dtype: dtype)
    }
}

/// On-device check of a real runner against the recorded reference run: passes every call through,
/// measures how far each output is from the recording and how many sampled tokens agree. Reduced
/// precision legitimately drifts, so this reports; it does not fail.
public final class CompareRunner: MethodRunner {
    public struct OutputReport: CustomStringConvertible {
        public let method: String
        public let output: String
        public let maxAbsDiff: Double
        public let sumRelDiff: Double
        public var description: String {
            "\(method).\(output) max|Δ| \(String(format: "%.3g", maxAbsDiff)), sum rel Δ \(String(format: "%.3g", sumRelDiff))"
        }
    }

    private let inner: MethodRunner
    private let recording: Recording
    public private(set) var outputs = [OutputReport]()
    public private(set) var tokensMatched = 0
    public private(set) var tokensTotal = 0

    public init(_ inner: MethodRunner, _ recording: Recording) {
        self.inner = inner
        self.recording = recording
    }

    public func run(method: String, inputs: [Tensor]) throws -> [Tensor] {
        let outs = try inner.run(method: method, inputs: inputs)
        guard let rec = recording.methods.first(where: { $0.name == method }) else { return outs }
        for (t, fp) in zip(outs, rec.outputs) {
            let name = fp.name ?? "?"
            guard t.shape == fp.shape else {
                outputs.append(OutputReport(method: method, output: name, maxAbsDiff: .infinity, sumRelDiff: .infinity))
                continue
            }
            if t.dtype == .int64, let e = fp.values {
                let v = t.longs!
                tokensTotal += v.count
                tokensMatched += v.indices.filter { Double(v[$0]) == e[$0] }.count
                continue
            }
            let got = Fingerprint.of(t)
            var mx = 0.0
            if let e = fp.values {
                for i in e.indices { mx = max(mx, abs(got.values![i] - e[i])) }
                outputs.append(OutputReport(method: method, output: name, maxAbsDiff: mx, sumRelDiff: 0))
            } else {
                for i in 0..<Fingerprint.edge {
                    mx = max(mx, abs(got.head![i] - fp.head![i]), abs(got.tail![i] - fp.tail![i]))
                }
                let rel = abs(got.sum - fp.sum) / max(fp.absSum, 1e-12)
                outputs.append(OutputReport(method: method, output: name, maxAbsDiff: mx, sumRelDiff: rel))
            }
        }
        return outs
    }

    public var summary: String {
        "tokens agree \(tokensMatched)/\(tokensTotal); worst output "
            + (outputs.max(by: { $0.maxAbsDiff < $1.maxAbsDiff }).map { "\($0)" } ?? "none")
    }
}
