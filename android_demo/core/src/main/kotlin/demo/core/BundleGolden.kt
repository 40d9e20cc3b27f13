package demo.core

import org.json.JSONObject
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * A bundle's golden/ folder (export/bundle.py write_golden): eager reference inputs and outputs of
 * every method, raw little-endian C-order .bin files listed in golden/index.json. [check] is the
 * phone side of runtime_py/parity.py golden_check: every method on its golden inputs, in call order
 * (the KV cache carries between scale methods), outputs compared by token agreement (the int64
 * outputs named `idx`) and SQNR (float) against the manifest's parity thresholds. Every other int64
 * output (the split layout's `start_pos`) is bookkeeping, not tokens: it must be exactly equal, else
 * the report fails naming the method and output (runtime_py/parity.py Tally.add).
 */
class BundleGolden(
    val prompt: String,
    val seed: Long,
    val cfg: Float,
    val inputs: Map<String, List<Tensor>>,
    val outputs: Map<String, List<Tensor>>,
) {
    class Report(
        val tokenAgreement: Double,
        val minSqnrDb: Double,
        val rows: List<String>,
        val failures: List<String>,
    ) {
        val passed: Boolean get() = failures.isEmpty()
    }

    fun check(
        manifest: Manifest,
        runner: MethodRunner,
        limits: Map<String, Double> = manifest.goldenLimits(),
        cancel: CancelToken? = null,
    ): Report {
        var equal = 0L
        var total = 0L
        var minSqnr = INF
        val rows = mutableListOf<String>()
        val inexact = mutableListOf<String>()
        for (m in manifest.methods) {
            if (cancel?.cancelled == true) throw CancelledException()
            val ins = inputs[m.name] ?: throw ManifestException("golden has no inputs for ${m.name}")
            val ref = outputs[m.name] ?: throw ManifestException("golden has no outputs for ${m.name}")
            val got = runner.run(m.name, ins)
            for ((i, s) in m.outputs.withIndex()) {
                val r = ref[i]
                val g = got[i]
                if (!r.shape.contentEquals(
                        g.shape,
                    )
                ) {
                    throw IllegalStateException("${m.name}.${s.name}: shape ${g.shapeString()} != ${r.shapeString()}")
                }
                if (s.dtype == DType.INT64 && s.name != TOKENS) {
                    val a = r.longData()
                    val b = g.longData()
                    if (a.contentEquals(b)) {
                        rows += "${m.name}.${s.name}: int64 exact ${shown(a)}"
                    } else {
                        rows += "${m.name}.${s.name}: int64 ${shown(b)} != golden ${shown(a)}"
                        inexact += "${m.name}.${s.name}: int64 output differs (exact match required)"
                    }
                } else if (s.dtype == DType.INT64) {
                    val a = r.longData()
                    val b = g.longData()
                    val eq = a.indices.count { a[it] == b[it] }
                    equal += eq
                    total += a.size
                    rows += "${m.name}.${s.name}: token agreement %.4f".format(eq.toDouble() / a.size)
                } else {
                    val q = sqnr(r, g)
                    minSqnr = minOf(minSqnr, q)
                    rows += "${m.name}.${s.name}: SQNR %.2f dB".format(q)
                }
            }
        }
        val agreement = if (total == 0L) 1.0 else equal.toDouble() / total
        val values = mapOf("token_agreement" to agreement, "sqnr_db" to minSqnr)
        val failures =
            inexact + limits.filter { (k, v) -> (values[k] ?: INF) < v }.map { (k, v) -> "$k %.4g < %.4g".format(values[k], v) }
        return Report(agreement, minSqnr, rows, failures)
    }

    /** The golden run as a [Recording], so [ReplayRunner] can check the app loop against a real bundle's golden/. */
    fun recording(manifest: Manifest): Recording {
        val methods =
            manifest.methods.map { m ->
                val ins = inputs[m.name] ?: throw ManifestException("golden has no inputs for ${m.name}")
                val outs = outputs[m.name] ?: throw ManifestException("golden has no outputs for ${m.name}")
                RecordedMethod(
                    m.name,
                    m.inputs.zip(ins).map { (s, t) -> Fingerprint.of(t, s.name) },
                    m.outputs.zip(outs).map { (s, t) -> Fingerprint.of(t, s.name) },
                )
            }
        val tokens = LinkedHashMap<String, LongArray>()
        var image: Fingerprint? = null
        for (m in manifest.methods) {
            for ((s, t) in m.outputs.zip(outputs.getValue(m.name))) {
                if (s.name == "idx" && m.name.startsWith("scale_")) tokens[m.name] = t.longData()
                if (s.name == "image") image = Fingerprint.of(t, "image")
            }
        }
        return Recording(prompt, seed, cfg, methods, tokens, image ?: throw ManifestException("golden has no image output"))
    }

    companion object {
        const val INF = 999.0

        /** The only int64 output counted as sampled tokens; other int64 outputs must match exactly. */
        const val TOKENS = "idx"

        /** The first few values of an int64 output, for a report row. */
        private fun shown(a: LongArray): String =
            if (a.size <= 8) a.joinToString(", ", "[", "]") else a.take(8).joinToString(", ", "[", ", …]")

        fun sqnr(
            ref: Tensor,
            got: Tensor,
        ): Double {
            var signal = 0.0
            var noise = 0.0
            for (i in 0 until ref.numel) {
                val r = ref.valueAt(i)
                val d = r - got.valueAt(i)
                signal += r * r
                noise += d * d
            }
            return if (noise == 0.0) INF else minOf(INF, 10 * Math.log10(signal / noise))
        }

        /** Loads golden/index.json and every tensor it lists (their sha256 is checked by Bundle.verify). */
        fun load(
            bundleDir: File,
            index: String = "golden/index.json",
        ): BundleGolden {
            val indexFile = File(bundleDir, index)
            val o = JSONObject(indexFile.readText())
            if (o.optString("byte_order", "little") != "little") throw ManifestException("golden byte_order must be little")
            val tensors = o.getJSONArray("tensors")
            val ins = HashMap<String, MutableList<Pair<Int, Tensor>>>()
            val outs = HashMap<String, MutableList<Pair<Int, Tensor>>>()
            for (k in 0 until tensors.length()) {
                val e = tensors.getJSONObject(k)
                val sh = e.getJSONArray("shape")
                val shape = IntArray(sh.length()) { sh.getInt(it) }
                val t = readTensor(File(indexFile.parentFile, e.getString("file")), shape, DType.parse(e.getString("dtype")))
                val into = if (e.getString("io") == "in") ins else outs
                into.getOrPut(e.getString("method")) { mutableListOf() } += e.getInt("index") to t
            }

            fun ordered(m: Map<String, MutableList<Pair<Int, Tensor>>>) =
                m.mapValues { (_, v) -> v.sortedBy { it.first }.map { it.second } }
            return BundleGolden(o.getString("prompt"), o.getLong("seed"), o.getDouble("cfg").toFloat(), ordered(ins), ordered(outs))
        }

        fun readTensor(
            f: File,
            shape: IntArray,
            dtype: DType,
        ): Tensor {
            val n = shape.fold(1) { a, b -> a * b }
            val buf = ByteBuffer.wrap(f.readBytes()).order(ByteOrder.LITTLE_ENDIAN)
            val width =
                if (dtype == DType.FLOAT16) {
                    2
                } else if (dtype == DType.FLOAT32) {
                    4
                } else {
                    8
                }
            if (buf.remaining() != n * width) throw ManifestException("${f.name}: ${buf.remaining()} bytes, shape needs ${n * width}")
            return when (dtype) {
                DType.FLOAT32 -> Tensor.ofFloats(shape, FloatArray(n) { buf.getFloat() })
                DType.FLOAT16 -> Tensor.ofFloats(shape, FloatArray(n) { halfToFloat(buf.getShort()) }, DType.FLOAT16)
                DType.INT64 -> Tensor.ofLongs(shape, LongArray(n) { buf.getLong() })
            }
        }

        /** IEEE 754 binary16 -> Float (exact). */
        fun halfToFloat(h: Short): Float {
            val bits = h.toInt() and 0xFFFF
            val sign = if (bits and 0x8000 != 0) -1f else 1f
            val exp = (bits ushr 10) and 0x1F
            val frac = bits and 0x3FF
            return when (exp) {
                0 -> sign * frac * Math.scalb(1f, -24)
                0x1F -> if (frac == 0) sign * Float.POSITIVE_INFINITY else Float.NaN
                else -> sign * (1f + frac / 1024f) * Math.scalb(1f, exp - 15)
            }
        }
    }
}
