package demo.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.nio.file.Files
import java.security.MessageDigest

class ManifestException(
    message: String,
) : Exception(message)

/** Where the pipeline takes an input from (model/stages.py TensorSpec.source). */
enum class Source { ENV, TOKENIZER, USER, RNG, ZEROS }

enum class Dist { UNIFORM, NORMAL }

class RngSpec(
    val dist: Dist,
    val streams: List<Long>,
)

class TensorSpec(
    val name: String,
    val shape: IntArray,
    val dtype: DType,
    val source: Source,
    val rng: RngSpec?,
) {
    val numel: Int get() = shape.fold(1) { a, b -> a * b }

    fun shapeString(): String = shape.joinToString(", ", "[", "]")
}

class MethodSpec(
    val name: String,
    val component: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    /** Program / model file that holds this method, when the manifest names one. */
    val file: String?,
    /** Method name inside the program (export/ bundles: `entry`); defaults to [name]. */
    val entry: String = name,
)

class FileEntry(
    val path: String,
    val sha256: String,
    val size: Long,
)

class TokenizerInfo(
    val file: String?,
    val maxTokens: Int,
    val padToken: String,
)

/**
 * A bundle manifest: schema version, the method contract in call order, artifact files with their
 * sha256 and size, and the tokenizer. [parse] validates the wiring statically, so a bundle whose
 * methods could not run in order is rejected before any model is loaded.
 */
