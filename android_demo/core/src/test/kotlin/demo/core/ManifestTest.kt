package demo.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Test
import java.io.File
import java.nio.file.Files
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import kotlin.test.assertTrue

class ManifestTest {
    private val goldenManifest: JSONObject get() =
        JSONObject(
            TestFiles.golden.root
                .getJSONObject("manifest")
                .toString(),
        )

    @Test
    fun goldenContractParses() {
        val m = TestFiles.golden.manifest
        val names = m.methods.map { it.name }
        assertEquals(listOf("text_encoder") + (0..9).map { "scale_%02d".format(it) } + listOf("diffusion_head", "vae_decoder"), names)
        assertEquals(1, m.schemaVersion)
        assertEquals(256, m.imageSize)
        assertEquals(4.5f, m.defaultCfg)
        val noise = m.method("diffusion_head").inputs.first { it.name == "noise" }
        assertEquals(Source.RNG, noise.source)
        assertEquals(Dist.NORMAL, noise.rng!!.dist)
        assertEquals(listOf(2000L, 2008, 2007, 2006, 2005, 2004, 2003, 2002), noise.rng!!.streams)
        assertEquals(DType.INT64, m.method("text_encoder").inputs[0].dtype)
    }

    @Test
    fun unsupportedSchemaVersionIsRejected() {
        val o = goldenManifest.put("schema_version", 99)
        val e = assertFailsWith<ManifestException> { Manifest.parse(o) }
        assertTrue(e.message!!.contains("99"))
        assertFailsWith<ManifestException> { Manifest.parse(goldenManifest.also { it.remove("schema_version") }) }
    }

    @Test
    fun brokenWiringIsRejectedBeforeRunning() {
        val o = goldenManifest
        val scale3 = o.getJSONArray("methods").getJSONObject(4)
        scale3.getJSONArray("inputs").getJSONObject(1).put("name", "f_hat_typo")
        val e = assertFailsWith<ManifestException> { Manifest.parse(o) }
        assertTrue(e.message!!.contains("f_hat_typo"), e.message)
    }

    @Test
    fun shapeDisagreementBetweenProducerAndConsumerIsRejected() {
        val o = goldenManifest
        val x =
            o
                .getJSONArray("methods")
                .getJSONObject(2)
                .getJSONArray("inputs")
                .getJSONObject(0)
        x.put("shape", JSONArray(listOf(2, 5, 128)))
        assertFailsWith<ManifestException> { Manifest.parse(o) }
    }

    @Test
    fun rngStreamCountMustMatchLeadingDim() {
        val o = goldenManifest
        val noise =
            o
                .getJSONArray("methods")
                .getJSONObject(1)
                .getJSONArray("inputs")
                .getJSONObject(3)
        noise.getJSONObject("rng").put("streams", JSONArray(listOf(0)))
        assertFailsWith<ManifestException> { Manifest.parse(o) }
    }

    @Test
    fun exportBundleLayoutIsAccepted() {
        // export/ bundles: format + version, model object, files {name: {bytes, sha256}}, a zeros-initialised cache input
        val o = goldenManifest
        o.remove("schema_version")
        o.remove("default_cfg")
        o.remove("image_size")
        o.put("format", "hart-mobile-bundle").put("version", 1)
        o.put("model", JSONObject().put("name", "default").put("image_size", 256).put("default_cfg", 3.0))
        o.put("files", JSONObject().put("scale_00.onnx", JSONObject().put("bytes", 3).put("sha256", "a".repeat(64))))
        val s0 = o.getJSONArray("methods").getJSONObject(1)
        s0.getJSONArray("inputs").put(JSONObject("""{"name":"kv","shape":[2,4],"dtype":"float32","source":"zeros"}"""))
        s0.put("file", "scale_00.onnx")
        val m = Manifest.parse(o)
        assertEquals("default", m.model)
        assertEquals(3.0f, m.defaultCfg)
        assertEquals(3L, m.files.single().size)
        assertEquals(
            Source.ZEROS,
            m
                .method("scale_00")
                .inputs
                .last()
                .source,
        )
        assertEquals(listOf("scale_00.onnx"), m.programFiles())
    }

    @Test
    fun fileEntriesAreValidated() {
        val bad =
            goldenManifest.put(
                "files",
                JSONArray().put(JSONObject().put("path", "../x").put("sha256", "a".repeat(64)).put("size", 1)),
            )
        assertFailsWith<ManifestException> { Manifest.parse(bad) }
        val short = goldenManifest.put("files", JSONArray().put(JSONObject().put("path", "x").put("sha256", "abc").put("size", 1)))
        assertFailsWith<ManifestException> { Manifest.parse(short) }
    }

