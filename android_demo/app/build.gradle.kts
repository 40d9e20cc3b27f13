plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.compose")
}

android {
    namespace = "org.hartmobile.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.hartmobile.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildFeatures {
        compose = true
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }

    sourceSets["main"].assets.srcDir(layout.buildDirectory.dir("generated/goldenAssets"))

    packaging {
        jniLibs.useLegacyPackaging = false
    }
}

// The portable self-check ("Verify bundle") reads the same golden JSON the JVM tests assert.
val copyGolden by tasks.registering(Copy::class) {
    from(rootProject.file("../docs/app_golden.json"))
    into(layout.buildDirectory.dir("generated/goldenAssets"))
}
tasks.named("preBuild") { dependsOn(copyGolden) }

dependencies {
    implementation(project(":core"))
    // Must equal the pip pin executorch==X in ../../pyproject.toml: .pte compatibility follows the
    // runtime version (checked by app/src/jvmTest/kotlin/demo/app/VersionPinTest.kt).
    implementation("org.pytorch:executorch-android:1.5.1")

    implementation(platform("androidx.compose:compose-bom:2024.12.01"))
    implementation("androidx.activity:activity-compose:1.9.3")
    implementation("androidx.compose.material3:material3")
    implementation("androidx.compose.ui:ui")
    implementation("androidx.lifecycle:lifecycle-viewmodel-compose:2.8.7")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
}
