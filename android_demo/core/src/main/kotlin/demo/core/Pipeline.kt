package demo.core

/** Runs one named method of the bundle; inputs and outputs in the manifest's order. */
interface MethodRunner {
    fun run(
        method: String,
        inputs: List<Tensor>,
    ): List<Tensor>
}

class CancelledException : Exception("generation cancelled")

/** Cooperative cancel flag, checked between methods (a running method is not interrupted). */
class CancelToken {
    @Volatile var cancelled: Boolean = false

    fun cancel() {
        cancelled = true
    }
}

interface PipelineListener {
    /** After each method; [tokens] is the scale's sampled `idx` (null for other methods). */
    fun onMethodDone(
        index: Int,
        total: Int,
        method: String,
        ms: Double,
        tokens: Tensor?,
    ) {}

    /**
     * After each scale method: the latent the per-scale preview shows ([PreviewProjection.scaleLatent]:
     * f_hat, at the last scale f_hat + e_last), [B, C, G, G] float32.
     */
    fun onLatent(
        index: Int,
        method: String,
        latent: Tensor,
    ) {}
}

class Generation(
    val image: Tensor,
    val tokens: Map<String, Tensor>,
    val timingsMs: Map<String, Double>,
)

/**
 * The app-side copy of runtime_py/pipeline.py: tokenize into the env; for each method in manifest
 * order gather inputs by name and source (env / tokenizer / user cfg / portable rng), run, store the
 * outputs by name; a scale method's `idx` output is taken out of the env as that scale's tokens.
 */
class Pipeline(
    val manifest: Manifest,
    val runner: MethodRunner,
    val encoder: PromptEncoder,
    private val clock: () -> Long = System::nanoTime,
) {
    fun hostInput(
        spec: TensorSpec,
        env: Map<String, Tensor>,
        seed: Long,
        cfg: Float,
    ): Tensor =
        when (spec.source) {
            Source.ENV -> env[spec.name] ?: throw IllegalStateException("input '${spec.name}' is not produced by any earlier method")
            Source.USER -> Tensor.ofFloats(spec.shape, FloatArray(spec.numel) { cfg }, spec.dtype)
            Source.RNG -> Philox.drawNoise(spec, seed)
            Source.ZEROS -> Tensor.zeros(spec.shape, spec.dtype)
            Source.TOKENIZER -> convert(env[spec.name] ?: throw IllegalStateException("tokenizer gave no '${spec.name}'"), spec.dtype)
        }

    fun generate(
        prompt: String,
        seed: Long,
        cfg: Float,
        listener: PipelineListener? = null,
        cancel: CancelToken? = null,
    ): Generation {
        require(seed >= 0) { "seed must be >= 0" }
        var t0 = clock()
        val (ids, mask) = encoder.encode(prompt)
        val env = HashMap<String, Tensor>()
        env["token_ids"] = ids
        env["context_mask"] = mask
        val timings = LinkedHashMap<String, Double>()
        timings["tokenize"] = (clock() - t0) / 1e6
        val tokens = LinkedHashMap<String, Tensor>()
        for ((i, m) in manifest.methods.withIndex()) {
            if (cancel?.cancelled == true) throw CancelledException()
            val inputs = m.inputs.map { hostInput(it, env, seed, cfg) }
            for ((s, t) in m.inputs.zip(inputs)) {
                if (!t.shape.contentEquals(s.shape)) {
                    throw IllegalStateException("${m.name}: input ${s.name} has shape ${t.shapeString()}, expected ${s.shapeString()}")
                }
            }
            t0 = clock()
            val outs = runner.run(m.name, inputs)
            val ms = (clock() - t0) / 1e6
            timings[m.name] = ms
            if (outs.size != m.outputs.size) {
                throw IllegalStateException("${m.name}: runner returned ${outs.size} outputs, spec has ${m.outputs.size}")
            }
            for ((s, t) in m.outputs.zip(outs)) {
                if (!t.shape.contentEquals(s.shape)) {
                    throw IllegalStateException("${m.name}: output ${s.name} has shape ${t.shapeString()}, expected ${s.shapeString()}")
                }
            }
            if (listener != null && m.name.startsWith("scale_")) {
                val named = m.outputs.zip(outs).associate { (s, t) -> s.name to t }
                PreviewProjection.scaleLatent(named, env)?.let { listener.onLatent(i, m.name, it) }
            }
            for ((s, t) in m.outputs.zip(outs)) env[s.name] = t
            var idx: Tensor? = null
            if (m.name.startsWith("scale_") && "idx" in env) {
                idx = env.remove("idx")!!
                tokens[m.name] = idx
            }
            listener?.onMethodDone(i, manifest.methods.size, m.name, ms, idx)
        }
        val image = env["image"] ?: throw IllegalStateException("no method produced 'image'")
        return Generation(image, tokens, timings)
    }

    companion object {
        fun convert(
            t: Tensor,
            dtype: DType,
        ): Tensor {
            if (t.dtype == dtype) return t
            return when {
                dtype.isFloat && t.dtype.isFloat -> Tensor.ofFloats(t.shape, t.floatData(), dtype)
                dtype.isFloat -> Tensor.ofFloats(t.shape, FloatArray(t.numel) { t.longData()[it].toFloat() }, dtype)
                else -> Tensor.ofLongs(t.shape, LongArray(t.numel) { t.floatData()[it].toLong() })
            }
        }
    }
}
