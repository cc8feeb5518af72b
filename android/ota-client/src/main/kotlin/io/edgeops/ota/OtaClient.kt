package io.edgeops.ota

import io.edgeops.ota.tuf.ExpiredError
import io.edgeops.ota.tuf.Fetcher
import io.edgeops.ota.tuf.TARGETS
import io.edgeops.ota.tuf.TargetFile
import io.edgeops.ota.tuf.TufError
import io.edgeops.ota.tuf.Updater
import io.edgeops.ota.tuf.UpdaterConfig
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.float
import kotlinx.serialization.json.int
import kotlinx.serialization.json.intOrNull
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import java.io.File
import java.nio.file.Files
import java.nio.file.StandardCopyOption

/** A poll refused for one of the shared reasons, with a message that names the problem. */
class OtaRefusal(val reason: String, message: String) : Exception(message)

/**
 * One device following one model's channel: the Kotlin twin of the Python agent (src/edgeops/device/agent.py).
 * A poll verifies the repository with TUF, picks the channel's newest release, downloads and verifies its model,
 * smoke-tests it and only then swaps it in; a refused poll changes nothing that runs.
 */
class OtaClient(private val config: OtaConfig, private val modelCheck: ModelCheck = ModelCheck { _, _ -> }) {
    private val repositoryUrl = config.repositoryUrl.trimEnd('/') + "/"
    private val state = StateDir(config.stateDir, config.modelName, config.track)

    fun installed(): Installed = state.installed()

    fun status(): Status = state.status {
        Status(modelName = config.modelName, track = config.track, channel = config.channel, repository = repositoryUrl)
    }

    fun modelFile(model: InstalledModel): File = state.modelFile(model.sha256)

    /** One poll. Never throws for a refusal: the result says REFUSED, why and what. */
    @Synchronized
    fun poll(): PollResult {
        val started = System.nanoTime()
        val fetcher = Fetcher(config.socketTimeoutMs, started + config.pollDeadlineMs * 1_000_000)
        fun seconds() = Math.round((System.nanoTime() - started) / 1e5) / 1e4
        fun stats(outcome: String) = PollStats(outcome, seconds(), fetcher.requests, fetcher.metadataBytes, fetcher.targetBytes)
        return try {
            val (outcome, message) = pollOnce(fetcher)
            val checked = StateDir.now()
            val stats = stats(message)
            updateStatus { it.copy(lastCheck = checked, lastSuccess = checked, lastError = null, failuresInARow = 0, lastPoll = stats) }
            result(outcome, null, message, stats)
        } catch (error: Exception) {
            val (reason, message) = describe(error)
            val at = StateDir.now()
            val stats = stats("error")
            val type = error.javaClass.simpleName
            runCatching {
                updateStatus {
                    it.copy(
                        lastCheck = at, lastError = message, lastFailure = Failure(at, type, message),
                        failuresInARow = it.failuresInARow + 1, lastPoll = stats,
                    )
                }
            }
            result(Outcome.REFUSED, reason, message, stats)
        }
    }

    private fun result(outcome: Outcome, reason: String?, message: String, stats: PollStats) = PollResult(
        outcome, runCatching { state.installed().current }.getOrNull(), reason, message,
        stats.requests, stats.metadataBytes, stats.targetBytes, stats.seconds,
    )

    private fun updateStatus(change: (Status) -> Status) {
        val installed = runCatching { state.installed() }.getOrNull()
        val running = installed?.let(state::running)
        state.saveStatus(change(status()).copy(installed = running?.first, running = running?.second))
    }

    private fun pollOnce(fetcher: Fetcher): Pair<Outcome, String> {
        val updater = updater(fetcher)
        updater.refresh()
        val newest = newestRelease(updater)
        if (newest.dataset != null && newest.dataset != config.track) { // refused before any download
            throw OtaRefusal("wrong-track", wrongTrack(newest.version, "is signed for the ${newest.dataset} track"))
        }
        val installed = state.installed()
        val current = installed.current
        if (current != null && newest.version < current.version) {
            throw OtaRefusal(
                "rollback",
                "the repository's newest ${config.channel} release is version ${newest.version}, but version " +
                    "${current.version} is installed: refusing to go back (rollback attack or a reset repository)",
            )
        }
        if (current != null && current.releaseTarget == newest.target.path && state.isIntact(current)) {
            return Outcome.UNCHANGED to "up to date at v${newest.version}"
        }
        if (newest.target.path in installed.rejected) {
            return Outcome.UNCHANGED to "v${newest.version} was rejected earlier; staying on v${current?.version ?: "-"}"
        }
        val release = fetchRelease(updater, newest)
        if (release.dataset != config.track) { // refused before the model is downloaded
            throw OtaRefusal("wrong-track", wrongTrack(newest.version, "track ${release.dataset} (this device: ${config.track})"))
        }
        val candidate = fetchModel(updater, release)
        try {
            modelCheck.check(candidate, release)
        } catch (error: Exception) {
            if (candidate.parentFile == state.downloadsDir) candidate.delete()
            state.saveInstalled(installed.copy(rejected = installed.rejected + newest.target.path))
            throw OtaRefusal(
                "smoke-test",
                "release v${release.version} (${release.sha256.take(12)}) failed its smoke test and was not installed: " +
                    (error.message ?: error.javaClass.simpleName),
            )
        }
        install(installed, candidate, release, newest.target.path)
        return Outcome.INSTALLED to "installed v${release.version}"
    }

