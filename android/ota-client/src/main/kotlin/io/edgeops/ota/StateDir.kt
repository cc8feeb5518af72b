package io.edgeops.ota

import io.edgeops.ota.tuf.writeAtomically
import kotlinx.serialization.ExperimentalSerializationApi
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.double
import kotlinx.serialization.json.int
import kotlinx.serialization.json.intOrNull
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import kotlinx.serialization.json.put
import java.io.File
import java.nio.channels.FileChannel
import java.nio.file.StandardOpenOption
import java.security.MessageDigest
import java.time.OffsetDateTime
import java.time.ZoneOffset
import java.time.format.DateTimeFormatter

/**
 * The state directory, laid out and named exactly as the Python agent's (src/edgeops/device/state.py), so
 * either agent reads what the other wrote:
 *
 *     device.json     {model_name, track}: the repository this directory belongs to, fixed at first use
 *     metadata/       trusted TUF metadata
 *     models/         <sha256>.pte, only models that passed verification and the smoke test
 *     downloads/      partial downloads; disposable
 *     installed.json  current, previous (last-known-good), rejected; replaced atomically = the swap
 *     status.json     what a person or a fleet tool wants to know
 */
internal class StateDir(val root: File, modelName: String, track: String) {
    val metadataDir = File(root, "metadata")
    val modelsDir = File(root, "models")
    val downloadsDir = File(root, "downloads")
    private val installedFile = File(root, "installed.json")
    private val statusFile = File(root, "status.json")

    init {
        bind(modelName, track)
        listOf(metadataDir, modelsDir, downloadsDir).forEach { it.mkdirs() }
    }

    /** Ties a new directory to one repository; refuses, before touching anything, one that follows another. */
    private fun bind(modelName: String, track: String) {
        val device = File(root, "device.json")
        if (device.isFile) {
            val bound = parse(device.readBytes())
            val boundModel = bound.str("model_name")
            val boundTrack = bound.str("track")
            if (boundModel != modelName || boundTrack != track) {
                throw StateDirError(
                    "$root is the state of a device following $boundModel ($boundTrack track), not $modelName " +
                        "($track track): its verified metadata and models belong to that repository; " +
                        "give this client another state directory",
                )
            }
            return
        }
        root.mkdirs()
        write(device, buildJsonObject { put("model_name", modelName); put("track", track) })
    }

    /** This device's id where it has no other: made once, kept in the state directory (as the Python agent does). */
    fun identity(): String {
        val file = File(root, "device-id")
        if (!file.isFile) {
            val random = ByteArray(8).also { java.security.SecureRandom().nextBytes(it) }
            writeAtomically(file, "device-${random.joinToString("") { "%02x".format(it) }}\n".toByteArray())
        }
        return file.readText().trim()
    }

    fun installed(): Installed {
        if (!installedFile.exists()) return Installed()
        return try {
            val json = parse(installedFile.readBytes())
            Installed(
                current = json.objOrNull("current")?.let(::installedModel),
                previous = json.objOrNull("previous")?.let(::installedModel),
                rejected = (json["rejected"] as? JsonArray)?.map { it.jsonPrimitive.content } ?: emptyList(),
            )
        } catch (error: Exception) { // written atomically by us: only a hand edit or a failing disk gets here
            throw StateDirError(
                "$installedFile is unreadable (${error.message}); restore it, or delete it to have the next poll " +
                    "install the newest release again",
            )
        }
    }

    /** The swap: one atomic replace of installed.json. */
    fun saveInstalled(installed: Installed) = write(
        installedFile,
        buildJsonObject {
            put("current", installed.current?.let(::toJson) ?: JsonNull)
            put("previous", installed.previous?.let(::toJson) ?: JsonNull)
            put("rejected", JsonArray(installed.rejected.map(::JsonPrimitive)))
        },
    )

    fun modelFile(sha256: String) = File(modelsDir, "${checkSha256(sha256)}.pte")
    fun downloadFile(sha256: String, suffix: String) = File(downloadsDir, "${checkSha256(sha256)}$suffix")

    fun isIntact(model: InstalledModel?): Boolean {
        if (model == null || !SHA256.matches(model.sha256)) return false
        val file = modelFile(model.sha256)
        return file.isFile && file.length() == model.size && sha256File(file) == model.sha256
    }

    /** The model to run: the current one if intact, else the last-known-good one. */
    fun running(installed: Installed): Pair<InstalledModel, String>? = when {
        isIntact(installed.current) -> installed.current!! to "current"
        isIntact(installed.previous) -> installed.previous!! to "previous"
        else -> null
    }

    /** Keep the current and last-known-good models; everything else, and every download, goes. */
    fun collectGarbage(installed: Installed) {
        val keep = listOfNotNull(installed.current, installed.previous).map { modelFile(it.sha256).name }.toSet()
        modelsDir.listFiles()?.filter { it.name !in keep }?.forEach { it.delete() }
        downloadsDir.listFiles()?.forEach { it.delete() }
    }

