package demo.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertTrue

/**
 * docs/app_golden.json `split_methods`: the default model's split AR layout (the ExecuTorch exporter's
 * default, docs/executorch.md "AR program layouts") exactly as the exporter writes manifest["methods"],
 * parsed by the app's [Manifest] and run by its [Pipeline].
 */
class SplitLayoutTest {
    private val g = TestFiles.golden
    private val bodyCalls = (0 until 10).map { "ar_body_%02d".format(it) }

    /** The golden manifest with the split method list (and its call order) in place of the per-scale one. */
    private fun splitManifest(): Manifest {
        val o = JSONObject(g.root.getJSONObject("manifest").toString())
        val methods = g.root.getJSONArray("split_methods")
        o.put("methods", methods)
        o.put("call_order", JSONArray((0 until methods.length()).map { methods.getJSONObject(it).getString("name") }))
        return Manifest.parse(o)
    }

    @Test
    fun everyBodyCallRunsTheOneBodyProgramMethod() {
        val m = splitManifest()
        assertEquals(bodyCalls, m.methods.map { it.name }.filter { it.startsWith("ar_body_") })
        for (name in bodyCalls) {
            val b = m.method(name)
            assertEquals("ar_body.pte", b.file, name)
            assertEquals("ar_body", b.entry, name)
            assertEquals("ar_transformer", b.component, name)
        }
        assertEquals(bodyCalls, m.methods.filter { it.file == "ar_body.pte" }.map { it.name }, "only body calls live in ar_body.pte")
        for (x in m.methods.filter { it.name !in bodyCalls }) assertEquals(x.name, x.entry, "${x.name} is its own program method")
        assertEquals(
            listOf("text_encoder.pte", "ar_transformer.pte", "ar_body.pte", "diffusion_head.pte", "vae_decoder.pte"),
            m.programFiles(),
        )
        // the body's query length is the only dim that varies between calls (static shapes per call)
        val lengths =
            bodyCalls.map {
                m
                    .method(it)
                    .inputs
                    .single { s -> s.name == "x" }
                    .shape[1]
            }
        assertEquals(listOf(300, 4, 9, 16, 25, 36, 64, 100, 169, 256), lengths)
    }

    @Test
    fun startPosFlowsByNameFromThePreviousGlueToEachBodyCall() {
        val m = splitManifest()
        for ((i, b) in m.methods.withIndex()) {
            if (b.name !in bodyCalls) continue
            val si = b.name.removePrefix("ar_body_").toInt()
            val s = b.inputs.single { it.name == "start_pos" }
            assertEquals(DType.INT64, s.dtype)
            assertEquals(Source.ENV, s.source)
            assertContentEquals(intArrayOf(1), s.shape)
            val prev = m.methods[i - 1]
            assertEquals(if (si == 0) "ar_prefill" else "scale_%02d".format(si - 1), prev.name)
            val out = prev.outputs.single { it.name == "start_pos" }
            assertEquals(DType.INT64, out.dtype, prev.name)
            // the glue's sampled tokens are its `idx` output; start_pos is bookkeeping, not tokens
            if (si > 0) assertEquals(DType.INT64, prev.outputs.first().dtype)
            if (si > 0) assertEquals("idx", prev.outputs.first().name)
        }
        val last = m.method("scale_09")
        assertTrue(last.outputs.none { it.name == "start_pos" }, "the last glue starts no further body call")
    }

    /** A runner in the shape of the app's ExecuTorchRunner: manifest name -> (file, entry); outputs of the spec's shapes. */
    private class EntryRecorder(
        val m: Manifest,
    ) : MethodRunner {
        val calls = mutableListOf<String>()
        val startPos = LinkedHashMap<String, Long>()

        override fun run(
            method: String,
            inputs: List<Tensor>,
        ): List<Tensor> {
            val spec = m.method(method)
            calls += "${spec.file}:${spec.entry}"
            for ((s, t) in spec.inputs.zip(inputs)) if (s.name == "start_pos") startPos[method] = t.longData().single()
            val k = m.methods.indexOf(spec)
            return spec.outputs.map { s ->
                when (s.name) {
                    "start_pos" -> Tensor.ofLongs(s.shape, longArrayOf(1000L + k))
                    "idx" -> Tensor.ofLongs(s.shape, LongArray(s.numel) { k.toLong() })
                    else -> Tensor.zeros(s.shape, s.dtype)
                }
            }
        }
    }

    @Test
    fun pipelineRoutesStartPosToTheBodyEntry() {
        val m = splitManifest()
        val r = EntryRecorder(m)
        val gen = Pipeline(m, r, PromptEncoder(ByteTokenizer(), m.tokenizer.maxTokens)).generate(g.run.prompt, g.run.seed, g.run.cfg)
        assertEquals(m.methods.map { "${it.file}:${it.entry}" }, r.calls)
        assertEquals(10, r.calls.count { it == "ar_body.pte:ar_body" })
        // each body call got the start_pos of the method just before it (ar_prefill, then the previous glue)
        val names = m.methods.map { it.name }
        assertEquals(bodyCalls.associateWith { 1000L + names.indexOf(it) - 1 }, r.startPos)
        // tokens are the glue methods' idx only
        assertEquals((0 until 10).map { "scale_%02d".format(it) }, gen.tokens.keys.toList())
        for ((k, v) in gen.tokens) assertTrue(v.longData().all { it == names.indexOf(k).toLong() }, k)
    }
}
