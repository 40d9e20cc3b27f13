package demo.core

import org.json.JSONArray
import org.json.JSONObject

/**
 * A shrunk tensor as tools/make_app_golden.py writes it: full [values] when small (always for int64),
 * else the first/last [EDGE] values, the sequential float64 sum, the sum of |x| and max |x|.
 */
class Fingerprint(
    val name: String?,
    val shape: IntArray,
    val dtype: String,
    val values: DoubleArray?,
    val head: DoubleArray?,
    val tail: DoubleArray?,
    val sum: Double,
    val absSum: Double,
    val maxAbs: Double,
) {
    val numel: Int get() = shape.fold(1) { a, b -> a * b }

    companion object {
        const val FULL_MAX = 64
        const val EDGE = 16

        private fun doubles(a: JSONArray): DoubleArray = DoubleArray(a.length()) { a.getDouble(it) }

        fun fromJson(o: JSONObject): Fingerprint {
            val sj = o.getJSONArray("shape")
            return Fingerprint(
                name = if (o.has("name")) o.getString("name") else null,
                shape = IntArray(sj.length()) { sj.getInt(it) },
                dtype = o.getString("dtype"),
                values = o.optJSONArray("values")?.let { doubles(it) },
                head = o.optJSONArray("head")?.let { doubles(it) },
                tail = o.optJSONArray("tail")?.let { doubles(it) },
                sum = o.optDouble("sum", 0.0),
                absSum = o.optDouble("abs_sum", 0.0),
                maxAbs = o.optDouble("max_abs", 0.0),
            )
        }

        fun of(
            t: Tensor,
            name: String? = null,
        ): Fingerprint {
            val n = t.numel
            if (t.dtype == DType.INT64 || n <= FULL_MAX) {
                return Fingerprint(name, t.shape, t.dtype.jsonName, DoubleArray(n) { t.valueAt(it) }, null, null, 0.0, 0.0, 0.0)
            }
            var sum = 0.0
            var abs = 0.0
            var mx = 0.0
            for (i in 0 until n) {
                val v = t.valueAt(i)
                sum += v
                abs += Math.abs(v)
                if (Math.abs(v) > mx) mx = Math.abs(v)
            }
            return Fingerprint(
                name,
                t.shape,
                t.dtype.jsonName,
                null,
                DoubleArray(EDGE) { t.valueAt(it) },
                DoubleArray(EDGE) { t.valueAt(n - EDGE + it) },
                sum,
                abs,
                mx,
            )
        }

        /** float32 tolerance of docs/rng.md for normals: 1e-6 absolute or about 2 ulps. */
        fun close(
            a: Double,
            e: Double,
        ): Boolean = Math.abs(a - e) <= 1e-6 + 2.5e-7 * Math.abs(e)

        /** Differences between an [actual] and an [expected] fingerprint; empty when they agree. */
        fun compare(
            actual: Fingerprint,
            expected: Fingerprint,
        ): List<String> {
            val p = mutableListOf<String>()
            if (!actual.shape.contentEquals(expected.shape)) {
                p += "shape ${actual.shape.contentToString()} != ${expected.shape.contentToString()}"
                return p
            }
            if (actual.dtype != expected.dtype) p += "dtype ${actual.dtype} != ${expected.dtype}"
            val exact = expected.dtype == "int64"

            fun cmp(
                what: String,
                a: DoubleArray?,
                e: DoubleArray?,
            ) {
                if (e == null) return
                if (a == null || a.size != e.size) {
                    p += "$what: missing"
                    return
                }
                val bad = e.indices.firstOrNull { if (exact) a[it] != e[it] else !close(a[it], e[it]) }
                if (bad != null) p += "$what[$bad] = ${a[bad]}, expected ${e[bad]}"
            }
            cmp("values", actual.values, expected.values)
            cmp("head", actual.head, expected.head)
            cmp("tail", actual.tail, expected.tail)
            if (expected.values == null) {
                val tol = 1e-6 * expected.absSum + 1e-9
                if (Math.abs(actual.sum - expected.sum) > tol) p += "sum ${actual.sum} != ${expected.sum}"
                if (Math.abs(actual.absSum - expected.absSum) > tol) p += "abs_sum ${actual.absSum} != ${expected.absSum}"
                if (!close(actual.maxAbs, expected.maxAbs)) p += "max_abs ${actual.maxAbs} != ${expected.maxAbs}"
            }
            return p
        }
    }
}

class RecordedMethod(
    val name: String,
    val inputs: List<Fingerprint>,
    val outputs: List<Fingerprint>,
)

