package io.edgeops.ota.tuf

import com.sun.net.httpserver.HttpServer
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import org.bouncycastle.crypto.params.Ed25519PrivateKeyParameters
import org.bouncycastle.crypto.signers.Ed25519Signer
import java.io.IOException
import java.net.InetSocketAddress
import java.security.MessageDigest
import java.security.SecureRandom
import java.time.Duration
import java.time.Instant
import java.time.temporal.ChronoUnit
import java.util.concurrent.ConcurrentHashMap

/** An Ed25519 signing key, as python-tuf writes it into metadata. */
class TestKey {
    private val private = Ed25519PrivateKeyParameters(SecureRandom())
    val publicHex: String = private.generatePublicKey().encoded.toHexString()
    val json = buildJsonObject {
        put("keytype", "ed25519"); put("scheme", "ed25519"); put("keyval", buildJsonObject { put("public", publicHex) })
    }
    val id: String = MessageDigest.getInstance("SHA-256").digest(CanonicalJson.encode(json)).toHexString()
    val key = Key("ed25519", "ed25519", publicHex)

    fun sign(payload: ByteArray): String = Ed25519Signer().run {
        init(true, private)
        update(payload, 0, payload.size)
        generateSignature().toHexString()
    }
}

/**
 * A real TUF repository (consistent snapshots, one Ed25519 key for every role) served over HTTP by the JDK's
 * server, with the attacks a test needs: replaced files, and a path that streams without end.
 */
class TestRepository : AutoCloseable {
    val files = ConcurrentHashMap<String, ByteArray>()
    val key = TestKey()
    val targets = LinkedHashMap<String, JsonObject>()
    var endless: String? = null
    var expires: Instant = Instant.now().plus(Duration.ofDays(1))
    var requests = 0
    private var version = 0L
    private val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0).apply {
        createContext("/repo/") { exchange ->
            requests++
            val path = exchange.requestURI.rawPath.removePrefix("/repo/")
            try {
                if (path == endless) {
                    exchange.sendResponseHeaders(200, 0) // chunked, no length: the client must cut it
                    val chunk = ByteArray(64 * 1024)
                    exchange.responseBody.use { out -> while (true) out.write(chunk) }
                }
                val body = files[path]
                if (body == null) {
                    exchange.sendResponseHeaders(404, -1)
                } else {
                    exchange.sendResponseHeaders(200, body.size.toLong())
                    exchange.responseBody.use { it.write(body) }
                }
            } catch (_: IOException) { // the client hung up: what an endless stream ends with
            } finally {
                exchange.close()
            }
        }
        start()
    }
    val url = "http://127.0.0.1:${server.address.port}/repo/"
    val root: ByteArray = envelope(
        signed(
            ROOT, 1,
            "consistent_snapshot" to JsonPrimitive(true),
            "keys" to JsonObject(mapOf(key.id to key.json)),
            "roles" to JsonObject(
                listOf(ROOT, TIMESTAMP, SNAPSHOT, TARGETS).associateWith {
                    buildJsonObject { put("keyids", JsonArray(listOf(JsonPrimitive(key.id)))); put("threshold", 1) }
                },
            ),
        ),
        key,
    ).also { files["metadata/1.root.json"] = it }

    fun addTarget(path: String, data: ByteArray, custom: JsonObject? = null) {
        files[path] = data
        targets[path] = buildJsonObject {
            put("length", data.size)
            put("hashes", buildJsonObject { put("sha256", MessageDigest.getInstance("SHA-256").digest(data).toHexString()) })
            if (custom != null) put("custom", custom)
        }
    }

    /** New targets, snapshot and timestamp versions, all signed; the timestamp makes them live. */
    fun publish() {
        version++
        val targetsBytes = envelope(signed(TARGETS, version, "targets" to JsonObject(targets.toMap())), key)
        files["metadata/$version.targets.json"] = targetsBytes
        val snapshotBytes = envelope(signed(SNAPSHOT, version, "meta" to JsonObject(mapOf("targets.json" to meta(version)))), key)
        files["metadata/$version.snapshot.json"] = snapshotBytes
        files["metadata/timestamp.json"] = envelope(signed(TIMESTAMP, version, "meta" to meta("snapshot.json", version)), key)
    }

    fun signed(type: String, version: Long, vararg fields: Pair<String, JsonElement>) = signedAt(type, version, expires, *fields)

    override fun close() = server.stop(0)

    companion object {
        fun signedAt(type: String, version: Long, expires: Instant, vararg fields: Pair<String, JsonElement>) =
            JsonObject(
                mapOf(
                    "_type" to JsonPrimitive(type),
                    "spec_version" to JsonPrimitive("1.0.31"),
                    "version" to JsonPrimitive(version),
                    "expires" to JsonPrimitive(expires.truncatedTo(ChronoUnit.SECONDS).toString()),
                ) + fields,
            )

        fun signed(type: String, version: Long, vararg fields: Pair<String, JsonElement>) =
            signedAt(type, version, Instant.now().plus(Duration.ofDays(1)), *fields)

        fun meta(version: Long) = buildJsonObject { put("version", version) }
        fun meta(name: String, version: Long) = JsonObject(mapOf(name to meta(version)))

        fun envelope(signed: JsonObject, vararg keys: TestKey): ByteArray = JsonObject(
            mapOf(
                "signed" to signed,
                "signatures" to JsonArray(
                    keys.map { key ->
                        buildJsonObject { put("keyid", key.id); put("sig", key.sign(CanonicalJson.encode(signed))) }
                    },
                ),
            ),
        ).toString().toByteArray()
    }
}
