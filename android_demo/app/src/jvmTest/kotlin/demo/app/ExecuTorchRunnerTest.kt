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

    /**
     * The split AR layout (docs/app_golden.json `split_methods`, the exporter's default): every body call
     * `ar_body_XX` executes the program method `ar_body` on the ar_body.pte Module, with the start_pos
     * the previous method (ar_prefill, then the previous glue) returned.
     */
    @Test
    fun splitLayoutBodyCallsExecuteTheBodyEntry() {
        val methods = golden.root.getJSONArray("split_methods")
        val names = (0 until methods.length()).map { methods.getJSONObject(it).getString("name") }
        val files = JSONArray()

        fun write(
            path: String,
            bytes: ByteArray,
        ) {
            File(dir, path).writeBytes(bytes)
            files.put(JSONObject().put("path", path).put("sha256", Sha256.hex(bytes)).put("size", bytes.size))
        }
        write(
            "tokenizer.json",
            golden
                .tokenizer("byte_level")
                .json
                .toString()
                .toByteArray(),
        )
        val programs = (0 until methods.length()).map { methods.getJSONObject(it).getString("file") }.distinct()
        for (p in programs) write(p, "program $p".toByteArray())
        val m = JSONObject(golden.root.getJSONObject("manifest").toString())
        m
            .put("backend", "executorch")
            .put("methods", methods)
            .put("call_order", JSONArray(names))
            .put("files", files)
        TestFiles.writeManifest(dir, m.toString())
        val b = Bundle.open(dir)
        val executed = mutableListOf<String>()
        val startPos = LinkedHashMap<String, Long>()
        Module.backend =
            Module.Backend { path, method, inputs ->
                val k = executed.size
                val spec = b.manifest.methods[k]
                executed += "${File(path).name}:$method"
                for ((s, e) in spec.inputs.zip(inputs)) {
                    if (s.name == "start_pos") startPos[spec.name] = ExecuTorchRunner.fromEValue(e).longData().single()
                }
                spec.outputs
                    .map { s ->
                        when (s.name) {
                            "start_pos" -> Tensor.ofLongs(s.shape, longArrayOf(1000L + k))
                            else -> Tensor.zeros(s.shape, s.dtype)
                        }
                    }.map { ExecuTorchRunner.toEValue(it) }
                    .toTypedArray<EValue>()
            }
        ExecuTorchRunner(b).use { runner ->
            assertEquals(programs.map { File(dir, it).absolutePath }, Module.loaded, "one Module per program file")
            val gen = Pipeline(b.manifest, runner, b.promptEncoder()).generate(golden.run.prompt, golden.run.seed, golden.run.cfg)
            assertEquals(b.manifest.methods.map { "${it.file}:${it.entry}" }, executed)
            val bodies = names.filter { it.startsWith("ar_body_") }
            assertEquals(10, bodies.size)
            assertEquals(List(10) { "ar_body.pte:ar_body" }, bodies.map { executed[names.indexOf(it)] })
            assertEquals(bodies.associateWith { 1000L + names.indexOf(it) - 1 }, startPos)
            assertEquals((0 until 10).map { "scale_%02d".format(it) }, gen.tokens.keys.toList())
        }
    }
}
