package demo.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.file.Files
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/** A two-method bundle in the export/bundle.py layout, with golden/ written the way write_golden writes it. */
class BundleGoldenTest {
    private val dir: File = Files.createTempDirectory("golden").toFile()

    @AfterEach
    fun cleanup() {
        dir.deleteRecursively()
    }

    private fun bin(t: Tensor): ByteArray {
        val width = if (t.dtype == DType.INT64) 8 else 4
        val b = ByteBuffer.allocate(t.numel * width).order(ByteOrder.LITTLE_ENDIAN)
        for (i in 0 until t.numel) if (t.dtype == DType.INT64) b.putLong(t.longData()[i]) else b.putFloat(t.floatData()[i])
        return b.array()
    }

    private val manifestJson =
        """{"format":"hart-mobile-bundle","schema_version":1,"min_runtime_version":1,"backend":"executorch",
        "model":{"name":"tiny","image_size":1},"call_order":["text_encoder","scale_00"],
        "sampler":{"cfg_default":3.5},
        "methods":[
         {"name":"text_encoder","component":"text_encoder","file":"t.pte","entry":"text_encoder",
          "inputs":[{"name":"token_ids","shape":[1,4],"dtype":"int64","source":"tokenizer"}],
          "outputs":[{"name":"context","shape":[1,40],"dtype":"float32"}]},
         {"name":"scale_00","component":"ar_transformer","file":"t.pte","entry":"scale_00",
          "inputs":[{"name":"context","shape":[1,40],"dtype":"float32"},
                    {"name":"noise_u","shape":[1,3],"dtype":"float32","source":"rng","rng":{"dist":"uniform","streams":[0]}}],
          "outputs":[{"name":"idx","shape":[1,2],"dtype":"int64"},{"name":"image","shape":[1,3,1,1],"dtype":"float32"}]}],
        "tokenizer":{"file":null,"max_tokens":4,"pad_token":"<|endoftext|>"},
        "parity":{"thresholds":{"golden":{"token_agreement":1.0,"sqnr_db":60.0}}},
        "golden":{"index":"golden/index.json","prompt":"ab","seed":7,"cfg":3.5},
        "files":{}}"""

    /** [manifestJson] with an int64 `start_pos` output of scale_00 (bookkeeping of the split AR layout, not tokens). */
    private val startPosJson: String =
        JSONObject(manifestJson)
            .also {
                it
                    .getJSONArray("methods")
                    .getJSONObject(1)
                    .getJSONArray("outputs")
                    .put(1, JSONObject().put("name", "start_pos").put("shape", JSONArray(listOf(1))).put("dtype", "int64"))
                    .put(2, JSONObject().put("name", "image").put("shape", JSONArray(listOf(1, 3, 1, 1))).put("dtype", "float32"))
            }.toString()

    private fun writeBundle(json: String = manifestJson): Pair<Manifest, Map<String, Tensor>> {
        val m = Manifest.parse(json)
        val t =
            mapOf(
                "token_ids" to PromptEncoder(ByteTokenizer(), 4).encode("ab").first,
                "context" to Tensor.ofFloats(intArrayOf(1, 40), FloatArray(40) { it * 0.25f - 3f }),
                "noise_u" to Philox.drawNoise(m.method("scale_00").inputs[1], 7),
                "idx" to Tensor.ofLongs(intArrayOf(1, 2), longArrayOf(5, 9)),
                "start_pos" to Tensor.ofLongs(intArrayOf(1), longArrayOf(302)),
                "image" to Tensor.ofFloats(intArrayOf(1, 3, 1, 1), floatArrayOf(0.1f, 0.5f, 0.9f)),
            )
        File(dir, "golden").mkdirs()
        val entries = JSONArray()
        for (meth in m.methods) {
            for ((io, specs) in listOf("in" to meth.inputs, "out" to meth.outputs)) {
                for ((i, s) in specs.withIndex()) {
                    val bytes = bin(t.getValue(s.name))
                    val name = Sha256.hex(bytes).take(16) + ".bin"
                    File(dir, "golden/$name").writeBytes(bytes)
                    entries.put(
                        JSONObject()
                            .put("method", meth.name)
                            .put("io", io)
                            .put("index", i)
                            .put("name", s.name)
                            .put("shape", JSONArray(s.shape.toList()))
                            .put("dtype", s.dtype.jsonName)
                            .put("source", s.source.name.lowercase())
                            .put("file", name),
                    )
                }
            }
        }
        val index =
            JSONObject()
                .put("version", 1)
                .put("byte_order", "little")
                .put("prompt", "ab")
                .put("seed", 7)
                .put("cfg", 3.5)
                .put("tensors", entries)
        File(dir, "golden/index.json").writeText(index.toString())
        return m to t
    }

