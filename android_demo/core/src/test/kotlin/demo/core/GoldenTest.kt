package demo.core

import org.junit.jupiter.api.Test
import java.io.File
import kotlin.test.assertEquals
import kotlin.test.assertTrue

class GoldenTest {
    @Test
    fun everySelfCheckPasses() {
        val results = SelfCheck.all(TestFiles.golden)
        assertEquals(5, results.size)
        for (r in results) assertTrue(r.passed, r.toString())
    }

    @Test
    fun goldenFileIsSmallAndCoversTheWholeRun() {
        assertTrue(File(TestFiles.root, "docs/app_golden.json").length() < 2_000_000)
        val run = TestFiles.golden.run
        assertEquals(
            TestFiles.golden.manifest.methods
                .map { it.name },
            run.methods.map { it.name },
        )
        assertEquals(10, run.tokens.size)
        assertEquals(680, run.tokens.values.sumOf { it.size })
    }

    @Test
    fun recordedWiringIsConsistent() {
        // Every env input equals the latest earlier output of that name, in the recording itself.
        val latest = HashMap<String, Fingerprint>()
        val m = TestFiles.golden.manifest
        for ((meth, rec) in m.methods.zip(TestFiles.golden.run.methods)) {
            for ((s, fp) in meth.inputs.zip(rec.inputs)) {
                if (s.source ==
                    Source.ENV
                ) {
                    assertEquals(emptyList(), Fingerprint.compare(fp, latest.getValue(s.name)), "${meth.name}.${s.name}")
                }
            }
            for ((s, fp) in meth.outputs.zip(rec.outputs)) latest[s.name] = fp
        }
    }

    @Test
    fun fingerprintOfATensorMatchesPythonsDefinition() {
        val data = FloatArray(100) { it * 0.5f - 10f }
        val fp = Fingerprint.of(Tensor.ofFloats(intArrayOf(10, 10), data))
        assertEquals(data.sumOf { it.toDouble() }, fp.sum)
        assertEquals(data.sumOf { Math.abs(it.toDouble()) }, fp.absSum)
        assertEquals(39.5, fp.maxAbs)
        assertEquals(16, fp.head!!.size)
        assertEquals(-10.0, fp.head!![0])
        assertEquals(39.5, fp.tail!![15])
    }
}
