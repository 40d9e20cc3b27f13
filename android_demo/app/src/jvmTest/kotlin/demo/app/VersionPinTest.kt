package demo.app

import org.junit.jupiter.api.Test
import java.io.File
import kotlin.test.assertEquals
import kotlin.test.assertNotNull

/** The AAR must be the runtime the .pte files were exported with: executorch-android == pip executorch. */
class VersionPinTest {
    private val root: File by lazy {
        var d: File? = File(System.getProperty("repo.root") ?: System.getProperty("user.dir")).absoluteFile
        while (d != null && !File(d, "pyproject.toml").isFile) d = d.parentFile
        d!!
    }

    @Test
    fun executorchAndroidVersionEqualsThePipPin() {
        val gradle = File(root, "android_demo/app/build.gradle.kts").readText()
        val aar = Regex("""org\.pytorch:executorch-android:([0-9A-Za-z.+-]+)""").find(gradle)?.groupValues?.get(1)
        assertNotNull(aar, "app/build.gradle.kts has no org.pytorch:executorch-android dependency")
        val pip = Regex(""""executorch==([0-9A-Za-z.+-]+)"""").find(File(root, "pyproject.toml").readText())?.groupValues?.get(1)
        assertNotNull(pip, "pyproject.toml has no executorch== pin")
        assertEquals(pip, aar)
    }
}
