package io.edgeops.ota.tuf

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.jsonObject
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/** root.json is what `edgeops keys init` (python-tuf) signs: the Kotlin side must accept exactly that. */
class MetadataTest {
    private val rootBytes = checkNotNull(javaClass.getResource("/root.json")).readBytes()

    private fun verifySelf(root: Metadata) =
        root.verify(root.signed.keys, root.signed.roles.getValue(ROOT), "root", "root")

    @Test
    fun `a root signed by the Python side verifies with its own keys`() {
        val root = Metadata.parse(rootBytes, ROOT)
        assertEquals(1, root.signed.version)
        verifySelf(root)
    }

    @Test
    fun `a changed field breaks the signature`() {
        val whole = Json.parseToJsonElement(rootBytes.decodeToString()).jsonObject
        val signed = whole.getValue("signed").jsonObject
        val tampered = JsonObject(whole + ("signed" to JsonObject(signed + ("version" to JsonPrimitive(2)))))
        val error = assertFailsWith<SignatureError> { verifySelf(Metadata.parse(tampered.toString().toByteArray(), ROOT)) }
        assertEquals("signature", error.reason)
    }

    @Test
    fun `canonical form sorts keys and escapes only quote and backslash`() {
        val element = Json.parseToJsonElement("""{"b": [1, true, null], "é": "x\"y\\z\n", "a": {}}""")
        assertEquals("{\"a\":{},\"b\":[1,true,null],\"é\":\"x\\\"y\\\\z\n\"}", CanonicalJson.encode(element).decodeToString())
        assertFailsWith<MetadataError> { CanonicalJson.encode(Json.parseToJsonElement("1.5")) }
    }

    @Test
    fun `one key signing twice counts once towards the threshold`() {
        val key = TestKey()
        val signed = TestRepository.signed(TIMESTAMP, 1, "meta" to TestRepository.meta("snapshot.json", 1))
        val once = Metadata.parse(TestRepository.envelope(signed, key), TIMESTAMP)
        once.verify(mapOf(key.id to key.key), RoleKeys(listOf(key.id), 1), "timestamp", "test")
        assertFailsWith<SignatureError> { once.verify(mapOf(key.id to key.key), RoleKeys(listOf(key.id), 2), "timestamp", "test") }
        // The same signature twice, or the same key id listed twice for a role, is refused outright.
        val twice = TestRepository.envelope(signed, key, key)
        assertTrue(assertFailsWith<MetadataError> { Metadata.parse(twice, TIMESTAMP) }.message!!.contains("two signatures"))
        val doubleKeyRole = Metadata.parse(rootBytes, ROOT).signed.json.toString()
            .let { text -> Json.parseToJsonElement(text).jsonObject }
        val rootKey = (doubleKeyRole.getValue("roles").jsonObject.getValue("root").jsonObject.getValue("keyids") as kotlinx.serialization.json.JsonArray)[0]
        val roles = JsonObject(
            doubleKeyRole.getValue("roles").jsonObject + (
                "root" to JsonObject(mapOf("keyids" to kotlinx.serialization.json.JsonArray(listOf(rootKey, rootKey)), "threshold" to JsonPrimitive(2)))
                ),
        )
        val doubled = JsonObject(doubleKeyRole + ("roles" to roles))
        assertFailsWith<MetadataError> { Metadata.parse(TestRepository.envelope(doubled), ROOT) }
    }

    @Test
    fun `delegated paths match like python-tuf's fnmatch per segment and hash bins split by sha256`() {
        val role = DelegatedRole("r", RoleKeys(listOf("k"), 1), false, listOf("models/*.pte", "a/?/[!x]"), null)
        assertTrue(role.delegates("models/abc.pte"))
        assertTrue(!role.delegates("models/sub/abc.pte")) // `*` never crosses a `/`
        assertTrue(role.delegates("a/b/c") && !role.delegates("a/b/x"))
        val bins = SuccinctRoles(RoleKeys(listOf("k"), 1), 8, "bin")
        // python-tuf: sha256("models/abc.pte") first byte, as two hex digits
        assertEquals("bin-" + sha256Hex("models/abc.pte").take(2), bins.roleFor("models/abc.pte"))
        assertTrue(bins.isBin("bin-ff") && !bins.isBin("bin-100") && !bins.isBin("other-00"))
    }

    @Test
    fun `role names are quoted as python's urllib quote with no safe characters`() {
        assertEquals("..%2Fdelegatedrole", quote("../delegatedrole"))
        assertEquals("%3F%23%20a~b_c-d.e", quote("?# a~b_c-d.e"))
    }
}
