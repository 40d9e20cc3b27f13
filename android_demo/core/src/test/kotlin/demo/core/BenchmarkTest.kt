package demo.core

import org.junit.jupiter.api.Test
import kotlin.test.assertEquals
import kotlin.test.assertTrue

class BenchmarkTest {
    /** Returns zeros of the spec's output shapes: enough to drive the loop. */
    private class ZerosRunner(
        val manifest: Manifest,
    ) : MethodRunner {
        var calls = 0

        override fun run(
            method: String,
            inputs: List<Tensor>,
        ): List<Tensor> {
            calls++
            return manifest.method(method).outputs.map { Tensor.zeros(it.shape, it.dtype) }
        }
    }

    @Test
    fun benchmarkJsonHasTheDocumentedFields() {
        val m = TestFiles.golden.manifest
        val runner = ZerosRunner(m)
        val p = Pipeline(m, runner, PromptEncoder(ByteTokenizer(), m.tokenizer.maxTokens))
        val j = Benchmark.run(p, "a cat", 3, 4.5f, runs = 2, warmup = 1, device = "jvm-test")
        assertEquals(3 * 13, runner.calls)
        assertEquals(1, j.getInt("schema_version"))
        assertEquals("jvm-test", j.getString("device"))
        assertEquals("reference", j.getString("backend"))
        val stages = j.getJSONObject("stages")
        assertEquals(listOf("tokenize") + m.methods.map { it.name }, stages.keys().asSequence().toList())
        for (k in stages.keys()) assertEquals(2, stages.getJSONObject(k).getJSONArray("runs_ms").length())
        val totals = j.getJSONArray("total_ms")
        assertEquals(2, totals.length())
        assertTrue(totals.getDouble(0) >= 0.0)
        assertEquals("hart-mobile/benchmark", j.getString("schema"))
        val target = j.getJSONArray("targets").getJSONObject(0)
        val scale0 = target.getJSONObject("stages").getJSONObject("scale_00")
        for (k in listOf("min_ms", "median_ms", "p90_ms", "runs_ms")) assertTrue(scale0.has(k), k)
        // ci.sh validates this file with benchmarks/schema.py
        System.getProperty("benchmark.out")?.let { java.io.File(it).writeText(j.toString(1)) }
    }

    @Test
    fun summaryMatchesPythonNearestRank() {
        val s = Benchmark.summarize(listOf(5.0, 1.0, 3.0, 2.0))
        assertEquals(1.0, s.getDouble("min_ms"))
        assertEquals(2.5, s.getDouble("median_ms"))
        assertEquals(5.0, s.getDouble("p90_ms"))
        val ten = Benchmark.summarize((1..10).map { it.toDouble() })
        assertEquals(10.0, ten.getDouble("p90_ms")) // round(9.5) == 10 (half to even)
        val twenty = Benchmark.summarize((1..20).map { it.toDouble() })
        assertEquals(18.0, twenty.getDouble("p90_ms")) // round(18.5) == 18
    }
}
