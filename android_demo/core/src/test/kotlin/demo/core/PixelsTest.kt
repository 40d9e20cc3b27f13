package demo.core

import org.junit.jupiter.api.Test
import kotlin.test.assertEquals
import kotlin.test.assertTrue

class PixelsTest {
    @Test
    fun goldenPixelCasesMatchPython() {
        val r = SelfCheck.pixels(TestFiles.golden)
        assertTrue(r.passed, r.toString())
    }

    @Test
    fun truncationClampAndNan() {
        assertEquals(0, Pixels.toUint8(-3f))
        assertEquals(255, Pixels.toUint8(1f))
        assertEquals(255, Pixels.toUint8(7f))
        assertEquals(127, Pixels.toUint8(0.5f), "127.5 truncates")
        assertEquals(0, Pixels.toUint8(Float.NaN))
    }

    @Test
    fun rgbaAndArgbLayouts() {
        // [1, 3, 1, 2]: pixel 0 = (1, 0, 0.5), pixel 1 = (0, 1, 0)
        val t = Tensor.ofFloats(intArrayOf(1, 3, 1, 2), floatArrayOf(1f, 0f, 0f, 1f, 0.5f, 0f))
        val rgba = Pixels.toRgba(t).map { it.toInt() and 0xFF }
        assertEquals(listOf(255, 0, 127, 255, 0, 255, 0, 255), rgba)
        val argb = Pixels.toArgb(t)
        assertEquals(0xFFFF007F.toInt(), argb[0])
        assertEquals(0xFF00FF00.toInt(), argb[1])
    }

    @Test
    fun tokenPreviewIsStableAndSized() {
        val p = Pixels.tokenPreview(longArrayOf(1, 2, 3, 4), 8)
        assertEquals(64, p.size)
        assertEquals(p[0], Pixels.tokenPreview(longArrayOf(1, 9, 9, 9), 8)[0])
        assertTrue(p.all { it ushr 24 == 0xFF })
    }
}
