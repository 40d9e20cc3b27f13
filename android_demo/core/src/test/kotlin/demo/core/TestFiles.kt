package demo.core

import java.io.File

/** Repository files the tests read (docs/ golden vectors, pyproject.toml). */
object TestFiles {
    val root: File by lazy {
        System.getProperty("repo.root")?.let { return@lazy File(it) }
        var d: File? = File(System.getProperty("user.dir")).absoluteFile
        while (d != null && !File(d, "pyproject.toml").isFile) d = d.parentFile
        d ?: error("repository root (pyproject.toml) not found above ${System.getProperty("user.dir")}; pass -Drepo.root=")
    }

    fun text(path: String): String = File(root, path).readText()

    val golden: AppGolden by lazy { AppGolden.parse(text("docs/app_golden.json")) }

    /** manifest.json plus its digest (manifest.sha256), for tests whose subject is not the digest itself. */
    fun writeManifest(
        dir: File,
        text: String,
    ) {
        val bytes = text.toByteArray()
        File(dir, Bundle.MANIFEST).writeBytes(bytes)
        File(dir, Bundle.DIGEST).writeText("${Sha256.hex(bytes)}  manifest.json\n")
    }
}
