package io.edgeops.ota

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.jsonObject
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertTrue

/** root.json is what `edgeops keys init` (python-tuf) signs: the Kotlin side must accept exactly that. */
class SignaturesTest {
    private val rootBytes = checkNotNull(javaClass.getResource("/root.json")).readBytes()

    @Test
    fun `a root signed by the Python side verifies with its own keys`() {
        val root = Metadata.parse(rootBytes)
        assertEquals("root", root.type)
        assertTrue(root.verifiedBy(root.signed, "root"))
    }

    @Test
    fun `a changed field breaks the signature`() {
        val tampered = Json.parseToJsonElement(rootBytes.decodeToString()).jsonObject.let { whole ->
            val signed = whole.getValue("signed").jsonObject
            Json.encodeToString(
                kotlinx.serialization.json.JsonObject(
                    whole + ("signed" to kotlinx.serialization.json.JsonObject(signed + ("version" to JsonPrimitive(2)))),
                ),
            )
        }
        assertFalse(Metadata.parse(tampered.toByteArray()).verifiedBy(Metadata.parse(rootBytes).signed, "root"))
    }

    @Test
    fun `canonical form sorts keys and escapes only quote and backslash`() {
        val element = Json.parseToJsonElement("""{"b": [1, true, null], "a": "x\"y\\z\n"}""")
        assertEquals("{\"a\":\"x\\\"y\\\\z\n\",\"b\":[1,true,null]}", CanonicalJson.encode(element).decodeToString())
    }
}
