package io.edgeops.ota

import io.edgeops.ota.tuf.TestRepository
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.put
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.security.MessageDigest
import java.time.Instant
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertTrue

/** The OTA layer end to end against a real signed repository on a local HTTP server; no mocks. */
class OtaClientTest {
    @TempDir lateinit var temp: File

    private val repository = TestRepository()

    private fun client(check: ModelCheck = ModelCheck { _, _ -> }): OtaClient {
        val root = File(temp, "root.json").apply { writeBytes(repository.root) }
        return OtaClient(OtaConfig(repository.url, "mat-occupancy", trustedRoot = root, stateDir = File(temp, "state")), check)
    }

    /** Publishes a model and its descriptor as the Python publisher lays them out; returns the model's sha256. */
    private fun release(
        version: Int, model: ByteArray = "model v$version".toByteArray(), dataset: String = "mat",
        describe: (JsonObject) -> JsonObject = { it },
    ): String {
        val sha = MessageDigest.getInstance("SHA-256").digest(model).toHexString()
        repository.addTarget("models/$sha.pte", model)
        val descriptor = describe(
            buildJsonObject {
                put("model_name", "mat-occupancy"); put("channel", "stable"); put("version", version)
                put("model_target", "models/$sha.pte"); put("model_key", "mat-occupancy/models/$sha.pte")
                put("sha256", sha); put("size", model.size); put("created_at", "2026-01-01T00:00:00Z"); put("dataset", dataset)
                put("labels", Json.parseToJsonElement("""["empty_or_cat", "occupied"]"""))
                put("input", Json.parseToJsonElement("""{"shape": [1, 2, 2], "units": "raw"}"""))
                put("output", Json.parseToJsonElement("""{"shape": [1, 2]}"""))
                put("reference_input", Json.parseToJsonElement("[[[0.5, 1], [2, 3]]]"))
                put("reference_output", Json.parseToJsonElement("[[0.25, -1.5]]"))
            },
        )
        val custom = buildJsonObject { put("channel", "stable"); put("version", version); put("dataset", dataset) }
        repository.addTarget("releases/stable/$version-${sha.take(12)}.json", descriptor.toString().toByteArray(), custom)
        repository.publish()
        return sha
    }

    @Test
    fun `installs the newest release, then an unchanged poll downloads nothing, and Python can read the state`() = repository.use {
        release(1)
        val sha2 = release(2)
        val client = client { model, release ->
            check(model.length() == release.size && release.referenceInput.toList() == listOf(0.5f, 1f, 2f, 3f))
        }
        val first = client.poll()
        assertEquals(Outcome.INSTALLED, first.outcome, first.message)
        assertEquals(2, first.installed!!.version)
        assertEquals(sha2, first.installed!!.sha256)
        assertTrue(client.modelFile(first.installed!!).isFile)

        val again = client.poll()
        assertEquals(Outcome.UNCHANGED, again.outcome, again.message)
        assertEquals(0, again.targetBytes)
        assertEquals(2, again.requests, "2.root.json (404) and timestamp.json only")

        val state = File(temp, "state")
        val installed = Json.parseToJsonElement(File(state, "installed.json").readText()).jsonObject
        assertEquals("releases/stable/2-${sha2.take(12)}.json", installed.getValue("current").jsonObject["release_target"]!!.jsonPrimitive.content)
        assertEquals(listOf(1, 2, 2), installed.getValue("current").jsonObject["input_shape"].toString().let { Json.decodeFromString<List<Int>>(it) })
        val status = Json.parseToJsonElement(File(state, "status.json").readText()).jsonObject
        assertEquals(setOf("model_name", "track", "channel", "repository", "installed", "running", "last_check", "last_success",
            "last_error", "last_failure", "failures_in_a_row", "last_poll"), status.keys)
        assertEquals("current", status["running"]!!.jsonPrimitive.content)
        assertEquals(2, status.getValue("last_poll").jsonObject["requests"]!!.jsonPrimitive.int)
        assertEquals("""{"model_name":"mat-occupancy","track":"mat"}""", Json.parseToJsonElement(File(state, "device.json").readText()).toString())
        assertEquals(setOf("root.json", "timestamp.json", "snapshot.json", "targets.json"), File(state, "metadata").list()!!.toSet())
    }

    @Test
    fun `a release that fails its smoke test is refused, remembered, and not fetched again`() = repository.use {
        release(1)
        val client = client { _, _ -> error("output differs by 3.5") }
        val refused = client.poll()
        assertEquals("smoke-test", refused.reason, refused.message)
        assertTrue("output differs by 3.5" in refused.message)
        val again = client.poll()
        assertEquals(Outcome.UNCHANGED, again.outcome)
        assertEquals(0, again.targetBytes)
        assertTrue("rejected earlier" in again.message)
        assertEquals(1, client.installed().rejected.size)
        assertEquals(0, client.status().failuresInARow) // the refusal stays in lastFailure only
        assertTrue("smoke test" in client.status().lastFailure!!.message)
        assertFalse(File(temp, "state/models").list()!!.any() || File(temp, "state/downloads").list()!!.any())
    }

    @Test
    fun `the previous model is kept as last-known-good and a lower newest version is a rollback`() = repository.use {
        release(1)
        val client = client()
        assertEquals(Outcome.INSTALLED, client.poll().outcome)
        release(2)
        assertEquals(Outcome.INSTALLED, client.poll().outcome)
        assertEquals(1, client.installed().previous!!.version)
        // The publisher's channel now tops out below what is installed (a reset or replayed repository).
        repository.targets.keys.removeIf { it.startsWith("releases/stable/2-") }
        repository.publish()
        val refused = client.poll()
        assertEquals("rollback", refused.reason, refused.message)
        assertEquals(2, refused.installed!!.version)
    }

    @Test
    fun `wrong track and mix-and-match are refused before the model is downloaded`() = repository.use {
        release(1, dataset = "eeg")
        val client = client()
        val wrongTrack = client.poll()
        assertEquals("wrong-track", wrongTrack.reason, wrongTrack.message)
        assertEquals(0, wrongTrack.targetBytes)
        release(2) { descriptor -> JsonObject(descriptor + ("version" to kotlinx.serialization.json.JsonPrimitive(7))) }
        val mixed = client.poll()
        assertEquals("mix-and-match", mixed.reason, mixed.message)
        assertFalse(File(temp, "state/models").list()!!.any())
    }

    @Test
    fun `tampered, endless and expired repositories are refused with their reasons and nothing changes`() = repository.use {
        val sha = release(1)
        val client = client()
        repository.files["models/$sha.pte"] = "model v9".toByteArray() // same length, other bytes
        assertEquals("hash", client.poll().reason)
        repository.endless = "models/$sha.pte"
        val endless = client.poll()
        assertEquals("length", endless.reason, endless.message)
        assertTrue(endless.targetBytes < 100_000)
        repository.expires = Instant.now().minusSeconds(60)
        repository.publish()
        val expired = client.poll()
        assertEquals("expired", expired.reason, expired.message)
        assertTrue("timestamp metadata expired" in expired.message)
        assertEquals(null, expired.installed)
        assertEquals(3, client.status().failuresInARow)
    }
}
