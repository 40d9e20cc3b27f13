package demo.core

import java.io.File
import kotlin.system.exitProcess

/**
 * Desktop check of a bundle folder before it goes on a phone, with the app's own code:
 * manifest validation, size + sha256 of every file, the tokenizer, and (when the bundle has golden/)
 * a replay of the golden run through [Pipeline]: the app loop must reproduce every golden input
 * (token ids, mask, cfg, every rng draw, the env wiring) from the prompt and seed alone.
 *
 *     java -cp <core classes>:<org.json>:<kotlin-stdlib> demo.core.BundleCheckKt BUNDLE_DIR
 */
fun main(args: Array<String>) {
    if (args.size != 1) {
        System.err.println("usage: BundleCheck BUNDLE_DIR")
        exitProcess(2)
    }
    val results = BundleCheck.run(File(args[0]))
    results.forEach { println(it) }
    exitProcess(if (results.all { it.passed }) 0 else 1)
}

object BundleCheck {
    fun run(dir: File): List<CheckResult> {
        val out = mutableListOf<CheckResult>()
        val bundle =
            try {
                Bundle.open(dir).also {
                    out +=
                        CheckResult(
                            "manifest + files",
                            true,
                            "${it.manifest.methods.size} methods, ${it.manifest.files.size} files verified",
                        )
                }
            } catch (e: Exception) {
                out += CheckResult("manifest + files", false, e.message ?: e.toString())
                return out
            }
        val encoder =
            try {
                bundle.promptEncoder().also { out += CheckResult("tokenizer", true, "pad id ${it.padId}, max ${it.maxTokens}") }
            } catch (e: Exception) {
                out += CheckResult("tokenizer", false, e.message ?: e.toString())
                return out
            }
        val index = bundle.manifest.goldenIndex ?: return out
        try {
            val golden = BundleGolden.load(dir, index)
            val runner = ReplayRunner(golden.recording(bundle.manifest))
            Pipeline(bundle.manifest, runner, encoder).generate(golden.prompt, golden.seed, golden.cfg)
            out += CheckResult("golden replay", runner.finished, "${runner.calls.size} methods: the app loop reproduces every golden input")
        } catch (e: Exception) {
            out += CheckResult("golden replay", false, e.message ?: e.toString())
        }
        return out
    }
}
