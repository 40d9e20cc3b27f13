package demo.core

import org.json.JSONObject
import org.junit.jupiter.api.Test
import java.util.regex.Pattern
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class TokenizerTest {
    private val golden = TestFiles.golden

    @Test
    fun byteLevelTokenizerJsonMatchesPython() {
        val r = SelfCheck.tokenizer(golden.tokenizer("byte_level"))
        assertTrue(r.passed, r.toString())
    }

    @Test
    fun qwen2StyleBpeMatchesPython() {
        val t = golden.tokenizer("qwen2_style_bpe")
        assertTrue(
            t.json
                .getJSONObject("model")
                .getJSONArray("merges")
                .length() > 200,
            "the BPE has real merges",
        )
        val r = SelfCheck.tokenizer(t)
        assertTrue(r.passed, r.toString())
    }

    @Test
    fun builtInByteTokenizerEqualsTheJsonOne() {
        val t = golden.tokenizer("byte_level")
        val enc = PromptEncoder(ByteTokenizer(), t.maxTokens)
        assertEquals(256, enc.padId)
        for (c in t.cases) assertContentEquals(c.ids, enc.ids(c.text), c.text)
    }

    @Test
    fun paddingTruncationAndMask() {
        val enc = PromptEncoder(ByteTokenizer(), 8)
        val (ids, mask) = enc.encode("abc")
        assertContentEquals(intArrayOf(1, 8), ids.shape)
        assertContentEquals(longArrayOf(97, 98, 99, 256, 256, 256, 256, 256), ids.longData())
        assertContentEquals(floatArrayOf(1f, 1f, 1f, 0f, 0f, 0f, 0f, 0f), mask.floatData())
        assertEquals(8, enc.ids("0123456789").size)
        val (ids2, mask2) = enc.encode("a<|endoftext|>b")
        assertContentEquals(longArrayOf(97, 256, 98, 256, 256, 256, 256, 256), ids2.longData())
        assertEquals(2f, mask2.floatData().sum(), "an embedded pad token is masked like padding")
    }

    @Test
    fun truncatedGoldenCaseIsExactly300() {
        val t = golden.tokenizer("byte_level")
        val long = t.cases.first { it.text.length > 300 }
        assertEquals(300, long.ids.size)
        assertEquals(300, long.maskSum)
    }

    @Test
    fun bpeMergesByRankNotByPosition() {
        // vocab a b c ab bc abc; merge (b c) has the better rank, so "abc" -> bc first, then a+bc.
        val j =
            JSONObject(
                """{"model":{"type":"BPE","dropout":null,"unk_token":null,"vocab":{"a":0,"b":1,"c":2,"bc":3,"abc":4,"ab":5,"<pad>":6},
                "merges":["b c","a bc","a b"]},"added_tokens":[{"id":6,"content":"<pad>","special":true}],
                "normalizer":null,"pre_tokenizer":null,"post_processor":null}""",
            )
        val tok = HfTokenizer(j)
        assertContentEquals(intArrayOf(4), tok.encodeIds("abc"))
        assertContentEquals(intArrayOf(5, 5), tok.encodeIds("abab"))
        assertContentEquals(intArrayOf(4, 6, 0), tok.encodeIds("abc<pad>a"))
    }

    @Test
    fun splitBehaviours() {
        val p = Pattern.compile("-")
        assertEquals(listOf("a", "-", "b"), HfTokenizer.split("a-b", p, "Isolated", false))
        assertEquals(listOf("a", "b"), HfTokenizer.split("a-b", p, "Removed", false))
        assertEquals(listOf("a-", "b"), HfTokenizer.split("a-b", p, "MergedWithPrevious", false))
        assertEquals(listOf("a", "-b"), HfTokenizer.split("a-b", p, "MergedWithNext", false))
        assertEquals(listOf("a", "--", "b"), HfTokenizer.split("a--b", p, "Contiguous", false))
    }

    @Test
    fun unicodeWhitespaceIsWhitespaceLikeOniguruma() {
        val re = HfTokenizer.compile("\\s+")
        for (ws in listOf(
            "\u00a0",
            "\u0085",
            "\u000b",
            "\u2028",
            "\u3000",
        )) {
            assertTrue(re.matcher(ws).matches(), "U+%04X".format(ws[0].code))
        }
        for (non in listOf("\u200b", "\u180e", "\u001c")) assertTrue(!re.matcher(non).matches(), "U+%04X".format(non[0].code))
    }

    @Test
    fun unsupportedTokenizerFeaturesAreRejected() {
        val base = golden.tokenizer("byte_level").json.toString()
        val wordPiece = JSONObject(base).also { it.getJSONObject("model").put("type", "WordPiece") }
        assertFailsWith<ManifestException> { HfTokenizer(wordPiece) }
        val template = JSONObject(base).also { it.put("post_processor", JSONObject().put("type", "TemplateProcessing")) }
        assertFailsWith<ManifestException> { HfTokenizer(template) }
        val metaspace = JSONObject(base).also { it.put("pre_tokenizer", JSONObject().put("type", "Metaspace")) }
        assertFailsWith<ManifestException> { HfTokenizer(metaspace) }
        assertFailsWith<ManifestException> { PromptEncoder(HfTokenizer(JSONObject(base)), 300, "<missing>") }
    }
}