class Manifest(
    val schemaVersion: Int,
    val model: String,
    val backend: String,
    val methods: List<MethodSpec>,
    val files: List<FileEntry>,
    val tokenizer: TokenizerInfo,
    val defaultCfg: Float,
    val imageSize: Int?,
    val computeUnits: String?,
    val raw: JSONObject,
) {
    /** The per-scale preview projection (manifest `preview`, model/preview.py), null in older bundles. */
    val preview: PreviewProjection? = PreviewProjection.parse(raw.opt("preview"))

    /** golden/index.json path when the bundle carries eager reference tensors (export/bundle.py). */
    val goldenIndex: String? get() = raw.optJSONObject("golden")?.optString("index")?.ifEmpty { null }

    /** Parity limits for the golden check (manifest parity.thresholds.golden); fp32 defaults. */
    fun goldenLimits(): Map<String, Double> {
        val g = raw.optJSONObject("parity")?.optJSONObject("thresholds")?.optJSONObject("golden")
        val out = linkedMapOf("token_agreement" to 1.0, "sqnr_db" to 60.0)
        if (g != null) for (k in g.keys()) out[k] = g.getDouble(k)
        return out
    }

    fun method(name: String): MethodSpec = methods.firstOrNull { it.name == name } ?: throw ManifestException("no method '$name'")

    /** Program files named by the methods (or the bundle's single program), in first-use order. */
    fun programFiles(): List<String> {
        val named = methods.mapNotNull { it.file }.distinct()
        if (named.isNotEmpty()) return named
        val programs = files.map { it.path }.filter { it.endsWith(".pte") || it.endsWith(".mlpackage") || it.endsWith(".mlmodelc") }
        return programs.distinct()
    }

    companion object {
        const val FORMAT = "hart-mobile-bundle"

        /** Compared with a bundle's min_runtime_version (export/bundle.py MIN_RUNTIME_VERSION). */
        const val RUNTIME_VERSION = 1
        val SUPPORTED_SCHEMA_VERSIONS = setOf(1)
        val TOKENIZER_INPUTS = setOf("token_ids", "context_mask")
        val USER_INPUTS = setOf("cfg")

        fun parse(text: String): Manifest = parse(JSONObject(text))

        fun parse(o: JSONObject): Manifest {
            // schema_version (this app's layout) or format "hart-mobile-bundle" + version (export/ bundles)
            val version =
                when {
                    o.has("schema_version") -> o.getInt("schema_version")
                    o.optString("format") == FORMAT && o.has("version") -> o.getInt("version")
                    else -> throw ManifestException("manifest has no schema_version (nor format '$FORMAT' with a version)")
                }
            if (version !in SUPPORTED_SCHEMA_VERSIONS) {
                throw ManifestException(
                    "manifest schema_version $version is not supported by this app (supported: $SUPPORTED_SCHEMA_VERSIONS); " +
                        "update the app or re-export the bundle",
                )
            }
            val minRuntime = o.optInt("min_runtime_version", 1)
            if (minRuntime > RUNTIME_VERSION) {
                throw ManifestException("bundle needs app runtime version >= $minRuntime, this app is $RUNTIME_VERSION; update the app")
            }
            val methodsJson = o.optJSONArray("methods") ?: throw ManifestException("manifest has no methods list")
            val methods = (0 until methodsJson.length()).map { parseMethod(methodsJson.getJSONObject(it)) }
            val tok = parseTokenizer(o.opt("tokenizer"))
            val files = parseFiles(o.opt("files"))
            o.optJSONArray("call_order")?.let { order ->
                val names = (0 until order.length()).map { order.getString(it) }
                if (names !=
                    methods.map { it.name }
                ) {
                    throw ManifestException("methods ${methods.map { it.name }} do not follow call_order $names")
                }
            }
            val m =
                Manifest(
                    schemaVersion = version,
                    model = modelName(o),
                    backend = backendName(o),
                    methods = methods,
                    files = files,
                    tokenizer = tok,
                    defaultCfg =
                        (modelField(o, "default_cfg") ?: o.optJSONObject("sampler")?.opt("cfg_default"))?.toString()?.toFloat() ?: 4.5f,
                    imageSize = modelField(o, "image_size")?.toString()?.toInt(),
                    computeUnits = computeUnits(o),
                    raw = o,
                )
            validate(m)
            return m
        }

        /** `model` is a name, or an object with name / image_size / default_cfg (export/ bundles). */
        private fun modelName(o: JSONObject): String =
            when (val m = o.opt("model")) {
                is String -> m
                is JSONObject -> m.optString("name", "unknown")
                else -> "unknown"
            }

        private fun modelField(
            o: JSONObject,
            key: String,
        ): Any? {
            if (o.has(key)) return o.get(key)
            val m = o.opt("model")
            return if (m is JSONObject && m.has(key)) m.get(key) else null
        }

        private fun backendName(o: JSONObject): String {
            val b = o.opt("backend")
            return when (b) {
                is String -> b
                is JSONObject -> b.optString("name", "unknown")
                else -> "unknown"
            }
        }

        private fun computeUnits(o: JSONObject): String? {
            if (o.has("compute_units")) return o.getString("compute_units")
            val b = o.opt("backend")
            return if (b is JSONObject && b.has("compute_units")) b.getString("compute_units") else null
        }

        private fun parseTokenizer(t: Any?): TokenizerInfo =
            when (t) {
                null, JSONObject.NULL -> {
                    TokenizerInfo(null, 300, "<|endoftext|>")
                }

                is String -> {
                    TokenizerInfo(t, 300, "<|endoftext|>")
                }

                is JSONObject -> {
                    TokenizerInfo(
                        file = if (t.has("file")) t.getString("file") else t.optString("path").ifEmpty { null },
                        maxTokens = t.optInt("max_tokens", 300),
                        padToken = t.optString("pad_token", "<|endoftext|>"),
                    )
                }

                else -> {
                    throw ManifestException("tokenizer must be an object or a file name")
                }
            }

        private fun parseFiles(f: Any?): List<FileEntry> {
            val out = mutableListOf<FileEntry>()
            when (f) {
                null, JSONObject.NULL -> {}

                is JSONArray -> {
                    for (i in 0 until f.length()) {
                        val e = f.getJSONObject(i)
                        out += FileEntry(e.getString("path"), e.getString("sha256"), fileSize(e.getString("path"), e))
                    }
                }

                is JSONObject -> {
                    for (k in f.keys()) {
                        val e = f.getJSONObject(k)
                        out += FileEntry(k, e.getString("sha256"), fileSize(k, e))
                    }
                }

                else -> {
                    throw ManifestException("files must be a list or an object")
                }
            }
            return out
        }

        private fun fileSize(
            path: String,
            e: JSONObject,
        ): Long =
            when {
                e.has("size") -> e.getLong("size")
                e.has("bytes") -> e.getLong("bytes")
                else -> throw ManifestException("file $path has no size")
            }

        private fun parseMethod(o: JSONObject): MethodSpec {
            val name = o.getString("name")

            fun specs(key: String): List<TensorSpec> {
                val a = o.optJSONArray(key) ?: throw ManifestException("method $name has no '$key' list")
                return (0 until a.length()).map { parseTensor(name, a.getJSONObject(it)) }
            }
            val file =
                if (o.has("file")) {
                    o.getString("file")
                } else if (o.has("program")) {
                    o.getString("program")
                } else {
                    null
                }
            val entry = if (o.has("entry")) o.getString("entry") else name
            return MethodSpec(name, o.optString("component", ""), specs("inputs"), specs("outputs"), file, entry)
        }

        private fun parseTensor(
            method: String,
            o: JSONObject,
        ): TensorSpec {
            val name = o.getString("name")
            val shapeJson = o.getJSONArray("shape")
            val shape = IntArray(shapeJson.length()) { shapeJson.getInt(it) }
            if (shape.any { it <= 0 }) throw ManifestException("$method.$name: shape ${shape.contentToString()} has a non-positive dim")
            val source =
                when (val s = o.optString("source", "env")) {
                    "env" -> Source.ENV
                    "tokenizer" -> Source.TOKENIZER
                    "user" -> Source.USER
                    "rng" -> Source.RNG
                    "zeros" -> Source.ZEROS
                    else -> throw ManifestException("$method.$name: unknown source '$s'")
                }
            var rng: RngSpec? = null
            if (source == Source.RNG) {
                val r = o.optJSONObject("rng") ?: throw ManifestException("$method.$name: source rng without an rng object")
                val dist =
                    when (val d = r.getString("dist")) {
                        "uniform" -> Dist.UNIFORM
                        "normal" -> Dist.NORMAL
                        else -> throw ManifestException("$method.$name: unknown rng dist '$d'")
                    }
                val sj = r.getJSONArray("streams")
                rng = RngSpec(dist, (0 until sj.length()).map { sj.getLong(it) })
            }
            return TensorSpec(name, shape, DType.parse(o.getString("dtype")), source, rng)
        }

        private val HEX64 = Regex("^[0-9a-f]{64}$")

        private fun validate(m: Manifest) {
            if (m.methods.isEmpty()) throw ManifestException("manifest lists no methods")
            val names = m.methods.map { it.name }
            val dup = names.groupBy { it }.filter { it.value.size > 1 }.keys
            if (dup.isNotEmpty()) throw ManifestException("duplicate method names: $dup")
            val produced = HashMap<String, TensorSpec>()
            for (meth in m.methods) {
                for (s in meth.inputs) {
                    when (s.source) {
                        Source.ENV -> {
                            val p =
                                produced[s.name]
                                    ?: throw ManifestException("${meth.name}: input '${s.name}' is not produced by any earlier method")
                            if (!p.shape.contentEquals(s.shape) || p.dtype != s.dtype) {
                                throw ManifestException(
                                    "${meth.name}: input '${s.name}' ${s.shapeString()} ${s.dtype.jsonName} does not match " +
                                        "the earlier output ${p.shapeString()} ${p.dtype.jsonName}",
                                )
                            }
                        }

                        Source.TOKENIZER -> {
                            if (s.name !in TOKENIZER_INPUTS) throw ManifestException("${meth.name}: unknown tokenizer input '${s.name}'")
                        }

                        Source.USER -> {
                            if (s.name !in USER_INPUTS) throw ManifestException("${meth.name}: unknown user input '${s.name}'")
                        }

                        Source.ZEROS -> {}

                        Source.RNG -> {
                            val r = s.rng!!
                            if (r.streams.size != s.shape[0]) {
                                throw ManifestException(
                                    "${meth.name}.${s.name}: ${r.streams.size} rng streams for leading dim ${s.shape[0]}",
                                )
                            }
                            if (r.streams.any { it < 0 }) throw ManifestException("${meth.name}.${s.name}: negative rng stream")
                            if (!s.dtype.isFloat) throw ManifestException("${meth.name}.${s.name}: rng input must be a float dtype")
                        }
                    }
                }
                for (s in meth.outputs) produced[s.name] = s
            }
            if ("image" !in produced) throw ManifestException("no method outputs 'image'")
            for (f in m.files) {
                if (!HEX64.matches(f.sha256)) throw ManifestException("file ${f.path}: sha256 must be 64 lowercase hex digits")
                if (f.size < 0) throw ManifestException("file ${f.path}: negative size")
                if (f.path.startsWith("/") || f.path.split('/').any { it == ".." }) {
                    throw ManifestException("file ${f.path}: path must stay inside the bundle")
                }
            }
        }
    }
}

