package demo.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Test
import kotlin.math.abs
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** docs/preview_golden.json (tools/make_preview_golden.py, checked fresh by tests/test_preview.py). */
class PreviewTest {
    private val golden = JSONObject(TestFiles.text("docs/preview_golden.json"))

    private fun floats(a: JSONArray) = FloatArray(a.length()) { a.getDouble(it).toFloat() }

    private fun shape(a: JSONArray) = IntArray(a.length()) { a.getInt(it) }

    @Test
    fun fixtureCasesMatchPython() {
        val cases = golden.getJSONArray("cases")
        assertTrue(cases.length() >= 3)
        for (i in 0 until cases.length()) {
            val c = cases.getJSONObject(i)
            val proj =
                PreviewProjection.parse(
                    JSONObject().put("latent_channels", c.getInt("channels")).put("weight", c.get("weight")).put("bias", c.get("bias")),
                )!!
            val fHat = Tensor.ofFloats(shape(c.getJSONArray("f_hat_shape")), floats(c.getJSONArray("f_hat")))
            val outputs =
                if (c.isNull("e_last")) {
                    mapOf("f_hat" to fHat)
                } else {
                    mapOf("e_last" to Tensor.ofFloats(shape(c.getJSONArray("e_last_shape")), floats(c.getJSONArray("e_last"))))
                }
            val latent = PreviewProjection.scaleLatent(outputs, mapOf("f_hat" to fHat))!!
            val grid = proj.rgbGrid(latent)
            val want = floats(c.getJSONArray("rgb_grid"))
            assertEquals(want.size, grid.size)
            for (k in want.indices) assertTrue(abs(want[k] - grid[k]) <= 1e-5f, "${c.getString("name")} rgb[$k]: ${grid[k]} vs ${want[k]}")
            val size = c.getInt("size")
            val rgba = proj.toRgba(latent, size)
            val wantRgba = c.getJSONArray("rgba")
            assertEquals(wantRgba.length(), rgba.size)
            for (k in rgba.indices) {
                assertTrue(abs((rgba[k].toInt() and 0xFF) - wantRgba.getInt(k)) <= 1, "${c.getString("name")} rgba[$k]")
            }
            val argb = proj.toArgb(latent, size)
            assertEquals(0xFF, argb[0] ushr 24)
            assertEquals(wantRgba.getInt(0), (argb[0] shr 16) and 0xFF)
        }
    }

    @Test
    fun manifestPreviewSectionIsOptionalAndChecked() {
        assertNull(PreviewProjection.parse(null))
        val good =
            JSONObject()
                .put(
                    "latent_channels",
                    2,
                ).put("weight", JSONArray("[[1,0],[0,1],[0.5,0.5]]"))
                .put("bias", JSONArray("[0,0,0]"))
        assertEquals(2, PreviewProjection.parse(good)!!.channels)
        assertFailsWith<ManifestException> {
            PreviewProjection.parse(
                JSONObject(good.toString()).put("weight", JSONArray("[[1,0],[0,1]]")),
            )
        }
        assertFailsWith<ManifestException> { PreviewProjection.parse(JSONObject(good.toString()).put("bias", JSONArray("[0,\"x\",0]"))) }
        assertFailsWith<ManifestException> { PreviewProjection.parse(JSONObject(good.toString()).put("latent_channels", 0)) }
        val proj = PreviewProjection.parse(good)!!
        assertFailsWith<IllegalArgumentException> { proj.rgbGrid(Tensor.ofFloats(intArrayOf(1, 3, 1, 1), FloatArray(3))) }
    }
}