    private class Fixed(
        val outs: (String) -> List<Tensor>,
    ) : MethodRunner {
        val calls = mutableListOf<String>()

        override fun run(
            method: String,
            inputs: List<Tensor>,
        ): List<Tensor> {
            calls += method
            return outs(method)
        }
    }

    @Test
    fun exportManifestFieldsAreRead() {
        val m = Manifest.parse(manifestJson)
        assertEquals(3.5f, m.defaultCfg)
        assertEquals("golden/index.json", m.goldenIndex)
        assertEquals(mapOf("token_agreement" to 1.0, "sqnr_db" to 60.0), m.goldenLimits())
        assertEquals("scale_00", m.method("scale_00").entry)
        val bad = JSONObject(manifestJson).put("call_order", JSONArray(listOf("scale_00", "text_encoder")))
        assertFailsWith<ManifestException> { Manifest.parse(bad) }
        val newer = JSONObject(manifestJson).put("min_runtime_version", 2)
        assertTrue(assertFailsWith<ManifestException> { Manifest.parse(newer) }.message!!.contains("update the app"))
    }

    @Test
    fun goldenTensorsLoadAndAPerfectRunnerPasses() {
        val (m, t) = writeBundle()
        val g = BundleGolden.load(dir)
        assertEquals("ab", g.prompt)
        assertContentEquals(t.getValue("context").floatData(), g.inputs.getValue("scale_00")[0].floatData())
        assertContentEquals(longArrayOf(5, 9), g.outputs.getValue("scale_00")[0].longData())
        val perfect = Fixed { g.outputs.getValue(it) }
        val r = g.check(m, perfect)
        assertTrue(r.passed, r.failures.toString())
        assertEquals(1.0, r.tokenAgreement)
        assertEquals(BundleGolden.INF, r.minSqnrDb)
        assertEquals(listOf("text_encoder", "scale_00"), perfect.calls)
    }

    @Test
    fun driftAndWrongTokensFailTheThresholds() {
        val (m, _) = writeBundle()
        val g = BundleGolden.load(dir)
        val noisy =
            Fixed { meth ->
                g.outputs.getValue(meth).map { o ->
                    if (o.dtype == DType.INT64) o else Tensor.ofFloats(o.shape, FloatArray(o.numel) { o.floatData()[it] + 0.05f })
                }
            }
        val r = g.check(m, noisy)
        assertTrue(!r.passed && r.failures.single().startsWith("sqnr_db"), r.failures.toString())
        val wrong =
            Fixed { meth ->
                if (meth ==
                    "scale_00"
                ) {
                    listOf(Tensor.ofLongs(intArrayOf(1, 2), longArrayOf(5, 8)), g.outputs.getValue(meth)[1])
                } else {
                    g.outputs.getValue(meth)
                }
            }
        val w = g.check(m, wrong)
        assertEquals(0.5, w.tokenAgreement)
        assertTrue(w.failures.single().startsWith("token_agreement"))
    }

