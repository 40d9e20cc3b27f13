package demo.core

/**
 * Portable Philox-4x32-10 RNG, bit-identical to model/rng.py (spec: docs/rng.md).
 * Words are held in Int (raw 32 bits); unsigned math goes through Long.
 */
object Philox {
    private const val M0 = 0xD2511F53L
    private const val M1 = 0xCD9E8D57L
    private const val W0 = 0x9E3779B9L.toInt()
    private const val W1 = 0xBB67AE85L.toInt()
    private const val MASK = 0xFFFFFFFFL
    private const val TWO_PI = 6.283185307179586

    /** The block function on one counter (4 words) and key (2 words). */
    fun block(
        counter: IntArray,
        key: IntArray,
        rounds: Int = 10,
    ): IntArray {
        require(counter.size == 4 && key.size == 2)
        val out = IntArray(4)
        blockInto(counter[0], counter[1], counter[2], counter[3], key[0], key[1], rounds, out, 0)
        return out
    }

    private fun blockInto(
        c0: Int,
        c1: Int,
        c2: Int,
        c3: Int,
        key0: Int,
        key1: Int,
        rounds: Int,
        out: IntArray,
        at: Int,
    ) {
        var x0 = c0
        var x1 = c1
        var x2 = c2
        var x3 = c3
        var k0 = key0
        var k1 = key1
        for (r in 0 until rounds) {
            if (r > 0) {
                k0 += W0
                k1 += W1
            }
            val p0 = M0 * (x0.toLong() and MASK) // exact: < 2^64, wraps in signed Long but bits are right
            val p1 = M1 * (x2.toLong() and MASK)
            val nx0 = (p1 ushr 32).toInt() xor x1 xor k0
            val nx1 = p1.toInt()
            val nx2 = (p0 ushr 32).toInt() xor x3 xor k1
            val nx3 = p0.toInt()
            x0 = nx0
            x1 = nx1
            x2 = nx2
            x3 = nx3
        }
        out[at] = x0
        out[at + 1] = x1
        out[at + 2] = x2
        out[at + 3] = x3
    }

    private fun checkArgs(
        seed: Long,
        stream: Long,
        n: Int,
        offset: Long,
    ) {
        require(seed >= 0) { "seed must be in [0, 2^63)" }
        require(stream >= 0) { "stream must be in [0, 2^63)" }
        require(n >= 0) { "n must be >= 0" }
        require(offset >= 0) { "offset must be >= 0" }
    }

    /** Words offset .. offset+n-1 of the (seed, stream) sequence. */
    fun words(
        seed: Long,
        stream: Long,
        n: Int,
        offset: Long = 0,
    ): IntArray {
        checkArgs(seed, stream, n, offset)
        val out = IntArray(n)
        if (n == 0) return out
        val k0 = seed.toInt()
        val k1 = (seed ushr 32).toInt()
        val s0 = stream.toInt()
        val s1 = (stream ushr 32).toInt()
        val first = offset / 4
        val skip = (offset % 4).toInt()
        val blocks = ((offset + n + 3) / 4 - first).toInt()
        val buf = IntArray(4)
        var w = 0
        for (b in 0 until blocks) {
            val i = first + b
            blockInto(i.toInt(), (i ushr 32).toInt(), s0, s1, k0, k1, 10, buf, 0)
            val from = if (b == 0) skip else 0
            for (j in from until 4) {
                if (w == n) break
                out[w++] = buf[j]
            }
        }
        return out
    }

    /** ((x >> 9) + 0.5) * 2^-23, exact in float32. */
    fun wordToUniform(x: Int): Float = ((x ushr 9).toFloat() + 0.5f) * (1.0f / 8388608.0f)

    fun uniform(
        seed: Long,
        stream: Long,
        n: Int,
        offset: Long = 0,
    ): FloatArray {
        val w = words(seed, stream, n, offset)
        return FloatArray(n) { wordToUniform(w[it]) }
    }

    /** Box-Muller on uniform pairs (2j, 2j+1), float64 math, one rounding to float32. */
    fun normal(
        seed: Long,
        stream: Long,
        n: Int,
        offset: Long = 0,
    ): FloatArray {
        val pairs = (n + 1) / 2
        val u = uniform(seed, stream, 2 * pairs, offset)
        val out = FloatArray(n)
        for (j in 0 until pairs) {
            val r = Math.sqrt(-2.0 * Math.log(u[2 * j].toDouble()))
            val theta = TWO_PI * u[2 * j + 1].toDouble()
            out[2 * j] = (r * Math.cos(theta)).toFloat()
            if (2 * j + 1 < n) out[2 * j + 1] = (r * Math.sin(theta)).toFloat()
        }
        return out
    }

    fun gumbel(
        seed: Long,
        stream: Long,
        n: Int,
        offset: Long = 0,
    ): FloatArray {
        val u = uniform(seed, stream, n, offset)
        return FloatArray(n) { (-Math.log(-Math.log(u[it].toDouble()))).toFloat() }
    }

    /** One rng input of the pipeline: the leading dim enumerates streams (runtime_py.pipeline.draw_noise). */
    fun drawNoise(
        spec: TensorSpec,
        seed: Long,
    ): Tensor {
        val rng = spec.rng ?: throw IllegalArgumentException("${spec.name} is not an rng input")
        require(rng.streams.size == spec.shape[0]) { "${spec.name}: ${rng.streams.size} streams for leading dim ${spec.shape[0]}" }
        val per = spec.numel / spec.shape[0]
        val data = FloatArray(spec.numel)
        for ((k, s) in rng.streams.withIndex()) {
            val part = if (rng.dist == Dist.UNIFORM) uniform(seed, s, per) else normal(seed, s, per)
            System.arraycopy(part, 0, data, k * per, per)
        }
        return Tensor.ofFloats(spec.shape, data, spec.dtype)
    }
}
