// Pure Kotlin/JVM: no android.* imports. org.json is provided by Android at run time; the JVM tests
// use the same AOSP implementation (android-json on Maven Central, libandroid-json-java in CI).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation(kotlin("test"))
    testImplementation("org.junit.jupiter:junit-jupiter:5.9.2")
}

tasks.test {
    useJUnitPlatform()
    systemProperty("repo.root", rootDir.parentFile.absolutePath)
}
