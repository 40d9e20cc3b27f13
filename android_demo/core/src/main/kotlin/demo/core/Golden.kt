package demo.core

import org.json.JSONArray
import org.json.JSONObject

class GoldenRngCase(
    val seed: Long,
    val spec: TensorSpec,
    val bits: IntArray,
)

class GoldenTokenizerCase(
    val text: String,
    val ids: IntArray,
    val maskSum: Int,
)

class GoldenTokenizer(
    val name: String,
    val padId: Int,
    val maxTokens: Int,
    val json: JSONObject,
    val cases: List<GoldenTokenizerCase>,
)

class CheckResult(
    val name: String,
    val passed: Boolean,
    val detail: String,
) {
    override fun toString(): String = "${if (passed) "PASS" else "FAIL"} $name: $detail"
}

/** docs/app_golden.json, written by tools/make_app_golden.py from the Python reference. */
class AppGolden(
    val root: JSONObject,
) {
    val manifest: Manifest = Manifest.parse(root.getJSONObject("manifest"))
    val rng: List<GoldenRngCase>
    val tokenizers: List<GoldenTokenizer>
    val run: Recording = Recording.fromJson(root.getJSONObject("run"))
    val pixels: JSONObject = root.getJSONObject("pixels")

    init {
        require(root.getInt("schema_version") == 1) { "app golden schema_version ${root.getInt("schema_version")} is not 1" }
        val r = root.getJSONArray("rng")
        rng =
            (0 until r.length()).map {
                val c = r.getJSONObject(it)
                val sh = c.getJSONArray("shape")
                val st = c.getJSONArray("streams")
                val dist = if (c.getString("dist") == "uniform") Dist.UNIFORM else Dist.NORMAL
                val spec =
                    TensorSpec(
                        "noise",
                        IntArray(sh.length()) { i -> sh.getInt(i) },
                        DType.FLOAT32,
                        Source.RNG,
                        RngSpec(dist, (0 until st.length()).map { i -> st.getLong(i) }),
                    )
                val b = c.getJSONArray("bits")
                GoldenRngCase(c.getLong("seed"), spec, IntArray(b.length()) { i -> b.getString(i).toLong(16).toInt() })
            }
        val t = root.getJSONArray("tokenizers")
        tokenizers =
            (0 until t.length()).map {
                val o = t.getJSONObject(it)
                val cs = o.getJSONArray("cases")
                GoldenTokenizer(
                    o.getString("name"),
                    o.getInt("pad_id"),
                    o.getInt("max_tokens"),
                    o.getJSONObject("tokenizer_json"),
                    (0 until cs.length()).map { i ->
                        val c = cs.getJSONObject(i)
                        val ids = c.getJSONArray("ids")
                        GoldenTokenizerCase(c.getString("text"), IntArray(ids.length()) { j -> ids.getInt(j) }, c.getInt("mask_sum"))
                    },
                )
            }
    }

    fun tokenizer(name: String): GoldenTokenizer = tokenizers.first { it.name == name }

    companion object {
        fun parse(text: String): AppGolden = AppGolden(JSONObject(text))
    }
}

/**
 * The portable self-check the tests and the app's "Verify bundle" screen both run: RNG draws,
 * tokenizers, pixel conversion, and a replay of the recorded reference run through [Pipeline].
 */
object SelfCheck {
    fun rng(g: AppGolden): CheckResult {
        for ((k, c) in g.rng.withIndex()) {
            val got = Philox.drawNoise(c.spec, c.seed).floatData()
            if (got.size != c.bits.size) return CheckResult("rng", false, "case $k: ${got.size} values, expected ${c.bits.size}")
            for (i in got.indices) {
                val e = Float.fromBits(c.bits[i])
                val ok =
                    if (c.spec.rng!!.dist ==
                        Dist.UNIFORM
                    ) {
                        got[i].toRawBits() == c.bits[i]
                    } else {
                        Fingerprint.close(got[i].toDouble(), e.toDouble())
                    }
                if (!ok) return CheckResult("rng", false, "case $k element $i: ${got[i]} != $e")
            }
        }
        return CheckResult("rng", true, "${g.rng.size} pipeline draws (uniform bit-exact, normal within tolerance)")
    }

