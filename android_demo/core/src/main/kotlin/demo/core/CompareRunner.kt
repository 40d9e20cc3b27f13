package demo.core

/**
 * On-device check of a real runner against the recorded reference run: passes every call through
 * and measures how far each output is from the recording (max |Δ| over the recorded head/tail
 * values, relative difference of the sums) and how many sampled tokens agree. Reduced precision
 * (fp16, int8/int4) legitimately drifts, so this reports; it does not fail.
 */
class CompareRunner(
    private val inner: MethodRunner,
    private val recording: Recording,
) : MethodRunner {
    class OutputReport(
        val method: String,
        val output: String,
        val maxAbsDiff: Double,
        val sumRelDiff: Double,
    ) {
        override fun toString(): String = "%s.%s max|Δ| %.3g, sum rel Δ %.3g".format(method, output, maxAbsDiff, sumRelDiff)
    }

    val outputs = ArrayList<OutputReport>()
    var tokensMatched = 0
        private set
    var tokensTotal = 0
        private set

    override fun run(
        method: String,
        inputs: List<Tensor>,
    ): List<Tensor> {
        val outs = inner.run(method, inputs)
        val rec = recording.methods.firstOrNull { it.name == method } ?: return outs
        for ((t, fp) in outs.zip(rec.outputs)) {
            if (!t.shape.contentEquals(fp.shape)) {
                outputs += OutputReport(method, fp.name ?: "?", Double.POSITIVE_INFINITY, Double.POSITIVE_INFINITY)
                continue
            }
            if (t.dtype == DType.INT64) {
                val v = t.longData()
                val e = fp.values!!
                tokensTotal += v.size
                tokensMatched += v.indices.count { v[it].toDouble() == e[it] }
                continue
            }
            val got = Fingerprint.of(t)
            var mx = 0.0
            if (fp.values != null) {
                for (i in fp.values.indices) mx = maxOf(mx, Math.abs(got.values!![i] - fp.values[i]))
                outputs += OutputReport(method, fp.name ?: "?", mx, 0.0)
            } else {
                for (i in 0 until Fingerprint.EDGE) {
                    mx = maxOf(mx, Math.abs(got.head!![i] - fp.head!![i]), Math.abs(got.tail!![i] - fp.tail!![i]))
                }
                val rel = Math.abs(got.sum - fp.sum) / maxOf(fp.absSum, 1e-12)
                outputs += OutputReport(method, fp.name ?: "?", mx, rel)
            }
        }
        return outs
    }

    fun summary(): String =
        "tokens agree $tokensMatched/$tokensTotal; worst output " +
            (outputs.maxByOrNull { it.maxAbsDiff }?.toString() ?: "none")
}