    private fun writeBundle(dir: File): JSONObject {
        val pte = "program bytes".toByteArray()
        val tok =
            TestFiles.golden
                .tokenizer("byte_level")
                .json
                .toString()
                .toByteArray()
        File(dir, "model.pte").writeBytes(pte)
        File(dir, "tokenizer.json").writeBytes(tok)
        val o = goldenManifest
        o.put(
            "files",
            JSONArray()
                .put(JSONObject().put("path", "model.pte").put("sha256", Sha256.hex(pte)).put("size", pte.size))
                .put(JSONObject().put("path", "tokenizer.json").put("sha256", Sha256.hex(tok)).put("size", tok.size)),
        )
        TestFiles.writeManifest(dir, o.toString())
        return o
    }

    @Test
    fun bundleSha256Verification() {
        val dir = Files.createTempDirectory("bundle").toFile()
        try {
            writeBundle(dir)
            val b = Bundle.open(dir)
            assertEquals(listOf("model.pte"), b.manifest.programFiles())
            assertEquals(emptyList(), Bundle.verify(dir, b.manifest))

            File(dir, "model.pte").writeBytes("program bytez".toByteArray()) // same size, other content
            val p = Bundle.verify(dir, b.manifest)
            assertTrue(p.single().contains("sha256"), p.toString())
            assertFailsWith<ManifestException> { Bundle.open(dir) }

            File(dir, "model.pte").writeBytes("short".toByteArray())
            assertTrue(Bundle.verify(dir, b.manifest).single().contains("size"))

            File(dir, "model.pte").delete()
            assertTrue(Bundle.verify(dir, b.manifest).single().contains("missing"))
            assertNull(null)
        } finally {
            dir.deleteRecursively()
        }
    }

    /** manifest.json + manifest.sha256 exactly as export/bundle.py write_manifest wrote them (docs/app_golden.json). */
    private fun writeExporterManifest(dir: File): String {
        val case = TestFiles.golden.root.getJSONObject("bundle_digest")
        File(dir, Bundle.MANIFEST).writeBytes(case.getString("manifest_json").toByteArray(Charsets.UTF_8))
        File(dir, Bundle.DIGEST).writeBytes(case.getString("manifest_sha256").toByteArray(Charsets.UTF_8))
        return case.getString("manifest_json")
    }

    @Test
    fun exporterDigestVerifiesAndAnyEditFails() {
        val dir = Files.createTempDirectory("digest").toFile()
        try {
            val text = writeExporterManifest(dir)
            val b = Bundle.open(dir, verifyFiles = false) // the digest is checked either way; no files here
            assertEquals(0.6, b.manifest.goldenLimits()["token_agreement"]) // the documented 8da4w limit, as written
            val loosened = text.replaceFirst("\"token_agreement\": 0.6,", "\"token_agreement\": 0.1,")
            assertTrue(loosened != text)
            for (edit in listOf(loosened, text.replaceFirst("\n", "\n "), text.trimEnd())) {
                File(dir, Bundle.MANIFEST).writeText(edit)
                val e = assertFailsWith<ManifestException> { Bundle.open(dir, verifyFiles = false) }
                assertTrue(e.message!!.contains("edited after export (digest mismatch"), e.message)
            }
            writeExporterManifest(dir)
            val digest = File(dir, Bundle.DIGEST).readText()
            for (bad in listOf(digest.uppercase().replace("MANIFEST.JSON", "manifest.json"), digest.trimEnd(), "$digest\n")) {
                File(dir, Bundle.DIGEST).writeText(bad)
                val e = assertFailsWith<ManifestException> { Bundle.open(dir) }
                assertTrue(e.message!!.contains("is not one line"), e.message)
            }
            File(dir, Bundle.DIGEST).delete()
            assertTrue(assertFailsWith<ManifestException> { Bundle.open(dir) }.message!!.contains("has no manifest.sha256"))
        } finally {
            dir.deleteRecursively()
        }
    }

    @Test
    fun symlinkedFilesAreRefused() {
        val dir = Files.createTempDirectory("bundle").toFile()
        val outside = Files.createTempFile("outside", ".pte").toFile()
        try {
            writeBundle(dir)
            File(dir, "model.pte").copyTo(outside, overwrite = true)
            File(dir, "model.pte").delete()
            Files.createSymbolicLink(File(dir, "model.pte").toPath(), outside.toPath())
            val b = Bundle.open(dir, verifyFiles = false)
            assertTrue(Bundle.verify(dir, b.manifest).single().contains("model.pte is a symlink"))
        } finally {
            dir.deleteRecursively()
            outside.delete()
        }
    }

    @Test
    fun sha256KnownAnswer() {
        assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", Sha256.hex("abc".toByteArray()))
    }
}
