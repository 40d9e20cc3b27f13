package demo.app

import demo.core.AppGolden
import demo.core.Bundle
import demo.core.DType
import demo.core.Pipeline
import demo.core.ReplayRunner
import demo.core.Sha256
import demo.core.Tensor
import demo.core.TestFiles
import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Test
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import java.io.File
import java.nio.file.Files
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class ExecuTorchRunnerTest {
    private val root: File by lazy {
        var d: File? = File(System.getProperty("repo.root") ?: System.getProperty("user.dir")).absoluteFile
        while (d != null && !File(d, "pyproject.toml").isFile) d = d.parentFile
        d!!
    }
    private val golden by lazy { AppGolden.parse(File(root, "docs/app_golden.json").readText()) }
    private val dir: File = Files.createTempDirectory("etbundle").toFile()

    @AfterEach
    fun cleanup() {
        Module.backend = null
        Module.loaded.clear()
        dir.deleteRecursively()
    }

    private fun bundle(): Bundle {
        val pte = "not a real program".toByteArray()
        File(dir, "model.pte").writeBytes(pte)
        val tok =
            golden
                .tokenizer("byte_level")
                .json
                .toString()
                .toByteArray()
        File(dir, "tokenizer.json").writeBytes(tok)
        val m = JSONObject(golden.root.getJSONObject("manifest").toString())
        m.put("backend", "executorch")
        m.put(
            "files",
            JSONArray()
                .put(JSONObject().put("path", "model.pte").put("sha256", Sha256.hex(pte)).put("size", pte.size))
                .put(JSONObject().put("path", "tokenizer.json").put("sha256", Sha256.hex(tok)).put("size", tok.size)),
        )
        TestFiles.writeManifest(dir, m.toString())
        return Bundle.open(dir)
    }

    @Test
    fun tensorConversionsRoundTrip() {
        val f = Tensor.ofFloats(intArrayOf(2, 3), floatArrayOf(1f, -2f, 3.5f, 0f, 1e-8f, 7f))
        val back = ExecuTorchRunner.fromEValue(ExecuTorchRunner.toEValue(f))
        assertContentEquals(f.shape, back.shape)
        assertContentEquals(f.floatData(), back.floatData())
        val l = Tensor.ofLongs(intArrayOf(1, 4), longArrayOf(256, 0, 97, Long.MAX_VALUE))
        val lb = ExecuTorchRunner.fromEValue(ExecuTorchRunner.toEValue(l))
        assertEquals(DType.INT64, lb.dtype)
        assertContentEquals(l.longData(), lb.longData())
        assertFailsWith<IllegalArgumentException> {
            ExecuTorchRunner.toEValue(Tensor.ofFloats(intArrayOf(1), floatArrayOf(1f), DType.FLOAT16))
        }
    }

    /** The whole loop through the ExecuTorch API surface, with the recorded run behind Module.execute. */
    @Test
    fun recordedRunReplaysThroughTheExecuTorchApi() {
        val b = bundle()
        val replay = ReplayRunner(golden.run)
        val methods = mutableListOf<String>()
        Module.backend =
            Module.Backend { path, method, inputs ->
                assertEquals(File(dir, "model.pte").absolutePath, path)
                methods += method
                val outs = replay.run(method, inputs.map { ExecuTorchRunner.fromEValue(it) })
                outs.map { ExecuTorchRunner.toEValue(it) }.toTypedArray<EValue>()
            }
        ExecuTorchRunner(b).use { runner ->
            assertEquals(1, Module.loaded.size, "one Module for all methods (shared KV cache)")
            val gen = Pipeline(b.manifest, runner, b.promptEncoder()).generate(golden.run.prompt, golden.run.seed, golden.run.cfg)
            assertTrue(replay.finished)
            assertEquals(b.manifest.methods.map { it.name }, methods)
            for ((k, v) in golden.run.tokens) assertContentEquals(v, gen.tokens.getValue(k).longData(), k)
        }
    }

    @Test
    fun methodFilesSelectTheirModule() {
        val b = bundle()
        val m = JSONObject(File(dir, "manifest.json").readText())
        val pte2 = "second".toByteArray()
        File(dir, "vae.pte").writeBytes(pte2)
        m.getJSONArray("files").put(JSONObject().put("path", "vae.pte").put("sha256", Sha256.hex(pte2)).put("size", pte2.size))
        val ms = m.getJSONArray("methods")
        for (i in 0 until ms.length()) ms.getJSONObject(i).put("file", if (i == ms.length() - 1) "vae.pte" else "model.pte")
        TestFiles.writeManifest(dir, m.toString())
        ExecuTorchRunner(Bundle.open(dir)).use { assertEquals(2, Module.loaded.size) }
        assertTrue(b.manifest.methods.isNotEmpty())
    }
}
