package demo.core

import org.json.JSONArray
import org.json.JSONObject
import java.text.Normalizer
import java.util.regex.Pattern

/** Text to token ids (no padding); implemented from a Hugging Face tokenizer.json. */
interface TextTokenizer {
    fun encodeIds(text: String): IntArray

    fun tokenId(token: String): Int?
}

/** GPT-2's reversible byte <-> printable-char map (the ByteLevel alphabet). */
object ByteLevel {
    val byteToChar: CharArray =
        CharArray(256).also { table ->
            var shift = 0
            for (b in 0 until 256) {
                val keep = b in 0x21..0x7E || b in 0xA1..0xAC || b in 0xAE..0xFF
                table[b] = if (keep) b.toChar() else (256 + shift++).toChar()
            }
        }

    fun encode(s: String): String {
        val bytes = s.toByteArray(Charsets.UTF_8)
        val sb = StringBuilder(bytes.size)
        for (b in bytes) sb.append(byteToChar[b.toInt() and 0xFF])
        return sb.toString()
    }

    /** GPT-2 pre-tokenizer regex used by ByteLevel(use_regex=true). */
    const val GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
}

/**
 * The subset of Hugging Face `tokenizers` needed for byte-level BPE tokenizers (GPT-2 style, the
 * HART default byte tokenizer, Qwen2): added tokens (leftmost-longest, matched on the raw text),
 * normalizers NFC/NFD/NFKC/NFKD/Lowercase/Sequence, pre-tokenizers ByteLevel/Split/Sequence, the BPE
 * model (merge ranks, ignore_merges, byte_fallback, unk), and a no-op ByteLevel post-processor.
 * Anything else is rejected at load time rather than tokenized differently.
 *
 * Regexes run with Java's UNICODE_CHARACTER_CLASS, so `\s` is Unicode White_Space, as in the
 * Oniguruma engine `tokenizers` uses (checked by the golden cases with NBSP, NEL, VT, U+2028).
 */
