package demo.core

import org.junit.jupiter.api.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class PipelineTest {
    private val g = TestFiles.golden
    private val encoder: PromptEncoder get() = PromptEncoder(ByteTokenizer(), g.manifest.tokenizer.maxTokens)

    private fun pipeline(runner: MethodRunner) = Pipeline(g.manifest, runner, encoder)

    @Test
    fun replayOfTheRecordedRunPasses() {
        val r = SelfCheck.replay(g)
        assertTrue(r.passed, r.toString())
    }

    @Test
    fun tokensAndListenerFollowTheRecording() {
        val runner = ReplayRunner(g.run)
        val seen = mutableListOf<String>()
        val gen =
            pipeline(runner).generate(
                g.run.prompt,
                g.run.seed,
                g.run.cfg,
                object : PipelineListener {
                    override fun onMethodDone(
                        index: Int,
                        total: Int,
                        method: String,
                        ms: Double,
                        tokens: Tensor?,
                    ) {
                        assertEquals(13, total)
                        if (tokens != null) seen += "$method:${tokens.numel}"
                    }
                },
            )
        assertEquals(listOf(1, 4, 9, 16, 25, 36, 64, 100, 169, 256).mapIndexed { i, n -> "scale_%02d:$n".format(i) }, seen)
        for ((k, v) in g.run.tokens) assertContentEquals(v, gen.tokens.getValue(k).longData(), k)
        assertContentEquals(intArrayOf(1, 3, 256, 256), gen.image.shape)
        assertEquals(listOf("tokenize") + g.manifest.methods.map { it.name }, gen.timingsMs.keys.toList())
    }

    @Test
    fun wrongSeedFailsOnTheFirstNoise() {
        val e = assertFailsWith<ReplayMismatchException> { pipeline(ReplayRunner(g.run)).generate(g.run.prompt, g.run.seed + 1, g.run.cfg) }
        assertTrue(e.message!!.startsWith("scale_00 input #3 'noise_u'"), e.message)
    }

    @Test
    fun wrongPromptFailsOnTokenIds() {
        val e =
            assertFailsWith<ReplayMismatchException> {
                pipeline(
                    ReplayRunner(g.run),
                ).generate("a lighthouse at dawn", g.run.seed, g.run.cfg)
            }
        assertTrue(e.message!!.startsWith("text_encoder input #0 'token_ids'"), e.message)
    }

    @Test
    fun wrongCfgFails() {
        val e = assertFailsWith<ReplayMismatchException> { pipeline(ReplayRunner(g.run)).generate(g.run.prompt, g.run.seed, 3.0f) }
        assertTrue(e.message!!.contains("'cfg'"), e.message)
    }

    /** A loop bug: scale_03 gets scale_01's f_hat (stale env) instead of scale_02's. */
    @Test
    fun staleEnvTensorIsCaught() {
        val replay = ReplayRunner(g.run)
        var stale: Tensor? = null
        val buggy =
            object : MethodRunner {
                override fun run(
                    method: String,
                    inputs: List<Tensor>,
                ): List<Tensor> {
                    val ins = if (method == "scale_03") inputs.toMutableList().also { it[1] = stale!! } else inputs
                    val outs = replay.run(method, ins)
                    if (method == "scale_01") stale = outs[1]
                    return outs
                }
            }
        val e = assertFailsWith<ReplayMismatchException> { pipeline(buggy).generate(g.run.prompt, g.run.seed, g.run.cfg) }
        assertTrue(e.message!!.startsWith("scale_03 input #1 'f_hat'"), e.message)
    }

    /** A loop bug: the diffusion noise streams in another order. */
    @Test
    fun swappedNoiseStreamsAreCaught() {
        val o = g.root.getJSONObject("manifest").toString()
        val m = org.json.JSONObject(o)
        val noise =
            m
                .getJSONArray("methods")
                .getJSONObject(11)
                .getJSONArray("inputs")
                .getJSONObject(2)
        noise.getJSONObject("rng").put("streams", org.json.JSONArray(listOf(2000, 2001, 2002, 2003, 2004, 2005, 2006, 2007)))
        val p = Pipeline(Manifest.parse(m), ReplayRunner(g.run), encoder)
        val e = assertFailsWith<ReplayMismatchException> { p.generate(g.run.prompt, g.run.seed, g.run.cfg) }
        assertTrue(e.message!!.startsWith("diffusion_head input #2 'noise'"), e.message)
    }

    @Test
    fun skippedMethodIsCaught() {
        val o = org.json.JSONObject(g.root.getJSONObject("manifest").toString())
        val ms = o.getJSONArray("methods")
        o.put("methods", org.json.JSONArray((0 until ms.length()).filter { it != 0 }.map { ms.get(it) }))
        o
            .getJSONArray(
                "methods",
            ).getJSONObject(0)
            .getJSONArray("inputs")
            .getJSONObject(0)
            .put("source", "tokenizer")
            .put("name", "token_ids")
            .put("dtype", "int64")
            .put("shape", org.json.JSONArray(listOf(1, 300)))
        val p = Pipeline(Manifest.parse(o), ReplayRunner(g.run), encoder)
        val e = assertFailsWith<ReplayMismatchException> { p.generate(g.run.prompt, g.run.seed, g.run.cfg) }
        assertTrue(e.message!!.contains("app ran 'scale_00', the recording ran 'text_encoder'"), e.message)
    }

    @Test
    fun wrongOutputCountOrShapeIsAnError() {
        val short =
            object : MethodRunner {
                override fun run(
                    method: String,
                    inputs: List<Tensor>,
                ): List<Tensor> = emptyList()
            }
        assertFailsWith<IllegalStateException> { pipeline(short).generate("x", 1, 4.5f) }
        val wrongShape =
            object : MethodRunner {
                override fun run(
                    method: String,
                    inputs: List<Tensor>,
                ): List<Tensor> = listOf(Tensor.zeros(intArrayOf(1, 300, 7), DType.FLOAT32))
            }
        val e = assertFailsWith<IllegalStateException> { pipeline(wrongShape).generate("x", 1, 4.5f) }
        assertTrue(e.message!!.contains("context"), e.message)
    }

    @Test
    fun cancelStopsBetweenMethods() {
        val token = CancelToken()
        val runner = ReplayRunner(g.run)
        val counting =
            object : MethodRunner {
                override fun run(
                    method: String,
                    inputs: List<Tensor>,
                ): List<Tensor> {
                    if (method == "scale_02") token.cancel()
                    return runner.run(method, inputs)
                }
            }
        assertFailsWith<CancelledException> { pipeline(counting).generate(g.run.prompt, g.run.seed, g.run.cfg, cancel = token) }
        assertEquals(4, runner.calls.size)
    }

    @Test
    fun negativeSeedIsRejected() {
        assertFailsWith<IllegalArgumentException> { pipeline(ReplayRunner(g.run)).generate("x", -1, 4.5f) }
    }
}

class CompareRunnerTest {
    @Test
    fun identicalRunnerAgreesCompletely() {
        val g = TestFiles.golden
        val cmp = CompareRunner(ReplayRunner(g.run), g.run)
        val encoder = PromptEncoder(ByteTokenizer(), g.manifest.tokenizer.maxTokens)
        Pipeline(g.manifest, cmp, encoder).generate(g.run.prompt, g.run.seed, g.run.cfg)
        assertEquals(680, cmp.tokensTotal)
        assertEquals(680, cmp.tokensMatched)
        assertTrue(cmp.outputs.all { it.maxAbsDiff == 0.0 }, cmp.summary())
    }
}
