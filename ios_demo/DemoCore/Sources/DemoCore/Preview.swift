import Foundation

/// Per-scale preview (model/preview.py): the manifest's `preview` section, an affine map from a latent
/// pixel (Cvae channels) to RGB. rgb[c] = clamp(bias[c] + sum_k weight[c][k] * latent[k], 0, 1) in Float
/// with k in order, then nearest upsampling with src = floor(dst * grid / size).
public struct PreviewProjection {
    public let channels: Int
    /// [3 * channels], row-major (weight[c][k] at c * channels + k).
    public let weight: [Float]
    public let bias: [Float]

    public init(channels: Int, weight: [Float], bias: [Float]) throws {
        guard channels > 0, weight.count == 3 * channels, bias.count == 3 else {
            throw ManifestError("preview projection needs weight [3, \(channels)] and bias [3]")
        }
        self.channels = channels
        self.weight = weight
        self.bias = bias
    }

    /// The manifest's `preview` section, nil when absent; a malformed one throws ManifestError.
    public static func parse(_ v: Any?) throws -> PreviewProjection? {
        if J.isNull(v) { return nil }
        let o = try J.object(v, "preview")
        let c = try J.int(o["latent_channels"], "preview.latent_channels")
        guard c > 0 else { throw ManifestError("preview.latent_channels must be a positive integer") }
        let rows = try J.array(o["weight"], "preview.weight")
        guard rows.count == 3 else { throw ManifestError("preview.weight must be [3, \(c)]") }
        var weight = [Float]()
        for r in rows {
            let row = try J.doubles(r, "preview.weight")
            guard row.count == c, row.allSatisfy({ $0.isFinite }) else {
                throw ManifestError("preview.weight must be [3, \(c)] finite numbers")
            }
            weight += row.map { Float($0) }
        }
        let bias = try J.doubles(o["bias"], "preview.bias")
        guard bias.count == 3, bias.allSatisfy({ $0.isFinite }) else { throw ManifestError("preview.bias must be 3 finite numbers") }
        return try PreviewProjection(channels: c, weight: weight, bias: bias.map { Float($0) })
    }

    /// [3 * h * w] colours on the latent grid of the first latent of [B, C, h, w].
    public func rgbGrid(_ latent: Tensor) throws -> [Float] {
        let s = latent.shape
        guard s.count == 4, s[1] == channels, let d = latent.floats else {
            throw PipelineError("preview latent must be a float [B, \(channels), h, w] tensor, got \(latent)")
        }
        let plane = s[2] * s[3]
        var out = [Float](repeating: 0, count: 3 * plane)
        for c in 0..<3 {
            for p in 0..<plane {
                var acc = bias[c]
                for k in 0..<channels { acc += weight[c * channels + k] * d[k * plane + p] }
                out[c * plane + p] = acc.isNaN ? 0 : min(max(acc, 0), 1)
            }
        }
        return out
    }

    /// RGBA8 bytes of a size x size preview, row-major (CGImage order).
    public func toRGBA(_ latent: Tensor, size: Int) throws -> [UInt8] {
        let rgb = try rgbGrid(latent)
        let (h, w) = (latent.shape[2], latent.shape[3])
        let plane = h * w
        var out = [UInt8](repeating: 255, count: size * size * 4)
        for y in 0..<size {
            let sy = y * h / size
            for x in 0..<size {
                let src = sy * w + x * w / size
                let o = 4 * (y * size + x)
                out[o] = Pixels.toUInt8(rgb[src])
                out[o + 1] = Pixels.toUInt8(rgb[plane + src])
                out[o + 2] = Pixels.toUInt8(rgb[2 * plane + src])
            }
        }
        return out
    }

    /// The latent a preview shows after a scale method (runtime_py/pipeline.py): its `f_hat` output, or at
    /// the last scale f_hat + e_last (e_last [B, G*G, C] transposed to [B, C, G, G]); nil otherwise.
    public static func scaleLatent(outputs: [String: Tensor], env: [String: Tensor]) -> Tensor? {
        if let f = outputs["f_hat"] { return Pipeline.convert(f, to: .float32) }
        guard let e = outputs["e_last"]?.floats, let fHat = env["f_hat"], let f = fHat.floats else { return nil }
        let s = fHat.shape
        let (c, plane) = (s[1], s[2] * s[3])
        var out = f
        for b in 0..<s[0] {
            for k in 0..<c {
                for p in 0..<plane { out[(b * c + k) * plane + p] += e[(b * plane + p) * c + k] }
            }
        }
        return Tensor(floats: out, shape: s)
    }
}