    private fun updater(fetcher: Fetcher): Updater {
        state.metadataDir.listFiles { file -> file.name.startsWith(".") && file.name.endsWith(".tmp") }?.forEach { it.delete() }
        val bootstrap = if (File(state.metadataDir, "root.json").isFile) {
            null // the newest root this device verified
        } else if (config.trustedRoot.isFile) {
            config.trustedRoot.readBytes()
        } else {
            throw OtaRefusal(
                "other",
                "no trusted root: provision the device with the publisher's root.json; looked for ${config.trustedRoot}",
            )
        }
        return Updater(
            state.metadataDir, repositoryUrl + "metadata/", repositoryUrl, fetcher,
            UpdaterConfig(prefixTargetsWithHash = false), // our target names are content-addressed already
            bootstrap,
        )
    }

    private class Newest(val version: Int, val target: TargetFile, val dataset: String?, val rollout: Int)

    /** Where this device sits in staged rollouts. */
    private val cohort: Double by lazy { cohortPosition(config.deviceId ?: state.identity(), config.modelName) }

    /** Highest version in our channel that is for this device, from the targets metadata refresh() just verified. */
    private fun newestRelease(updater: Updater): Newest {
        val targets = updater.trustedTargets()!!.signed.targets
        val releases = targets.values.mapNotNull { target ->
            val custom = target.custom ?: return@mapNotNull null
            if (!target.path.startsWith("releases/") || (custom["channel"] as? JsonPrimitive)?.content != config.channel) {
                return@mapNotNull null
            }
            val version = (custom["version"] as? JsonPrimitive)?.intOrNull
                ?: throw OtaRefusal("metadata", "${target.path} is signed without an integer custom.version")
            val rollout = (custom["rollout"] as? JsonPrimitive)?.intOrNull ?: 100
            Newest(version, target, (custom["dataset"] as? JsonPrimitive)?.content, rollout)
        }
        if (releases.isEmpty()) {
            throw OtaRefusal("no-release", "${config.modelName} has no release in channel '${config.channel}'")
        }
        return releases.filter { cohort < it.rollout }.maxByOrNull { it.version } ?: run {
            val newest = releases.maxBy { it.version }
            throw OtaRefusal(
                "no-release",
                "no release of ${config.modelName} in channel '${config.channel}' is for this device yet: the newest, " +
                    "v${newest.version}, reaches ${newest.rollout} % of devices and this one sits at ${"%.1f".format(cohort)} %",
            )
        }
    }

    private fun fetchRelease(updater: Updater, newest: Newest): Release {
        val path = newest.target.path
        val partial = File(state.downloadsDir, "release.json.part")
        updater.downloadTarget(newest.target, partial, File(state.downloadsDir, "release.json.download"))
        val release = try {
            parseRelease(Json.parseToJsonElement(partial.readBytes().decodeToString()).jsonObject)
        } catch (error: Exception) {
            throw OtaRefusal("metadata", "$path (v${newest.version}) is not a release descriptor: ${error.message}")
        } finally {
            partial.delete()
        }
        if (!StateDir.SHA256.matches(release.sha256)) {
            throw OtaRefusal(
                "metadata",
                "$path (v${newest.version}) was refused before its model was downloaded: its sha256 '${release.sha256}' " +
                    "is not 64 lowercase hex digits, and this device names model files by it; " +
                    "the publisher must re-publish the release with the model's real sha256",
            )
        }
        if (Triple(release.modelName, release.channel, release.version) != Triple(config.modelName, config.channel, newest.version)) {
            throw OtaRefusal(
                "mix-and-match",
                "$path describes ${release.modelName} ${release.channel} v${release.version}, but is signed as " +
                    "${config.modelName} ${config.channel} v${newest.version} (mix-and-match)",
            )
        }
        if (cohort >= release.rolloutPercent) { // the descriptor narrower than its signed entry
            throw OtaRefusal(
                "mix-and-match",
                "$path (v${newest.version}) is for ${release.rolloutPercent} % of devices, which leaves out this one, " +
                    "but its signed entry says otherwise (mix-and-match)",
            )
        }
        return release
    }

