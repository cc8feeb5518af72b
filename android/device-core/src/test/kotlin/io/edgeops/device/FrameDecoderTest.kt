package io.edgeops.device

import kotlinx.serialization.json.boolean
import kotlinx.serialization.json.double
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertIs
import kotlin.test.assertTrue

class FrameDecoderTest {
    private val vectors = Vectors.load("frames.json")
    private val decoder = FrameDecoder(
        vectors.getValue("min_pa").jsonPrimitive.double,
        vectors.getValue("max_pa").jsonPrimitive.double,
    )
    private val cases = vectors.getValue("frames").jsonArray.map { it.jsonObject }

    @Test
    fun `decodes and refuses every shared vector as the Python agent does`() {
        for (case in cases) {
            val name = case.getValue("name").jsonPrimitive.content
            val decoded = decoder.decode(Vectors.hex(case.getValue("payload_hex").jsonPrimitive.content))
            val expected = case["pressures"]
            if (expected != null) {
                val frame = assertIs<Decoded.Frame>(decoded, name)
                assertContentEquals(Vectors.floats(expected), frame.pressures, name)
            } else {
                val refused = assertIs<Decoded.Refused>(decoded, name)
                assertEquals(case.getValue("reason").jsonPrimitive.content, refused.reason.wire, name)
                assertEquals(
                    case.getValue("looks_like_kpa").jsonPrimitive.boolean,
                    FrameDecoder.KPA_HINT in refused.message,
                    "$name: ${refused.message}",
                )
            }
        }
    }

    @Test
    fun `the vectors hold every refusal and the documented example`() {
        val reasons = cases.mapNotNull { it["reason"]?.jsonPrimitive?.content }.toSet()
        assertEquals(FrameRefusal.entries.map { it.wire }.toSet(), reasons)
        val example = decoder.decode(Vectors.hex("00c0d2bf47beb9bf47deb8bf4779babf47"))
        // The doc rounds to 98213.5, 98163.48, 98161.73 and 98164.95 Pa; these are the exact float32 values.
        val exact = floatArrayOf(98213.5f, 98163.484375f, 98161.734375f, 98164.9453125f)
        assertContentEquals(exact, assertIs<Decoded.Frame>(example).pressures)
    }

    @Test
    fun `a refusal names the problem`() {
        val short = assertIs<Decoded.Refused>(decoder.decode(ByteArray(5)))
        assertEquals("notification of 5 bytes; a frame needs at least 17", short.message)
        val kpa = assertIs<Decoded.Refused>(decoder.decode(Vectors.hex("00" + "b072c442".repeat(4))))
        assertTrue("98.2" in kpa.message && "kPa" in kpa.message, kpa.message)
    }
}
