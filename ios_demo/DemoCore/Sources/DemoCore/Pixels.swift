import Foundation

/// runtime_py/images.py: uint8 = trunc(clamp(x, 0, 1) * 255) in Float; NaN maps to 0.
public enum Pixels {
    @inline(__always) public static func toUInt8(_ x: Float) -> UInt8 {
        if x.isNaN { return 0 }
        let c = x < 0 ? 0 : (x > 1 ? 1 : x)
        return UInt8(c * 255)
    }

    static func planes(_ image: Tensor) throws -> (h: Int, w: Int) {
        let s = image.shape
        guard (s.count == 3 || s.count == 4), s[s.count - 3] == 3, image.floats != nil else {
            throw PipelineError("image must be a float [3,H,W] or [B,3,H,W] tensor, got \(image)")
        }
        return (s[s.count - 2], s[s.count - 1])
    }

    /// First image of a CHW / BCHW float tensor to RGBA8 bytes, row-major (CGImage order).
    public static func toRGBA(_ image: Tensor) throws -> [UInt8] {
        let (h, w) = try planes(image)
        let d = image.floats!
        let plane = h * w
        var out = [UInt8](repeating: 255, count: plane * 4)
        for p in 0..<plane {
            out[4 * p] = toUInt8(d[p])
            out[4 * p + 1] = toUInt8(d[plane + p])
            out[4 * p + 2] = toUInt8(d[2 * plane + p])
        }
        return out
    }

    /// Packed 0xAARRGGBB (Android Bitmap order), as a signed Int32 like Kotlin's Int.
    public static func toARGB(_ image: Tensor) throws -> [Int32] {
        let rgba = try toRGBA(image)
        return stride(from: 0, to: rgba.count, by: 4).map { i in
            Int32(bitPattern: 0xFF00_0000 | UInt32(rgba[i]) << 16 | UInt32(rgba[i + 1]) << 8 | UInt32(rgba[i + 2]))
        }
    }

    /// Preview of a scale's tokens: a side x side grid, each id hashed to a stable colour, upsampled to
    /// size x size RGBA. A progress picture, not the image.
    public static func tokenPreview(_ idx: [Int64], size: Int) -> [UInt8] {
        let side = max(1, Int(Double(idx.count).squareRoot().rounded()))
        var out = [UInt8](repeating: 255, count: size * size * 4)
        for p in 0..<(size * size) {
            let y = p / size * side / size
            let x = p % size * side / size
            let k = y * side + x
            let id = k < idx.count ? idx[k] : 0
            let h = UInt32(truncatingIfNeeded: id &* 2_654_435_761)
            out[4 * p] = UInt8((h >> 16) & 0xFF)
            out[4 * p + 1] = UInt8((h >> 8) & 0xFF)
            out[4 * p + 2] = UInt8(h & 0xFF)
        }
        return out
    }
}
