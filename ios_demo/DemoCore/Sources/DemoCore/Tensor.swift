import Foundation

/// Element types of the method contract (model/stages.py TensorSpec.dtype).
public enum DType: String, Sendable {
    case float32, float16, int64

    public var isFloat: Bool { self != .int64 }

    public static func parse(_ s: String) throws -> DType {
        guard let d = DType(rawValue: s) else {
            throw ManifestError("unsupported dtype '\(s)' (expected float32, float16 or int64)")
        }
        return d
    }
}

/// A dense row-major tensor. Float dtypes keep values in `floats` (float16 held as Float on the
/// host; runners convert at the boundary), int64 in `longs`. A class, so a runner can hand the
/// same object back and forth without copies.
public final class Tensor: CustomStringConvertible {
    public let shape: [Int]
    public let dtype: DType
    public let floats: [Float]?
    public let longs: [Int64]?

    public var numel: Int { shape.reduce(1, *) }

    public init(floats: [Float], shape: [Int], dtype: DType = .float32) {
        precondition(dtype.isFloat, "float data needs a float dtype")
        precondition(floats.count == shape.reduce(1, *), "data has \(floats.count) elements, shape \(shape) needs more/less")
        self.shape = shape
        self.dtype = dtype
        self.floats = floats
        self.longs = nil
    }

    public init(longs: [Int64], shape: [Int]) {
        precondition(longs.count == shape.reduce(1, *), "data has \(longs.count) elements, shape \(shape) needs more/less")
        self.shape = shape
        self.dtype = .int64
        self.floats = nil
        self.longs = longs
    }

    public static func zeros(_ shape: [Int], _ dtype: DType) -> Tensor {
        let n = shape.reduce(1, *)
        return dtype.isFloat
            ? Tensor(floats: [Float](repeating: 0, count: n), shape: shape, dtype: dtype)
            : Tensor(longs: [Int64](repeating: 0, count: n), shape: shape)
    }

    /// Element i widened to Double (exact for float32 and |int64| < 2^53).
    public func value(at i: Int) -> Double {
        if let f = floats { return Double(f[i]) }
        return Double(longs![i])
    }

    public var description: String { "Tensor(\(dtype.rawValue), \(shape))" }
}
