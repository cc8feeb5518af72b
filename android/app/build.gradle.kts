// The Android app: reads the mat over BLE, classifies with the installed ExecuTorch model, and keeps that model up to
// date with the TUF OTA client. Not built here (no Android SDK): android/app-typecheck compiles these sources with
// Maven against the Android framework classes instead; see ../README.md.
plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "io.edgeops.app"
    compileSdk = 35

    defaultConfig {
        applicationId = "io.edgeops.app"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        // ExecuTorch ships its native runtime for these two ABIs only.
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    sourceSets["main"].java.srcDirs("src/main/kotlin")

    // .pte models are memory-mapped by ExecuTorch; never let aapt compress one that ships as an asset.
    androidResources {
        noCompress += "pte"
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(project(":ota-client"))
    implementation(project(":device-core"))
    implementation(libs.executorch.android)
}
