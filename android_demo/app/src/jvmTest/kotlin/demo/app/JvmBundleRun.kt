package demo.app

import demo.core.Bundle
import demo.core.BundleGolden
import demo.core.CompareRunner
import demo.core.Pipeline
import java.io.File
import kotlin.system.exitProcess

/**
 * `tools/jvm_bundle_run.sh BUNDLE_DIR`: a real ExecuTorch bundle through the app's unchanged
 * [ExecuTorchRunner] and [Pipeline] on a desktop JVM (JNI stand-in of Module over the ExecuTorch
 * C++ runtime). 1) the golden check (every method on its golden inputs, as Verify bundle does);
 * 2) a free-running generation from the golden prompt/seed, compared with the golden run.
 */
fun main(args: Array<String>) {
    val dir = File(args.single())
    val t0 = System.nanoTime()
    val bundle = Bundle.open(dir)
    val index = bundle.manifest.goldenIndex ?: error("bundle has no golden/")
    val golden = BundleGolden.load(dir, index)
    var ok: Boolean
    ExecuTorchRunner(bundle).use { runner ->
        println("loaded + verified ${bundle.manifest.files.size} files in %.0f ms".format((System.nanoTime() - t0) / 1e6))
        val rep = golden.check(bundle.manifest, runner)
        println(
            "golden check: token agreement %.4f, min SQNR %.1f dB -> %s"
                .format(rep.tokenAgreement, rep.minSqnrDb, if (rep.passed) "PASS" else "FAIL ${rep.failures}"),
        )
        rep.rows.forEach { println("  $it") }
        val cmp = CompareRunner(runner, golden.recording(bundle.manifest))
        val gen = Pipeline(bundle.manifest, cmp, bundle.promptEncoder()).generate(golden.prompt, golden.seed, golden.cfg)
        val ref =
            golden.outputs.getValue(
                bundle.manifest.methods
                    .last()
                    .name,
            )[0]
        val sqnr = BundleGolden.sqnr(ref, gen.image)
        println("end to end: ${cmp.summary()}; image SQNR %.1f dB".format(sqnr))
        println("timings ms: " + gen.timingsMs.entries.joinToString { "%s %.1f".format(it.key, it.value) })
        ok = rep.passed && cmp.tokensMatched == cmp.tokensTotal
    }
    exitProcess(if (ok) 0 else 1)
}
