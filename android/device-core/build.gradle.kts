// Platform-free logic of the app (frames, windows, labels, update policy). Maven builds and tests it here:
// device-core/pom.xml; keep the two in step.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(libs.kotlin.test.junit5)
    testImplementation(libs.kotlinx.serialization.json)
}

tasks.test {
    useJUnitPlatform()
}