class HfTokenizer(
    json: JSONObject,
) : TextTokenizer {
    private class Added(
        val content: String,
        val id: Int,
    )

    private val added: List<Added>
    private val normalizers: List<(String) -> String>
    private val preTokenizers: List<(List<String>) -> List<String>>
    private val vocab = HashMap<String, Int>()
    private val merges = HashMap<Long, Long>() // (idA << 32 | idB) -> (rank << 32 | newId)
    private val unkId: Int?
    private val byteFallback: Boolean
    private val fuseUnk: Boolean
    private val ignoreMerges: Boolean
    private val cache = HashMap<String, IntArray>()

    init {
        val model = json.getJSONObject("model")
        if (model.optString("type", "BPE") != "BPE") throw ManifestException("tokenizer model ${model.optString("type")} is not BPE")
        if (!model.isNull("dropout")) throw ManifestException("BPE dropout is not supported")
        for (k in listOf("continuing_subword_prefix", "end_of_word_suffix")) {
            if (!model.isNull(k) && model.optString(k).isNotEmpty()) throw ManifestException("BPE $k is not supported")
        }
        val v = model.getJSONObject("vocab")
        for (k in v.keys()) vocab[k] = v.getInt(k)
        val m = model.getJSONArray("merges")
        for (rank in 0 until m.length()) {
            val (a, b) =
                when (val e = m.get(rank)) {
                    is JSONArray -> {
                        e.getString(0) to e.getString(1)
                    }

                    is String -> {
                        val parts = e.split(' ')
                        if (parts.size != 2) throw ManifestException("bad merge '$e'")
                        parts[0] to parts[1]
                    }

                    else -> {
                        throw ManifestException("bad merge entry $e")
                    }
                }
            val ia = vocab[a] ?: throw ManifestException("merge '$a $b': '$a' not in vocab")
            val ib = vocab[b] ?: throw ManifestException("merge '$a $b': '$b' not in vocab")
            val inew = vocab[a + b] ?: throw ManifestException("merge '$a $b': '${a + b}' not in vocab")
            val key = (ia.toLong() shl 32) or (ib.toLong() and 0xFFFFFFFFL)
            if (key !in merges) merges[key] = (rank.toLong() shl 32) or inew.toLong()
        }
        unkId = if (model.isNull("unk_token")) null else vocab[model.getString("unk_token")]
        byteFallback = model.optBoolean("byte_fallback", false)
        fuseUnk = model.optBoolean("fuse_unk", false)
        ignoreMerges = model.optBoolean("ignore_merges", false)

        val addedJson = json.optJSONArray("added_tokens") ?: JSONArray()
        added =
            (0 until addedJson.length())
                .map {
                    val a = addedJson.getJSONObject(it)
                    for (flag in listOf("single_word", "lstrip", "rstrip")) {
                        val content = a.getString("content")
                        if (a.optBoolean(flag, false)) throw ManifestException("added token $content: $flag is not supported")
                    }
                    Added(a.getString("content"), a.getInt("id"))
                }.sortedByDescending { it.content.length }
        for (a in added) vocab.putIfAbsent(a.content, a.id)

        normalizers = parseNormalizer(json.opt("normalizer"))
        preTokenizers = parsePreTokenizer(json.opt("pre_tokenizer"))
        when (val pp = json.opt("post_processor")) {
            null, JSONObject.NULL -> {}

            is JSONObject -> {
                if (pp.getString("type") != "ByteLevel") {
                    throw ManifestException("post_processor ${pp.getString("type")} is not supported (it would add tokens)")
                }
            }

            else -> {
                throw ManifestException("bad post_processor")
            }
        }
    }

    override fun tokenId(token: String): Int? = vocab[token]

    override fun encodeIds(text: String): IntArray {
        val out = ArrayList<Int>()
        for ((segment, addedId) in splitAdded(text)) {
            if (addedId != null) {
                out += addedId
                continue
            }
            var s = segment
            for (n in normalizers) s = n(s)
            var pieces = listOf(s)
            for (p in preTokenizers) pieces = p(pieces)
            for (piece in pieces) {
                if (piece.isEmpty()) continue
                for (id in bpe(piece)) out += id
            }
        }
        return out.toIntArray()
    }

    /** Leftmost-longest split on added tokens: (text, null) segments and (token, id) hits. */
    private fun splitAdded(text: String): List<Pair<String, Int?>> {
        if (added.isEmpty()) return listOf(text to null)
        val out = ArrayList<Pair<String, Int?>>()
        var start = 0
        var i = 0
        while (i < text.length) {
            val hit = added.firstOrNull { text.startsWith(it.content, i) } // sorted longest first
            if (hit == null) {
                i++
                continue
            }
            if (i > start) out += text.substring(start, i) to null
            out += hit.content to hit.id
            i += hit.content.length
            start = i
        }
        if (start < text.length) out += text.substring(start) to null
        return out
    }

    private fun bpe(piece: String): IntArray {
        cache[piece]?.let { return it }
        val result = bpeUncached(piece)
        if (cache.size < 50_000) cache[piece] = result
        return result
    }

    private fun bpeUncached(piece: String): IntArray {
        if (ignoreMerges) vocab[piece]?.let { return intArrayOf(it) }
        val syms = ArrayList<Int>()
        var lastWasUnk = false
        var i = 0
        while (i < piece.length) {
            val cp = piece.codePointAt(i)
            val ch = String(Character.toChars(cp))
            i += ch.length
            val id = vocab[ch]
            if (id != null) {
                syms += id
                lastWasUnk = false
            } else if (byteFallback) {
                for (b in ch.toByteArray(Charsets.UTF_8)) {
                    syms += vocab["<0x%02X>".format(b.toInt() and 0xFF)] ?: unkId ?: continue
                }
                lastWasUnk = false
            } else if (unkId != null) {
                if (!(fuseUnk && lastWasUnk)) syms += unkId
                lastWasUnk = true
            }
        }
        // Repeatedly merge the adjacent pair with the lowest rank (leftmost on ties), as tokenizers does.
        while (syms.size > 1) {
            var bestRank = Long.MAX_VALUE
            var bestPos = -1
            var bestNew = 0
            for (p in 0 until syms.size - 1) {
                val key = (syms[p].toLong() shl 32) or (syms[p + 1].toLong() and 0xFFFFFFFFL)
                val m = merges[key] ?: continue
                val rank = m ushr 32
                if (rank < bestRank) {
                    bestRank = rank
                    bestPos = p
                    bestNew = m.toInt()
                }
            }
            if (bestPos < 0) break
            syms[bestPos] = bestNew
            syms.removeAt(bestPos + 1)
        }
        return syms.toIntArray()
    }

    private fun parseNormalizer(n: Any?): List<(String) -> String> {
        if (n == null || n == JSONObject.NULL) return emptyList()
        val o = n as JSONObject
        return when (val type = o.getString("type")) {
            "NFC" -> {
                listOf { s -> Normalizer.normalize(s, Normalizer.Form.NFC) }
            }

            "NFD" -> {
                listOf { s -> Normalizer.normalize(s, Normalizer.Form.NFD) }
            }

            "NFKC" -> {
                listOf { s -> Normalizer.normalize(s, Normalizer.Form.NFKC) }
            }

            "NFKD" -> {
                listOf { s -> Normalizer.normalize(s, Normalizer.Form.NFKD) }
            }

            "Lowercase" -> {
                listOf { s -> s.lowercase() }
            }

            "Sequence" -> {
                val a = o.getJSONArray("normalizers")
                (0 until a.length()).flatMap { parseNormalizer(a.get(it)) }
            }

            else -> {
                throw ManifestException("normalizer $type is not supported")
            }
        }
    }

    private fun parsePreTokenizer(p: Any?): List<(List<String>) -> List<String>> {
        if (p == null || p == JSONObject.NULL) return emptyList()
        val o = p as JSONObject
        return when (val type = o.getString("type")) {
            "Sequence" -> {
                val a = o.getJSONArray("pretokenizers")
                (0 until a.length()).flatMap { parsePreTokenizer(a.get(it)) }
            }

            "ByteLevel" -> {
                val prefix = o.optBoolean("add_prefix_space", false)
                val regex = if (o.optBoolean("use_regex", true)) compile(ByteLevel.GPT2_PATTERN) else null
                listOf { pieces ->
                    pieces.flatMap { piece ->
                        val p0 = if (prefix && !piece.startsWith(" ")) " $piece" else piece
                        val parts = if (regex != null) split(p0, regex, "Isolated", false) else listOf(p0)
                        parts.map { ByteLevel.encode(it) }
                    }
                }
            }

            "Split" -> {
                val pat = o.getJSONObject("pattern")
                val regex =
                    if (pat.has(
                            "Regex",
                        )
                    ) {
                        compile(pat.getString("Regex"))
                    } else {
                        Pattern.compile(Pattern.quote(pat.getString("String")))
                    }
                val behavior = o.getString("behavior")
                if (behavior !in setOf("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")) {
                    throw ManifestException("Split behavior $behavior is not supported")
                }
                val invert = o.optBoolean("invert", false)
                listOf { pieces -> pieces.flatMap { split(it, regex, behavior, invert) } }
            }

            else -> {
                throw ManifestException("pre_tokenizer $type is not supported")
            }
        }
    }

    companion object {
        fun compile(regex: String): Pattern = Pattern.compile(regex, Pattern.UNICODE_CHARACTER_CLASS)

        fun parse(text: String): HfTokenizer = HfTokenizer(JSONObject(text))

        /** tokenizers' split with a SplitDelimiterBehavior; empty pieces are dropped. */
        fun split(
            s: String,
            regex: Pattern,
            behavior: String,
            invert: Boolean,
        ): List<String> {
            val spans = ArrayList<Triple<Int, Int, Boolean>>() // start, end, isDelimiter
            val m = regex.matcher(s)
            var last = 0
            while (m.find()) {
                if (m.end() == m.start()) continue
                if (m.start() > last) spans += Triple(last, m.start(), false)
                spans += Triple(m.start(), m.end(), true)
                last = m.end()
            }
            if (last < s.length) spans += Triple(last, s.length, false)
            val marked = if (invert) spans.map { Triple(it.first, it.second, !it.third) } else spans
            val out = ArrayList<String>()
            when (behavior) {
                "Isolated" -> {
                    marked.forEach { out += s.substring(it.first, it.second) }
                }

                "Removed" -> {
                    marked.filter { !it.third }.forEach { out += s.substring(it.first, it.second) }
                }

                "MergedWithPrevious" -> {
                    for (sp in marked) {
                        val t = s.substring(sp.first, sp.second)
                        if (sp.third && out.isNotEmpty()) out[out.size - 1] = out.last() + t else out += t
                    }
                }

                "MergedWithNext" -> {
                    var pending = ""
                    for (sp in marked) {
                        val t = s.substring(sp.first, sp.second)
                        if (sp.third) {
                            pending += t
                        } else {
                            out += pending + t
                            pending = ""
                        }
                    }
                    if (pending.isNotEmpty()) out += pending
                }

                "Contiguous" -> {
                    var prevDelim = false
                    for (sp in marked) {
                        val t = s.substring(sp.first, sp.second)
                        if (sp.third && prevDelim && out.isNotEmpty()) out[out.size - 1] = out.last() + t else out += t
                        prevDelim = sp.third
                    }
                }
            }
            return out.filter { it.isNotEmpty() }
        }
    }
}

