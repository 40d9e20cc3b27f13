package demo.app

import android.app.Application
import android.graphics.Bitmap
import android.os.Build
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import demo.core.AppGolden
import demo.core.Benchmark
import demo.core.Bundle
import demo.core.BundleGolden
import demo.core.CancelToken
import demo.core.CancelledException
import demo.core.CheckResult
import demo.core.CompareRunner
import demo.core.Pipeline
import demo.core.PipelineListener
import demo.core.Pixels
import demo.core.SelfCheck
import demo.core.Tensor
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import java.io.File

data class UiState(
    val prompt: String = "a lighthouse at dusk",
    val seed: String = "7",
    val cfg: String = "4.5",
    val running: Boolean = false,
    val status: String = "Ready",
    val preview: Bitmap? = null,
    val checks: List<CheckResult> = emptyList(),
)

/** Owns the bundle, the ExecuTorch runner and the pipeline; all model work runs off the main thread. */
class DemoViewModel(
    app: Application,
) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state

    /** adb push target: /sdcard/Android/data/org.hartmobile.demo/files/bundle */
    val bundleDir: File = File(app.getExternalFilesDir(null), "bundle")

    private var session: Pair<Bundle, Pipeline>? = null
    private var runner: ExecuTorchRunner? = null
    private var cancel: CancelToken? = null

    fun setPrompt(v: String) = _state.update { it.copy(prompt = v) }

    fun setSeed(v: String) = _state.update { it.copy(seed = v.filter { c -> c.isDigit() }) }

    fun setCfg(v: String) = _state.update { it.copy(cfg = v) }

    private fun status(s: String) = _state.update { it.copy(status = s) }

    private fun session(verifyFiles: Boolean = true): Pair<Bundle, Pipeline> {
        session?.let { return it }
        if (!File(bundleDir, Bundle.MANIFEST).isFile) throw IllegalStateException("no bundle at $bundleDir (see README: adb push)")
        status("Loading bundle…")
        val bundle = Bundle.open(bundleDir, verifyFiles)
        val r = ExecuTorchRunner(bundle)
        runner = r
        val s = bundle to Pipeline(bundle.manifest, r, bundle.promptEncoder())
        session = s
        return s
    }

    private fun launchWork(block: suspend () -> Unit) {
        if (_state.value.running) return
        _state.update { it.copy(running = true, checks = emptyList()) }
        viewModelScope.launch(Dispatchers.Default) {
            try {
                block()
            } catch (e: CancelledException) {
                status("Cancelled")
            } catch (e: Throwable) {
                status("Error: ${e.message ?: e::class.java.simpleName}")
            } finally {
                _state.update { it.copy(running = false) }
            }
        }
    }

    private fun bitmap(
        argb: IntArray,
        side: Int,
    ): Bitmap = Bitmap.createBitmap(argb, side, side, Bitmap.Config.ARGB_8888)

    fun generate() =
        launchWork {
            val st = _state.value
            val (bundle, pipeline) = session()
            val token = CancelToken().also { cancel = it }
            // the manifest's latent-to-RGB projection when it has one (model/preview.py), else hashed token colours
            val projection = bundle.manifest.preview
            val listener =
                object : PipelineListener {
                    override fun onMethodDone(
                        index: Int,
                        total: Int,
                        method: String,
                        ms: Double,
                        tokens: Tensor?,
                    ) {
                        status("Running $method (${index + 1}/$total)")
                        if (tokens != null && projection == null) {
                            _state.update { it.copy(preview = bitmap(Pixels.tokenPreview(tokens.longData(), 256), 256)) }
                        }
                    }

                    override fun onLatent(
                        index: Int,
                        method: String,
                        latent: Tensor,
                    ) {
                        if (projection != null) _state.update { it.copy(preview = bitmap(projection.toArgb(latent, 256), 256)) }
                    }
                }
            val gen = pipeline.generate(st.prompt, st.seed.toLongOrNull() ?: 0L, st.cfg.toFloatOrNull() ?: 4.5f, listener, token)
            val side = gen.image.shape.last()
            _state.update {
                it.copy(
                    preview = bitmap(Pixels.toArgb(gen.image), side),
                    status = "Done in %.0f ms".format(gen.timingsMs.values.sum()),
                )
            }
        }

    fun cancel() {
        cancel?.cancel()
    }

    /** Portable self-check (golden asset), bundle sha256 check, and a real run compared with the recording. */
    fun verify() =
        launchWork {
            val golden =
                AppGolden.parse(
                    getApplication<Application>()
                        .assets
                        .open("app_golden.json")
                        .bufferedReader()
                        .readText(),
                )
            val results = SelfCheck.all(golden).toMutableList()
            _state.update { it.copy(checks = results.toList()) }
            if (File(bundleDir, Bundle.MANIFEST).isFile) {
                val problems = Bundle.verify(bundleDir, Bundle.open(bundleDir, verifyFiles = false).manifest)
                results +=
                    CheckResult(
                        "bundle files",
                        problems.isEmpty(),
                        if (problems.isEmpty()) "sha256 and size of every file match" else problems.joinToString("; "),
                    )
                val (bundle, _) = session()
                bundle.manifest.goldenIndex?.let { index ->
                    val report = BundleGolden.load(bundle.dir, index).check(bundle.manifest, runner!!)
                    val detail =
                        "token agreement %.4f, min SQNR %.1f dB".format(report.tokenAgreement, report.minSqnrDb) +
                            if (report.passed) "" else "; " + report.failures.joinToString()
                    results += CheckResult("golden tensors (bundle)", report.passed, detail)
                }
                val sameContract =
                    bundle.manifest.methods.map { it.name } == golden.manifest.methods.map { it.name } &&
                        bundle.manifest.model == golden.manifest.model
                if (sameContract) {
                    val cmp = CompareRunner(runner!!, golden.run)
                    Pipeline(bundle.manifest, cmp, bundle.promptEncoder()).generate(golden.run.prompt, golden.run.seed, golden.run.cfg)
                    results += CheckResult("real run vs reference", cmp.tokensMatched == cmp.tokensTotal, cmp.summary())
                }
            } else {
                results += CheckResult("bundle files", false, "no bundle at $bundleDir")
            }
            _state.update { it.copy(checks = results.toList(), status = "${results.count { it.passed }}/${results.size} checks passed") }
        }

    fun benchmark(runs: Int = 3) =
        launchWork {
            val st = _state.value
            val (bundle, pipeline) = session()
            val token = CancelToken().also { cancel = it }
            status("Benchmark: $runs runs…")
            val json =
                Benchmark.run(
                    pipeline,
                    st.prompt,
                    st.seed.toLongOrNull() ?: 0L,
                    st.cfg.toFloatOrNull() ?: 4.5f,
                    runs = runs,
                    warmup = 1,
                    device = "${Build.MANUFACTURER} ${Build.MODEL}",
                    os = "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
                    bundleName = bundle.dir.name,
                    cancel = token,
                )
            val out = File(getApplication<Application>().getExternalFilesDir(null), "benchmark.json")
            out.writeText(json.toString(1))
            status("Benchmark written to $out")
        }

    override fun onCleared() {
        runner?.close()
        runner = null
        session = null
    }
}
