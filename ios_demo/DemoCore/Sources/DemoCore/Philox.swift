import Foundation

/// Portable Philox-4x32-10 RNG, bit-identical to model/rng.py (spec: docs/rng.md).
public enum Philox {
    static let m0: UInt32 = 0xD251_1F53
    static let m1: UInt32 = 0xCD9E_8D57
    static let w0: UInt32 = 0x9E37_79B9
    static let w1: UInt32 = 0xBB67_AE85
    static let twoPi = 6.283185307179586

    /// The block function on one counter (4 words) and key (2 words).
    public static func block(_ counter: [UInt32], _ key: [UInt32], rounds: Int = 10) -> [UInt32] {
        precondition(counter.count == 4 && key.count == 2)
        let b = block4(counter[0], counter[1], counter[2], counter[3], key[0], key[1], rounds: rounds)
        return [b.0, b.1, b.2, b.3]
    }

    @inline(__always)
    static func block4(
        _ c0: UInt32, _ c1: UInt32, _ c2: UInt32, _ c3: UInt32, _ key0: UInt32, _ key1: UInt32, rounds: Int = 10
    ) -> (UInt32, UInt32, UInt32, UInt32) {
        var x0 = c0, x1 = c1, x2 = c2, x3 = c3
        var k0 = key0, k1 = key1
        for r in 0..<rounds {
            if r > 0 {
                k0 &+= w0
                k1 &+= w1
            }
            let p0 = m0.multipliedFullWidth(by: x0)
            let p1 = m1.multipliedFullWidth(by: x2)
            let n0 = p1.high ^ x1 ^ k0
            let n2 = p0.high ^ x3 ^ k1
            x0 = n0
            x1 = p1.low
            x2 = n2
            x3 = p0.low
        }
        return (x0, x1, x2, x3)
    }

    /// Words offset ..< offset + n of the (seed, stream) sequence.
    public static func words(seed: UInt64, stream: UInt64, count n: Int, offset: UInt64 = 0) -> [UInt32] {
        precondition(seed < 1 << 63 && stream < 1 << 63, "seed and stream must be in [0, 2^63)")
        precondition(n >= 0)
        var out = [UInt32]()
        out.reserveCapacity(n)
        if n == 0 { return out }
        let k0 = UInt32(truncatingIfNeeded: seed), k1 = UInt32(truncatingIfNeeded: seed >> 32)
        let s0 = UInt32(truncatingIfNeeded: stream), s1 = UInt32(truncatingIfNeeded: stream >> 32)
        var blockIndex = offset / 4
        var skip = Int(offset % 4)
        while out.count < n {
            let b = block4(
                UInt32(truncatingIfNeeded: blockIndex), UInt32(truncatingIfNeeded: blockIndex >> 32), s0, s1, k0, k1)
            if skip == 0, out.count < n { out.append(b.0) }
            if skip <= 1, out.count < n { out.append(b.1) }
            if skip <= 2, out.count < n { out.append(b.2) }
            if out.count < n { out.append(b.3) }
            skip = 0
            blockIndex &+= 1
        }
        return out
    }

    /// ((x >> 9) + 0.5) * 2^-23, exact in Float.
    @inline(__always) public static func uniform(word x: UInt32) -> Float { (Float(x >> 9) + 0.5) * 0x1p-23 }

    public static func uniform(seed: UInt64, stream: UInt64, count n: Int, offset: UInt64 = 0) -> [Float] {
        words(seed: seed, stream: stream, count: n, offset: offset).map { uniform(word: $0) }
    }

    /// Box-Muller on uniform pairs (2j, 2j+1), Double math, one rounding to Float.
    public static func normal(seed: UInt64, stream: UInt64, count n: Int, offset: UInt64 = 0) -> [Float] {
        let pairs = (n + 1) / 2
        let u = uniform(seed: seed, stream: stream, count: 2 * pairs, offset: offset)
        var out = [Float](repeating: 0, count: n)
        for j in 0..<pairs {
            let r = (-2.0 * log(Double(u[2 * j]))).squareRoot()
            let theta = twoPi * Double(u[2 * j + 1])
            out[2 * j] = Float(r * cos(theta))
            if 2 * j + 1 < n { out[2 * j + 1] = Float(r * sin(theta)) }
        }
        return out
    }

    public static func gumbel(seed: UInt64, stream: UInt64, count n: Int, offset: UInt64 = 0) -> [Float] {
        uniform(seed: seed, stream: stream, count: n, offset: offset).map { Float(-log(-log(Double($0)))) }
    }

    /// One rng input of the pipeline: the leading dim enumerates streams (runtime_py.pipeline.draw_noise).
    public static func drawNoise(_ spec: TensorSpec, seed: UInt64) throws -> Tensor {
        guard let rng = spec.rng else { throw ManifestError("\(spec.name) is not an rng input") }
        guard rng.streams.count == spec.shape[0] else {
            throw ManifestError("\(spec.name): \(rng.streams.count) streams for leading dim \(spec.shape[0])")
        }
        let per = spec.numel / spec.shape[0]
        var data = [Float]()
        data.reserveCapacity(spec.numel)
        for s in rng.streams {
            data +=
                rng.dist == .uniform
                ? uniform(seed: seed, stream: s, count: per) : normal(seed: seed, stream: s, count: per)
        }
        return Tensor(floats: data, shape: spec.shape, dtype: spec.dtype)
    }
}
