// The Android Studio build of edgeops' Android client. Here (no Android SDK) Maven builds and tests the JVM modules
// and type-checks the app instead: `make android-test`, see README.md.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "edgeops-android"
include(":app", ":ota-client", ":device-core")