    fun status(default: () -> Status): Status = try {
        if (statusFile.exists()) statusFromJson(parse(statusFile.readBytes())) else default()
    } catch (_: Exception) {
        default() // a status file is advisory; start a fresh one
    }

    fun saveStatus(status: Status) = write(statusFile, statusToJson(status))

    companion object {
        val SHA256 = Regex("[0-9a-f]{64}")

        @OptIn(ExperimentalSerializationApi::class)
        private val pretty = Json { prettyPrint = true; prettyPrintIndent = "  " }

        fun checkSha256(value: String): String {
            require(SHA256.matches(value)) { "model sha256 '$value' is not a sha256 (64 lowercase hex digits)" }
            return value
        }

        fun parse(bytes: ByteArray): JsonObject = Json.parseToJsonElement(bytes.decodeToString()).jsonObject

        fun write(file: File, json: JsonElement) = writeAtomically(file, pretty.encodeToString(JsonElement.serializer(), json).toByteArray())

        fun sha256File(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            file.inputStream().use { input ->
                val buffer = ByteArray(64 * 1024)
                while (true) {
                    val read = input.read(buffer)
                    if (read < 0) break
                    digest.update(buffer, 0, read)
                }
            }
            return digest.digest().toHexString()
        }

        fun fsyncDirectory(directory: File) {
            runCatching { FileChannel.open(directory.toPath(), StandardOpenOption.READ).use { it.force(true) } }
        }

        /** Python's `datetime.now(UTC).isoformat(timespec="milliseconds")`. */
        fun now(): String = OffsetDateTime.now(ZoneOffset.UTC).format(DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSSxxx"))

        fun toJson(model: InstalledModel) = buildJsonObject {
            put("version", model.version)
            put("channel", model.channel)
            put("sha256", model.sha256)
            put("size", model.size)
            put("release_target", model.releaseTarget)
            put("labels", JsonArray(model.labels.map(::JsonPrimitive)))
            put("input_shape", JsonArray(model.inputShape.map(::JsonPrimitive)))
            put("output_shape", JsonArray(model.outputShape.map(::JsonPrimitive)))
            put("installed_at", model.installedAt)
        }

        fun installedModel(json: JsonObject) = InstalledModel(
            version = json.getValue("version").jsonPrimitive.int,
            channel = json.str("channel")!!,
            sha256 = json.str("sha256")!!,
            size = json.getValue("size").jsonPrimitive.long,
            releaseTarget = json.str("release_target")!!,
            labels = json.getValue("labels").jsonArray.map { it.jsonPrimitive.content },
            inputShape = json.getValue("input_shape").jsonArray.map { it.jsonPrimitive.int },
            outputShape = json.getValue("output_shape").jsonArray.map { it.jsonPrimitive.int },
            installedAt = json.str("installed_at")!!,
        )

        fun statusToJson(status: Status) = buildJsonObject {
            put("model_name", status.modelName)
            put("track", status.track)
            put("channel", status.channel)
            put("repository", status.repository)
            put("installed", status.installed?.let(::toJson) ?: JsonNull)
            put("running", status.running)
            put("last_check", status.lastCheck)
            put("last_success", status.lastSuccess)
            put("last_error", status.lastError)
            put(
                "last_failure",
                status.lastFailure?.let { buildJsonObject { put("at", it.at); put("type", it.type); put("message", it.message) } } ?: JsonNull,
            )
            put("failures_in_a_row", status.failuresInARow)
            put(
                "last_poll",
                status.lastPoll?.let {
                    buildJsonObject {
                        put("outcome", it.outcome)
                        put("seconds", it.seconds)
                        put("requests", it.requests)
                        put("metadata_bytes", it.metadataBytes)
                        put("target_bytes", it.targetBytes)
                    }
                } ?: JsonNull,
            )
        }

        fun statusFromJson(json: JsonObject) = Status(
            modelName = json.str("model_name")!!,
            track = json.str("track") ?: "",
            channel = json.str("channel")!!,
            repository = json.str("repository")!!,
            installed = json.objOrNull("installed")?.let(::installedModel),
            running = json.str("running"),
            lastCheck = json.str("last_check"),
            lastSuccess = json.str("last_success"),
            lastError = json.str("last_error"),
            lastFailure = json.objOrNull("last_failure")?.let { Failure(it.str("at")!!, it.str("type")!!, it.str("message")!!) },
            failuresInARow = (json["failures_in_a_row"] as? JsonPrimitive)?.intOrNull ?: 0,
            lastPoll = json.objOrNull("last_poll")?.let {
                PollStats(
                    it.str("outcome")!!, it.getValue("seconds").jsonPrimitive.double, it.getValue("requests").jsonPrimitive.int,
                    it.getValue("metadata_bytes").jsonPrimitive.long, it.getValue("target_bytes").jsonPrimitive.long,
                )
            },
        )

        private fun JsonObject.str(name: String): String? = (get(name) as? JsonPrimitive)?.takeIf { it.isString }?.content
        private fun JsonObject.objOrNull(name: String): JsonObject? = get(name) as? JsonObject
    }
}
