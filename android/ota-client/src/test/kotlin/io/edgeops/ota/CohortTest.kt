package io.edgeops.ota

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.double
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import java.io.File
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertTrue

class CohortTest {
    /** Written by the Python agent's own code (`python -m tests.device.vectors`), shared with device-core. */
    private val vectors = File("../device-core/src/test/resources/vectors/cohorts.json")

    @Test
    fun `every device sits where the Python agent puts it`() {
        val cases = Json.parseToJsonElement(vectors.readText()).jsonObject.getValue("cases").jsonArray
        assertTrue(cases.size > 50)
        for (case in cases.map { it.jsonObject }) {
            val device = case.getValue("device_id").jsonPrimitive.content
            val model = case.getValue("model").jsonPrimitive.content
            assertEquals(case.getValue("position").jsonPrimitive.double, cohortPosition(device, model), "$device / $model")
        }
    }
}