    /** As runtime_py/parity.py: only `idx` outputs are tokens; any other int64 output must be exactly equal. */
    @Test
    fun onlyIdxCountsAsTokensAndOtherInt64OutputsMustBeExact() {
        val (m, _) = writeBundle(startPosJson)
        val g = BundleGolden.load(dir)
        assertEquals(listOf("idx", "start_pos", "image"), m.method("scale_00").outputs.map { it.name })

        fun replacing(
            name: String,
            t: Tensor,
        ) = Fixed { meth ->
            m
                .method(meth)
                .outputs
                .zip(g.outputs.getValue(meth))
                .map { (s, o) -> if (meth == "scale_00" && s.name == name) t else o }
        }
        val ok = g.check(m, Fixed { g.outputs.getValue(it) })
        assertTrue(ok.passed, ok.failures.toString())
        assertTrue("scale_00.idx: token agreement 1.0000" in ok.rows, ok.rows.toString())
        assertTrue("scale_00.start_pos: int64 exact [302]" in ok.rows, ok.rows.toString())

        val pos = g.check(m, replacing("start_pos", Tensor.ofLongs(intArrayOf(1), longArrayOf(303))))
        assertEquals(listOf("scale_00.start_pos: int64 output differs (exact match required)"), pos.failures)
        assertEquals(1.0, pos.tokenAgreement, "start_pos is not a token")
        assertTrue("scale_00.start_pos: int64 [303] != golden [302]" in pos.rows, pos.rows.toString())
        // exactness is not a threshold: even limits that accept anything keep the failure
        assertTrue(!g.check(m, replacing("start_pos", Tensor.ofLongs(intArrayOf(1), longArrayOf(303))), mapOf()).passed)

        val tok = g.check(m, replacing("idx", Tensor.ofLongs(intArrayOf(1, 2), longArrayOf(5, 8))))
        assertEquals(0.5, tok.tokenAgreement, "1 of the 2 idx tokens; start_pos does not count")
        assertEquals(listOf("token_agreement"), tok.failures.map { it.substringBefore(' ') })
        assertTrue("scale_00.start_pos: int64 exact [302]" in tok.rows, tok.rows.toString())
        val lenient = g.check(m, replacing("idx", Tensor.ofLongs(intArrayOf(1, 2), longArrayOf(5, 8))), mapOf("token_agreement" to 0.5))
        assertTrue(lenient.passed, lenient.failures.toString())
    }

    @Test
    fun appLoopReproducesTheBundleGoldenInputs() {
        val (m, _) = writeBundle()
        val g = BundleGolden.load(dir)
        val rec = g.recording(m)
        val runner = ReplayRunner(rec)
        val gen = Pipeline(m, runner, PromptEncoder(ByteTokenizer(), 4)).generate(g.prompt, g.seed, g.cfg)
        assertTrue(runner.finished)
        assertContentEquals(longArrayOf(5, 9), gen.tokens.getValue("scale_00").longData())
        assertFailsWith<ReplayMismatchException> {
            Pipeline(
                m,
                ReplayRunner(rec),
                PromptEncoder(ByteTokenizer(), 4),
            ).generate("ba", 7, 3.5f)
        }
    }

    @Test
    fun bundleCheckPassesOnAnIntactBundleAndNamesATamperedFile() {
        writeBundle()
        File(dir, "t.pte").writeText("program")
        File(dir, "tokenizer.json").writeText(
            TestFiles.golden
                .tokenizer("byte_level")
                .json
                .toString(),
        )
        val files = JSONObject()
        dir.walkTopDown().filter { it.isFile }.forEach {
            val rel = it.relativeTo(dir).invariantSeparatorsPath
            files.put(rel, JSONObject().put("bytes", it.length()).put("sha256", Sha256.file(it)))
        }
        val m = JSONObject(manifestJson).put("files", files)
        m.getJSONObject("tokenizer").put("file", "tokenizer.json")
        TestFiles.writeManifest(dir, m.toString())
        val ok = BundleCheck.run(dir)
        assertEquals(listOf("manifest + files", "tokenizer", "golden replay"), ok.map { it.name })
        assertTrue(ok.all { it.passed }, ok.toString())
        val bin = File(dir, "golden").listFiles()!!.first { it.name.endsWith(".bin") }
        bin.writeBytes(bin.readBytes().also { it[0] = (it[0] + 1).toByte() })
        val bad = BundleCheck.run(dir)
        assertTrue(!bad[0].passed && bad[0].detail.contains(bin.name), bad.toString())
    }

    @Test
    fun halfFloatDecoding() {
        assertEquals(1f, BundleGolden.halfToFloat(0x3C00))
        assertEquals(-2f, BundleGolden.halfToFloat(0xC000.toShort()))
        assertEquals(65504f, BundleGolden.halfToFloat(0x7BFF))
        assertEquals(Math.scalb(1f, -24), BundleGolden.halfToFloat(0x0001))
        assertEquals(Float.NEGATIVE_INFINITY, BundleGolden.halfToFloat(0xFC00.toShort()))
    }
}
