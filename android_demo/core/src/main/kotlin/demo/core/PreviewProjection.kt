package demo.core

import org.json.JSONArray
import org.json.JSONObject

/**
 * Per-scale preview (model/preview.py): the manifest's `preview` section, an affine map from a latent
 * pixel (Cvae channels) to RGB. rgb[c] = clamp(bias[c] + sum_k weight[c][k] * latent[k], 0, 1) in
 * float32 with k in order, then nearest upsampling with src = floor(dst * grid / size).
 */
class PreviewProjection(
    val channels: Int,
    /** [3 * channels], row-major (weight[c][k] at c * channels + k). */
    val weight: FloatArray,
    val bias: FloatArray,
) {
    init {
        require(channels > 0 && weight.size == 3 * channels && bias.size == 3) {
            "preview projection needs weight [3, $channels] and bias [3]"
        }
    }

    /** [3 * h * w] colours on the latent grid of the first latent of [B, C, h, w]. */
    fun rgbGrid(latent: Tensor): FloatArray {
        val s = latent.shape
        if (s.size != 4 || s[1] != channels) {
            throw IllegalArgumentException("preview latent must be [B, $channels, h, w], got ${latent.shapeString()}")
        }
        val d = latent.floatData()
        val plane = s[2] * s[3]
        val out = FloatArray(3 * plane)
        for (c in 0 until 3) {
            for (p in 0 until plane) {
                var acc = bias[c]
                for (k in 0 until channels) acc += weight[c * channels + k] * d[k * plane + p]
                out[c * plane + p] = if (acc.isNaN()) 0f else acc.coerceIn(0f, 1f)
            }
        }
        return out
    }

    /** RGBA8 bytes of a [size] x [size] preview, row-major (CGImage / PNG order). */
    fun toRgba(
        latent: Tensor,
        size: Int,
    ): ByteArray {
        val h = latent.shape[2]
        val w = latent.shape[3]
        val rgb = rgbGrid(latent)
        val plane = h * w
        val out = ByteArray(size * size * 4)
        for (y in 0 until size) {
            val sy = y * h / size
            for (x in 0 until size) {
                val src = sy * w + x * w / size
                val o = 4 * (y * size + x)
                out[o] = Pixels.toUint8(rgb[src]).toByte()
                out[o + 1] = Pixels.toUint8(rgb[plane + src]).toByte()
                out[o + 2] = Pixels.toUint8(rgb[2 * plane + src]).toByte()
                out[o + 3] = 0xFF.toByte()
            }
        }
        return out
    }

    /** Packed ARGB_8888 ints (Android Bitmap order) of a [size] x [size] preview. */
    fun toArgb(
        latent: Tensor,
        size: Int,
    ): IntArray {
        val rgba = toRgba(latent, size)
        return IntArray(size * size) { p ->
            val r = rgba[4 * p].toInt() and 0xFF
            val g = rgba[4 * p + 1].toInt() and 0xFF
            val b = rgba[4 * p + 2].toInt() and 0xFF
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
    }

    companion object {
        /** The manifest's `preview` section, or null when absent; a malformed one is a ManifestException. */
        fun parse(o: Any?): PreviewProjection? {
            if (o == null || o == JSONObject.NULL) return null
            if (o !is JSONObject) throw ManifestException("preview must be an object")
            val c = o.optInt("latent_channels", -1)
            if (c <= 0) throw ManifestException("preview.latent_channels must be a positive integer")
            val rows = o.optJSONArray("weight")
            if (rows == null || rows.length() != 3) throw ManifestException("preview.weight must be [3, $c]")
            val weight = FloatArray(3 * c)
            for (r in 0 until 3) {
                val row = rows.optJSONArray(r)
                if (row == null || row.length() != c) throw ManifestException("preview.weight must be [3, $c]")
                for (k in 0 until c) weight[r * c + k] = finite(row, k, "preview.weight")
            }
            val b = o.optJSONArray("bias")
            if (b == null || b.length() != 3) throw ManifestException("preview.bias must be 3 numbers")
            return PreviewProjection(c, weight, FloatArray(3) { finite(b, it, "preview.bias") })
        }

        private fun finite(
            a: JSONArray,
            i: Int,
            what: String,
        ): Float {
            val v = a.optDouble(i, Double.NaN)
            if (!v.isFinite()) throw ManifestException("$what has a value that is not a finite number")
            return v.toFloat()
        }

        /**
         * The latent a preview shows after a scale method (runtime_py/pipeline.py): its `f_hat` output, or at
         * the last scale f_hat + e_last (e_last [B, G*G, C] transposed to [B, C, G, G]); null otherwise.
         */
        fun scaleLatent(
            outputs: Map<String, Tensor>,
            env: Map<String, Tensor>,
        ): Tensor? {
            outputs["f_hat"]?.let { return Pipeline.convert(it, DType.FLOAT32) }
            val e = outputs["e_last"] ?: return null
            val fHat = env["f_hat"] ?: return null
            val s = fHat.shape
            val c = s[1]
            val plane = s[2] * s[3]
            val f = fHat.floatData()
            val ed = e.floatData()
            val out = FloatArray(f.size)
            for (b in 0 until s[0]) {
                for (k in 0 until c) {
                    for (p in 0 until plane) {
                        val i = (b * c + k) * plane + p
                        out[i] = f[i] + ed[(b * plane + p) * c + k]
                    }
                }
            }
            return Tensor.ofFloats(s, out)
        }
    }
}