    fun tokenizer(t: GoldenTokenizer): CheckResult {
        val name = "tokenizer ${t.name}"
        val tok =
            try {
                HfTokenizer(t.json)
            } catch (e: Exception) {
                return CheckResult(name, false, "load failed: ${e.message}")
            }
        val enc = PromptEncoder(tok, t.maxTokens)
        if (enc.padId != t.padId) return CheckResult(name, false, "pad id ${enc.padId} != ${t.padId}")
        for (c in t.cases) {
            val ids = enc.ids(c.text)
            if (!ids.contentEquals(c.ids)) {
                val at = ids.indices.firstOrNull { it >= c.ids.size || ids[it] != c.ids[it] } ?: ids.size
                return CheckResult(
                    name,
                    false,
                    "'${c.text.take(30)}': ids differ at $at: ${ids.toList().take(at + 3)} vs ${c.ids.toList().take(at + 3)}",
                )
            }
            val mask =
                enc
                    .encode(c.text)
                    .second
                    .floatData()
                    .sum()
                    .toInt()
            if (mask != c.maskSum) return CheckResult(name, false, "'${c.text.take(30)}': mask sum $mask != ${c.maskSum}")
        }
        return CheckResult(name, true, "${t.cases.size} prompts match tokenizers")
    }

    fun pixels(g: AppGolden): CheckResult {
        val p = g.pixels
        val bits = p.getJSONArray("bits")
        val u8 = p.getJSONArray("uint8")
        for (i in 0 until bits.length()) {
            val x = Float.fromBits(bits.getString(i).toLong(16).toInt())
            val got = Pixels.toUint8(x)
            if (got != u8.getInt(i)) return CheckResult("pixels", false, "$x -> $got, expected ${u8.getInt(i)}")
        }
        val img = p.getJSONObject("image")
        val sh = img.getJSONArray("shape")
        val chw = img.getJSONArray("chw")
        val t = Tensor.ofFloats(IntArray(sh.length()) { sh.getInt(it) }, FloatArray(chw.length()) { chw.getDouble(it).toFloat() })
        val rgba = Pixels.toRgba(t)
        val er = img.getJSONArray("rgba")
        for (i in 0 until er.length()) {
            if ((rgba[i].toInt() and 0xFF) !=
                er.getInt(i)
            ) {
                return CheckResult("pixels", false, "rgba[$i] ${rgba[i].toInt() and 0xFF} != ${er.getInt(i)}")
            }
        }
        val argb = Pixels.toArgb(t)
        val ea = img.getJSONArray("argb")
        for (i in 0 until ea.length()) {
            if (argb[i] != ea.getInt(i)) return CheckResult("pixels", false, "argb[$i] ${argb[i]} != ${ea.getInt(i)}")
        }
        return CheckResult("pixels", true, "${bits.length()} values + a ${sh.join("x")} image")
    }

    /** Replays the recorded run through the app's own loop; any wiring difference fails. */
    fun replay(g: AppGolden): CheckResult {
        val bt = g.tokenizer("byte_level")
        val encoder = PromptEncoder(HfTokenizer(bt.json), bt.maxTokens)
        val runner = ReplayRunner(g.run)
        val gen =
            try {
                Pipeline(g.manifest, runner, encoder).generate(g.run.prompt, g.run.seed, g.run.cfg)
            } catch (e: Exception) {
                return CheckResult("replay", false, "${e::class.simpleName}: ${e.message}")
            }
        if (!runner.finished) return CheckResult("replay", false, "only ${runner.calls.size} of ${g.run.methods.size} methods ran")
        for ((k, v) in g.run.tokens) {
            val got = gen.tokens[k]?.longData() ?: return CheckResult("replay", false, "no tokens for $k")
            if (!got.contentEquals(v)) return CheckResult("replay", false, "$k tokens differ")
        }
        val img = Fingerprint.compare(runner.resolve(gen.image), g.run.image)
        if (img.isNotEmpty()) return CheckResult("replay", false, "image: ${img.joinToString()}")
        return CheckResult("replay", true, "${runner.calls.size} methods, inputs and outputs match the recording")
    }

    fun all(g: AppGolden): List<CheckResult> = listOf(rng(g)) + g.tokenizers.map { tokenizer(it) } + listOf(pixels(g), replay(g))
}