    /** A verified copy of the release's model: one already kept (e.g. on rollback), or a fresh download. */
    private fun fetchModel(updater: Updater, release: Release): File {
        val target = updater.getTargetInfo(release.modelTarget)
            ?: throw OtaRefusal("missing", "${release.modelTarget} is not a signed target")
        if (target.hashes["sha256"] != release.sha256 || target.length != release.size) {
            throw OtaRefusal("hash", "${release.modelTarget} is signed with a different hash or size than its release says")
        }
        val kept = state.modelFile(release.sha256)
        if (updater.isCached(target, kept)) return kept
        val candidate = state.downloadFile(release.sha256, ".pte")
        updater.downloadTarget(target, candidate, state.downloadFile(release.sha256, ".part")) // verifies length and hashes
        return candidate
    }

    /** Move the model into models/, then swap installed.json; the old current becomes last-known-good. */
    private fun install(installed: Installed, candidate: File, release: Release, releaseTarget: String) {
        val new = InstalledModel(
            version = release.version, channel = release.channel, sha256 = release.sha256, size = release.size,
            releaseTarget = releaseTarget, labels = release.labels, inputShape = release.inputShape,
            outputShape = release.outputShape, installedAt = StateDir.now(),
        )
        val kept = state.modelFile(release.sha256)
        if (candidate != kept) {
            Files.move(candidate.toPath(), kept.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
            StateDir.fsyncDirectory(state.modelsDir)
        }
        val current = installed.current
        var previous = if (current != null && current.sha256 != new.sha256) current else installed.previous
        if (previous != null && !state.isIntact(previous)) previous = null
        val swapped = Installed(current = new, previous = previous, rejected = installed.rejected)
        state.saveInstalled(swapped)
        state.collectGarbage(swapped)
    }

    private fun wrongTrack(version: Int, why: String) =
        "release v$version of ${config.modelName} does not fit this ${config.track} device and was not installed: $why; " +
            "publish the track's models under their own name, or give the client the right model/track"

    /** The refusal reason and a message naming the class of failure first: that is what an operator acts on. */
    private fun describe(error: Exception): Pair<String, String> = when (error) {
        is OtaRefusal -> error.reason to error.message!!
        is ExpiredError -> error.reason to
            "expired metadata: the repository's ${error.role} metadata expired at ${error.expires}: " +
            (EXPIRY_REMEDY[error.role] ?: HEARTBEAT) + " (${error.message})"
        is TufError -> error.reason to "${MEANING.getValue(error.reason)}: ${error.javaClass.simpleName}: ${error.message}"
        is StateDirError -> "other" to error.message!!
        else -> "other" to "${error.javaClass.simpleName}: ${error.message}"
    }

    private companion object {
        const val HEARTBEAT = "the publisher must run `edgeops release heartbeat --all`"
        val EXPIRY_REMEDY = mapOf(
            "root" to "the publisher must rotate/renew the root with `edgeops keys rotate-root` and publish it",
            "timestamp" to "$HEARTBEAT (and schedule it well inside the timestamp expiry); " +
                "if it does, someone is serving a frozen copy of the repository",
            "snapshot" to HEARTBEAT,
            TARGETS to HEARTBEAT,
        )
        val MEANING = mapOf(
            "rollback" to "older metadata than the device has seen (rollback)",
            "signature" to "metadata not signed by the trusted keys",
            "hash" to "a file does not match its signed length and hash",
            "length" to "more data than the signed length (endless data)",
            "deadline" to "the repository is too slow (poll deadline)",
            "missing" to "a signed file is missing from the repository",
            "metadata" to "the repository failed verification",
            "other" to "download failed",
        )

        fun parseRelease(json: JsonObject): Release {
            fun string(name: String) = (json.getValue(name) as JsonPrimitive).also { require(it.isString) { "$name is not a string" } }.content
            fun shape(name: String) = json.getValue(name).jsonObject.getValue("shape").jsonArray.map { it.jsonPrimitive.int }
            return Release(
                modelName = string("model_name"),
                channel = string("channel"),
                version = json["version"]?.jsonPrimitive?.int ?: 0,
                modelTarget = string("model_target"),
                sha256 = string("sha256"),
                size = json.getValue("size").jsonPrimitive.long,
                dataset = (json["dataset"] as? JsonPrimitive)?.content ?: "mat",
                labels = json.getValue("labels").jsonArray.map { it.jsonPrimitive.content },
                inputShape = shape("input"),
                outputShape = shape("output"),
                referenceInput = flatten(json.getValue("reference_input")).toFloatArray(),
                referenceOutput = flatten(json.getValue("reference_output")).toFloatArray(),
                rolloutPercent = json["rollout_percent"]?.jsonPrimitive?.int ?: 100,
            )
        }

        fun flatten(element: JsonElement): List<Float> = when (element) {
            is JsonArray -> element.flatMap(::flatten)
            else -> listOf(element.jsonPrimitive.float)
        }
    }
}
