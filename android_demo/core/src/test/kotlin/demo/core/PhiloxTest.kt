package demo.core

import org.json.JSONObject
import org.junit.jupiter.api.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class PhiloxTest {
    private val vectors = JSONObject(TestFiles.text("docs/rng_test_vectors.json"))

    private fun hex(s: String): Int = s.toLong(16).toInt()

    @Test
    fun knownAnswerVectors() {
        val kat = vectors.getJSONArray("kat")
        assertEquals(3, kat.length())
        for (i in 0 until kat.length()) {
            val k = kat.getJSONObject(i)
            val c = k.getJSONArray("counter")
            val key = k.getJSONArray("key")
            val exp = k.getJSONArray("expected")
            val got = Philox.block(IntArray(4) { hex(c.getString(it)) }, IntArray(2) { hex(key.getString(it)) })
            assertContentEquals(IntArray(4) { hex(exp.getString(it)) }, got, "kat $i")
        }
    }

    @Test
    fun wordsAndUniformsAreBitExact() {
        val cases = vectors.getJSONArray("cases")
        assertEquals(9, cases.length())
        for (i in 0 until cases.length()) {
            val c = cases.getJSONObject(i)
            val seed = c.getLong("seed")
            val stream = c.getLong("stream")
            val offset = c.getLong("offset")
            val words = c.getJSONArray("uint32")
            val got = Philox.words(seed, stream, words.length(), offset)
            assertContentEquals(IntArray(words.length()) { words.getLong(it).toInt() }, got, "uint32 case $i")
            val ub = c.getJSONArray("uniform_bits")
            val u = Philox.uniform(seed, stream, ub.length(), offset)
            assertContentEquals(IntArray(ub.length()) { hex(ub.getString(it)) }, IntArray(u.size) { u[it].toRawBits() }, "uniform case $i")
        }
    }

    @Test
    fun normalsAndGumbelsWithinTolerance() {
        val cases = vectors.getJSONArray("cases")
        for (i in 0 until cases.length()) {
            val c = cases.getJSONObject(i)
            for ((key, draw) in listOf<Pair<String, (Int) -> FloatArray>>(
                "normal_bits" to { n -> Philox.normal(c.getLong("seed"), c.getLong("stream"), n, c.getLong("offset")) },
                "gumbel_bits" to { n -> Philox.gumbel(c.getLong("seed"), c.getLong("stream"), n, c.getLong("offset")) },
            )) {
                val bits = c.getJSONArray(key)
                val got = draw(bits.length())
                for (j in got.indices) {
                    val e = Float.fromBits(hex(bits.getString(j)))
                    val ulp2 = 2 * Math.ulp(e)
                    val d = Math.abs(got[j] - e)
                    assertTrue(d <= 1e-6f || d <= ulp2, "$key case $i [$j]: ${got[j]} vs $e")
                }
            }
        }
    }

    @Test
    fun anySliceIsTheSameSequence() {
        val all = Philox.words(7, 1005, 40)
        for (off in listOf(0, 1, 3, 4, 5, 17)) {
            assertContentEquals(all.copyOfRange(off, off + 13), Philox.words(7, 1005, 13, off.toLong()))
        }
        val normalsOdd = Philox.normal(7, 2000, 5)
        assertContentEquals(Philox.normal(7, 2000, 6).copyOf(5), normalsOdd, "odd count drops the last sine")
    }

    @Test
    fun uniformsStayInsideTheOpenInterval() {
        assertEquals(1f - 1f / 16777216f, Philox.wordToUniform(-1))
        assertEquals(1f / 16777216f, Philox.wordToUniform(0))
    }

    @Test
    fun invalidArgumentsAreRejected() {
        assertFailsWith<IllegalArgumentException> { Philox.words(-1, 0, 1) }
        assertFailsWith<IllegalArgumentException> { Philox.words(0, -1, 1) }
        assertFailsWith<IllegalArgumentException> { Philox.words(0, 0, -1) }
    }

    @Test
    fun pipelineNoiseMatchesPythonDrawNoise() {
        val r = SelfCheck.rng(TestFiles.golden)
        assertTrue(r.passed, r.toString())
    }
}