/** The HART default byte-level tokenizer without a JSON file: id = UTF-8 byte value, pad = 256. */
class ByteTokenizer : TextTokenizer {
    override fun encodeIds(text: String): IntArray {
        val out = ArrayList<Int>()
        var start = 0
        while (true) {
            val at = text.indexOf(PAD_TOKEN, start)
            val seg = if (at < 0) text.substring(start) else text.substring(start, at)
            for (b in seg.toByteArray(Charsets.UTF_8)) out += b.toInt() and 0xFF
            if (at < 0) break
            out += PAD_ID
            start = at + PAD_TOKEN.length
        }
        return out.toIntArray()
    }

    override fun tokenId(token: String): Int? = if (token == PAD_TOKEN) PAD_ID else null

    companion object {
        const val PAD_TOKEN = "<|endoftext|>"
        const val PAD_ID = 256
    }
}

/** HART's fixed-length prompt contract: truncate to maxTokens, right-pad with the pad id, mask = ids != pad. */
class PromptEncoder(
    val tokenizer: TextTokenizer,
    val maxTokens: Int = 300,
    padToken: String = "<|endoftext|>",
) {
    val padId: Int = tokenizer.tokenId(padToken) ?: throw ManifestException("pad token '$padToken' is not in the tokenizer vocabulary")

    fun ids(text: String): IntArray {
        val ids = tokenizer.encodeIds(text)
        return if (ids.size > maxTokens) ids.copyOf(maxTokens) else ids
    }

    /** token_ids int64 [1, maxTokens] and context_mask float32 [1, maxTokens]. */
    fun encode(text: String): Pair<Tensor, Tensor> {
        val ids = ids(text)
        val row = LongArray(maxTokens) { if (it < ids.size) ids[it].toLong() else padId.toLong() }
        val mask = FloatArray(maxTokens) { if (row[it] != padId.toLong()) 1f else 0f }
        val shape = intArrayOf(1, maxTokens)
        return Tensor.ofLongs(shape, row) to Tensor.ofFloats(shape, mask)
    }
}
