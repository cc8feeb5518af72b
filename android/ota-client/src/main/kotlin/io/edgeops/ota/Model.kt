package io.edgeops.ota

import java.io.File

/** Where a device polls, what it follows, and where it keeps its state. */
data class OtaConfig(
    /** e.g. http://127.0.0.1:8333/ota/<model>/ : TUF metadata under <url>metadata/, targets at <url><target path> */
    val repositoryUrl: String,
    val modelName: String,
    val channel: String = "stable",
    val track: String = "mat",
    /** The publisher's root.json the device was provisioned with. */
    val trustedRoot: File,
    val stateDir: File,
    val socketTimeoutMs: Int = 10_000,
    val pollDeadlineMs: Long = 120_000,
    /** Places the device in staged rollouts ([cohortPosition]); null: an id made once for the state directory. */
    val deviceId: String? = null,
)

/** The smoke test a downloaded, verified model must pass before it is installed; throws to refuse it. */
fun interface ModelCheck {
    fun check(model: File, release: Release)
}

enum class Outcome { INSTALLED, UNCHANGED, REFUSED }

data class PollResult(
    val outcome: Outcome,
    /** The installed current model after the poll. */
    val installed: InstalledModel?,
    /** One of the shared refusal reasons when [outcome] is REFUSED, else null. */
    val reason: String?,
    val message: String,
    val requests: Int,
    val metadataBytes: Long,
    val targetBytes: Long,
    val seconds: Double,
)

data class InstalledModel(
    val version: Int,
    val channel: String,
    val sha256: String,
    val size: Long,
    val releaseTarget: String,
    val labels: List<String>,
    val inputShape: List<Int>,
    val outputShape: List<Int>,
    val installedAt: String,
)

data class Installed(
    val current: InstalledModel? = null,
    /** The last-known-good model. */
    val previous: InstalledModel? = null,
    /** Release targets that failed their smoke test: never fetched again. */
    val rejected: List<String> = emptyList(),
)

/** A release descriptor (releases/<channel>/<version>-<sha12>.json) as the device uses it. */
data class Release(
    val modelName: String,
    val channel: String,
    val version: Int,
    val modelTarget: String,
    val sha256: String,
    val size: Long,
    val dataset: String,
    val labels: List<String>,
    val inputShape: List<Int>,
    val outputShape: List<Int>,
    /** Flattened tensors: the smoke test's input and the output the model gave on it when released. */
    val referenceInput: FloatArray,
    val referenceOutput: FloatArray,
    /** The share of the channel's devices the release is for (a staged rollout), signed like the rest. */
    val rolloutPercent: Int = 100,
)

data class Failure(val at: String, val type: String, val message: String)

data class PollStats(val outcome: String, val seconds: Double, val requests: Int, val metadataBytes: Long, val targetBytes: Long)

/** What status.json holds: Python's `Status` (src/edgeops/device/state.py), with camelCase names here. */
data class Status(
    val modelName: String,
    val track: String,
    val channel: String,
    val repository: String,
    val installed: InstalledModel? = null,
    /** "current", "previous" (the last-known-good runs because the current one is damaged) or null. */
    val running: String? = null,
    val lastCheck: String? = null,
    val lastSuccess: String? = null,
    /** The last poll's error; null once a poll succeeds. */
    val lastError: String? = null,
    /** The newest failed poll, kept after later successes. */
    val lastFailure: Failure? = null,
    val failuresInARow: Int = 0,
    val lastPoll: PollStats? = null,
)

/** The state directory belongs to another repository (model name or track) than this client follows. */
class StateDirError(message: String) : IllegalStateException(message)
