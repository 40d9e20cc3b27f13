package demo.core

import org.json.JSONArray
import org.json.JSONObject
import java.time.Instant

/**
 * Benchmark mode: `warmup` untimed generations, then `runs` timed ones. The JSON has the simple
 * phone fields (schema_version, device, backend, stages {name: {runs_ms}}, total_ms) and one
 * `targets` entry in the shared hart-mobile/benchmark schema (docs/benchmark-schema.md), so the
 * host tools can read it directly. Stage names: `tokenize` + the manifest's methods.
 */
object Benchmark {
    const val SCHEMA = "hart-mobile/benchmark"
    const val SCHEMA_VERSION = 1

    fun run(
        pipeline: Pipeline,
        prompt: String,
        seed: Long,
        cfg: Float,
        runs: Int,
        warmup: Int,
        device: String,
        os: String = System.getProperty("os.name") ?: "unknown",
        bundleName: String = pipeline.manifest.model,
        cancel: CancelToken? = null,
        clock: () -> Instant = Instant::now,
    ): JSONObject {
        require(runs >= 1 && warmup >= 0) { "runs must be >= 1 and warmup >= 0" }
        repeat(warmup) { pipeline.generate(prompt, seed, cfg, cancel = cancel) }
        val stages = LinkedHashMap<String, MutableList<Double>>()
        val totals = mutableListOf<Double>()
        repeat(runs) {
            val g = pipeline.generate(prompt, seed, cfg, cancel = cancel)
            for ((k, v) in g.timingsMs) stages.getOrPut(k) { mutableListOf() } += round3(v)
            totals += round3(g.timingsMs.values.sum())
        }
        val simple = JSONObject()
        val full = JSONObject()
        for ((k, v) in stages) {
            simple.put(k, JSONObject().put("runs_ms", JSONArray(v)))
            full.put(k, summarize(v))
        }
        val target =
            JSONObject()
                .put("name", bundleName)
                .put("backend", pipeline.manifest.backend)
                .put("bundle", bundleName)
                .put("stages", full)
                .put("end_to_end", summarize(totals))
        return JSONObject()
            .put("schema", SCHEMA)
            .put("schema_version", SCHEMA_VERSION)
            .put("created", clock().toString())
            .put("device", device)
            .put("backend", pipeline.manifest.backend)
            .put("stages", simple)
            .put("total_ms", JSONArray(totals))
            .put("machine", JSONObject().put("device", device).put("os", os).put("cores", Runtime.getRuntime().availableProcessors()))
            .put(
                "settings",
                JSONObject()
                    .put("runs", runs)
                    .put("warmup", warmup)
                    .put("prompt", prompt)
                    .put("seed", seed)
                    .put("cfg", cfg.toDouble())
                    .put("config", pipeline.manifest.model),
            ).put("baseline", JSONObject.NULL)
            .put("targets", JSONArray().put(target))
    }

    /** min / median / p90 (nearest rank, as benchmarks/schema.py) + the raw runs. */
    fun summarize(runs: List<Double>): JSONObject {
        require(runs.isNotEmpty())
        val s = runs.sorted()
        val n = s.size
        val median = if (n % 2 == 1) s[n / 2] else (s[n / 2 - 1] + s[n / 2]) / 2
        val rank = Math.rint(0.9 * n + 0.5).toInt() // Python round(): half to even
        val p90 = s[minOf(n - 1, maxOf(0, rank - 1))]
        return JSONObject()
            .put("min_ms", s[0])
            .put("median_ms", median)
            .put("p90_ms", p90)
            .put("runs_ms", JSONArray(runs))
    }

    private fun round3(x: Double): Double = Math.round(x * 1000.0) / 1000.0
}