object Sha256 {
    fun hex(bytes: ByteArray): String = MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

    fun file(f: File): String {
        val md = MessageDigest.getInstance("SHA-256")
        f.inputStream().use { inp ->
            val buf = ByteArray(1 shl 20)
            while (true) {
                val n = inp.read(buf)
                if (n < 0) break
                md.update(buf, 0, n)
            }
        }
        return md.digest().joinToString("") { "%02x".format(it) }
    }
}

/** A bundle folder: manifest.json plus the files it lists, each checked for size and sha256. */
class Bundle(
    val dir: File,
    val manifest: Manifest,
) {
    fun file(path: String): File = File(dir, path)

    /** The bundle's tokenizer.json; the built-in byte tokenizer only for the default model without one. */
    fun promptEncoder(): PromptEncoder {
        val t = manifest.tokenizer
        val f = t.file?.let { file(it) }
        val tok: TextTokenizer =
            when {
                f != null && f.isFile -> HfTokenizer.parse(f.readText())
                manifest.model == "default" -> ByteTokenizer()
                else -> throw ManifestException("bundle has no tokenizer file (${t.file ?: "none named"})")
            }
        return PromptEncoder(tok, t.maxTokens, t.padToken)
    }

    companion object {
        const val MANIFEST = "manifest.json"

        /** `sha256sum manifest.json`: the bundle digest the exporter writes last (docs/bundle-format.md). */
        const val DIGEST = "manifest.sha256"
        private val DIGEST_LINE = Regex("([0-9a-f]{64})  manifest\\.json\n")

        /**
         * Checks the manifest digest, then parses and validates the manifest; with [verifyFiles], checks
         * every listed file's size and sha256. The digest covers manifest.json's exact bytes, and the
         * manifest lists every other file's sha256, so together they cover the whole bundle.
         */
        fun open(
            dir: File,
            verifyFiles: Boolean = true,
        ): Bundle {
            val manifest = Manifest.parse(String(readManifest(dir), Charsets.UTF_8))
            if (verifyFiles) {
                val problems = verify(dir, manifest)
                if (problems.isNotEmpty()) throw ManifestException("bundle $dir failed verification:\n" + problems.joinToString("\n"))
            }
            return Bundle(dir, manifest)
        }

        /** manifest.json's bytes, checked against manifest.sha256 (one read: the bytes hashed are the bytes parsed). */
        fun readManifest(dir: File): ByteArray {
            val mf = File(dir, MANIFEST)
            val df = File(dir, DIGEST)
            for (f in listOf(mf, df)) if (Files.isSymbolicLink(f.toPath())) throw ManifestException(symlinkMessage(f.path))
            if (!mf.isFile) throw ManifestException("$dir has no $MANIFEST")
            if (!df.isFile) throw ManifestException("$dir has no $DIGEST (the bundle digest); re-export the bundle")
            val bytes = mf.readBytes()
            checkDigest(bytes, df.readBytes())
            return bytes
        }

        /** Throws unless [digestFile] is exactly `<sha256 of manifest, lowercase hex>  manifest.json\n`. */
        fun checkDigest(
            manifest: ByteArray,
            digestFile: ByteArray,
        ) {
            val line =
                DIGEST_LINE.matchEntire(String(digestFile, Charsets.ISO_8859_1))
                    ?: throw ManifestException("$DIGEST is not one line '<64 hex digits>  manifest.json'; re-export the bundle")
            if (line.groupValues[1] != Sha256.hex(manifest)) {
                throw ManifestException("$MANIFEST was edited after export (digest mismatch with $DIGEST); re-export the bundle")
            }
        }

        private fun symlinkMessage(path: String) =
            "$path is a symlink; bundle files must be regular files inside the bundle (copy the bundle, do not link it)"

        /** The first symlink among [path] and its parent folders inside [dir], or null. */
        private fun symlinkOnPath(
            dir: File,
            path: String,
        ): String? {
            var p = ""
            for (part in path.split('/')) {
                p = if (p.isEmpty()) part else "$p/$part"
                if (Files.isSymbolicLink(File(dir, p).toPath())) return p
            }
            return null
        }

        /** Every problem found (missing file, size or sha256 mismatch, unlisted program); empty when the bundle is intact. */
        fun verify(
            dir: File,
            manifest: Manifest,
        ): List<String> {
            val problems = mutableListOf<String>()
            val listed = manifest.files.map { it.path }.toSet()
            for (f in manifest.files) {
                val file = File(dir, f.path)
                val link = symlinkOnPath(dir, f.path)
                if (link != null) {
                    problems += symlinkMessage(link)
                    continue
                }
                if (!file.isFile) {
                    problems += "${f.path}: missing"
                    continue
                }
                if (file.length() != f.size) {
                    problems += "${f.path}: size ${file.length()} != ${f.size} in the manifest"
                    continue
                }
                val got = Sha256.file(file)
                if (got != f.sha256) problems += "${f.path}: sha256 $got != ${f.sha256} in the manifest"
            }
            // A Core ML .mlpackage is a folder: its files are listed one by one under it.
            for (p in manifest.methods.mapNotNull { it.file }.distinct()) {
                if (p !in listed &&
                    listed.none { it.startsWith("$p/") }
                ) {
                    problems += "$p: used by a method but not listed in files (no sha256)"
                }
            }
            val tf = manifest.tokenizer.file
            if (tf != null && tf !in listed) problems += "$tf: tokenizer not listed in files (no sha256)"
            return problems
        }
    }
}
