package demo.core

/** runtime_py/images.py: uint8 = trunc(clamp(x, 0, 1) * 255) in float32; NaN maps to 0. */
object Pixels {
    fun toUint8(x: Float): Int {
        if (x.isNaN()) return 0
        val c =
            if (x < 0f) {
                0f
            } else if (x > 1f) {
                1f
            } else {
                x
            }
        return (c * 255f).toInt()
    }

    private fun planes(image: Tensor): Triple<Int, Int, Int> {
        val s = image.shape
        require(s.size == 3 || (s.size == 4 && s[0] >= 1)) { "image must be [3,H,W] or [B,3,H,W], got ${image.shapeString()}" }
        val c = s[s.size - 3]
        require(c == 3) { "image must have 3 channels, got $c" }
        return Triple(c, s[s.size - 2], s[s.size - 1])
    }

    /** First image of a CHW / BCHW float tensor to packed ARGB_8888 ints (Android Bitmap order). */
    fun toArgb(image: Tensor): IntArray {
        val (_, h, w) = planes(image)
        val d = image.floatData()
        val plane = h * w
        return IntArray(plane) { p ->
            val r = toUint8(d[p])
            val g = toUint8(d[plane + p])
            val b = toUint8(d[2 * plane + p])
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
    }

    /** First image to RGBA8 bytes, row-major (CGImage / PNG order). */
    fun toRgba(image: Tensor): ByteArray {
        val (_, h, w) = planes(image)
        val d = image.floatData()
        val plane = h * w
        val out = ByteArray(plane * 4)
        for (p in 0 until plane) {
            out[4 * p] = toUint8(d[p]).toByte()
            out[4 * p + 1] = toUint8(d[plane + p]).toByte()
            out[4 * p + 2] = toUint8(d[2 * plane + p]).toByte()
            out[4 * p + 3] = 0xFF.toByte()
        }
        return out
    }

    /**
     * Preview of a scale's sampled tokens: a side x side grid (side = sqrt(count)), each token id
     * hashed to a stable colour, upsampled to [outSize] x [outSize] ARGB. A progress picture, not the image.
     */
    fun tokenPreview(
        idx: LongArray,
        outSize: Int,
    ): IntArray {
        val side = Math.round(Math.sqrt(idx.size.toDouble())).toInt().coerceAtLeast(1)
        return IntArray(outSize * outSize) { p ->
            val y = p / outSize * side / outSize
            val x = p % outSize * side / outSize
            val id = idx.getOrElse(y * side + x) { 0L }
            val hsh = (id * 2654435761L).toInt()
            (0xFF shl 24) or (hsh and 0xFFFFFF)
        }
    }
}