/** One recorded reference generation (golden `run`). */
class Recording(
    val prompt: String,
    val seed: Long,
    val cfg: Float,
    val methods: List<RecordedMethod>,
    val tokens: Map<String, LongArray>,
    val image: Fingerprint,
) {
    companion object {
        fun fromJson(o: JSONObject): Recording {
            fun fps(a: JSONArray) = (0 until a.length()).map { Fingerprint.fromJson(a.getJSONObject(it)) }
            val ms = o.getJSONArray("methods")
            val tok = o.getJSONObject("tokens")
            return Recording(
                prompt = o.getString("prompt"),
                seed = o.getLong("seed"),
                cfg = o.getDouble("cfg").toFloat(),
                methods =
                    (0 until ms.length()).map {
                        val m = ms.getJSONObject(it)
                        RecordedMethod(m.getString("name"), fps(m.getJSONArray("inputs")), fps(m.getJSONArray("outputs")))
                    },
                tokens =
                    tok.keys().asSequence().associateWith { k ->
                        val a = tok.getJSONArray(k)
                        LongArray(a.length()) { a.getLong(it) }
                    },
                image = Fingerprint.fromJson(o.getJSONObject("image")),
            )
        }
    }
}

class ReplayMismatchException(
    message: String,
) : Exception(message)

/**
 * A [MethodRunner] that plays back a [Recording]: it returns the recorded outputs and FAILS when the
 * app calls methods in another order or passes inputs that differ from the recorded ones (token ids,
 * mask, cfg, every rng draw, and every env tensor, i.e. the wiring of the loop).
 *
 * Large recorded outputs exist only as fingerprints, so they are returned as tagged stand-ins: the
 * recorded head and tail with the middle filled by a marker value that names the recorded output.
 * When a stand-in comes back as an input, the marker maps it to the fingerprint of the output it
 * stands for, which must equal the input the reference pipeline passed at that position. A stale
 * tensor (an earlier scale's f_hat, say) therefore fails as surely as a wrong value.
 */
class ReplayRunner(
    private val recording: Recording,
) : MethodRunner {
    private var next = 0
    private val tagged = ArrayList<Fingerprint>()
    val calls = ArrayList<String>()

    val finished: Boolean get() = next == recording.methods.size

    override fun run(
        method: String,
        inputs: List<Tensor>,
    ): List<Tensor> {
        calls += method
        val rm =
            recording.methods.getOrNull(next)
                ?: throw ReplayMismatchException("call #$next: app ran '$method' after the recording ended")
        if (rm.name != method) throw ReplayMismatchException("call #$next: app ran '$method', the recording ran '${rm.name}'")
        next++
        if (inputs.size != rm.inputs.size) {
            throw ReplayMismatchException("$method: app passed ${inputs.size} inputs, the recording has ${rm.inputs.size}")
        }
        for ((i, t) in inputs.withIndex()) {
            val expected = rm.inputs[i]
            val problems = Fingerprint.compare(resolve(t), expected)
            if (problems.isNotEmpty()) {
                throw ReplayMismatchException("$method input #$i '${expected.name}': " + problems.joinToString("; "))
            }
        }
        return rm.outputs.map { standIn(it) }
    }

    /** The fingerprint a tensor stands for: its tag's recorded output, or its own content. */
    fun resolve(t: Tensor): Fingerprint = tagOf(t)?.let { tagged[it] } ?: Fingerprint.of(t)

    private fun tagOf(t: Tensor): Int? {
        val f = t.floats ?: return null
        if (f.size <= 2 * Fingerprint.EDGE) return null
        val bits = f[Fingerprint.EDGE].toRawBits()
        if (bits and TAG_MASK != TAG_BASE) return null
        for (i in Fingerprint.EDGE until f.size - Fingerprint.EDGE) if (f[i].toRawBits() != bits) return null
        val k = bits and 0xFFFF
        return if (k < tagged.size) k else null
    }

    private fun standIn(fp: Fingerprint): Tensor {
        val dtype = DType.parse(fp.dtype)
        val v = fp.values
        if (v != null) {
            return if (dtype == DType.INT64) {
                Tensor.ofLongs(fp.shape, LongArray(v.size) { v[it].toLong() })
            } else {
                Tensor.ofFloats(fp.shape, FloatArray(v.size) { v[it].toFloat() }, dtype)
            }
        }
        require(dtype.isFloat) { "large int64 outputs are recorded in full" }
        val k = tagged.size
        require(k <= 0xFFFF)
        tagged += fp
        val n = fp.numel
        val marker = Float.fromBits(TAG_BASE or k)
        val data = FloatArray(n) { marker }
        for (i in 0 until Fingerprint.EDGE) {
            data[i] = fp.head!![i].toFloat()
            data[n - Fingerprint.EDGE + i] = fp.tail!![i].toFloat()
        }
        return Tensor.ofFloats(fp.shape, data, dtype)
    }

    companion object {
        private const val TAG_MASK = 0xFFFF0000.toInt()
        private const val TAG_BASE = 0xFEED0000.toInt() // a finite negative float32 no model emits
    }
}
