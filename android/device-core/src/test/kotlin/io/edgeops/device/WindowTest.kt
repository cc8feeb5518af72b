package io.edgeops.device

import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue

class WindowTest {
    private val vectors = Vectors.load("windows.json")

    @Test
    fun `feeds the model exactly the windows the Python agent feeds, across model changes`() {
        val runs = vectors.getValue("runs").jsonArray.map { it.jsonObject }
        assertTrue(runs.size >= 4)
        for (run in runs) {
            val name = run.getValue("name").jsonPrimitive.content
            var window: Window? = null
            var inputs = 0
            for ((index, step) in run.getValue("steps").jsonArray.map { it.jsonObject }.withIndex()) {
                val model = step["model"]?.jsonObject
                if (model != null) {
                    val length = model.getValue("window").jsonPrimitive.int
                    window = window?.resized(length) ?: Window(length)
                    continue
                }
                val current = assertNotNull(window, "$name: a frame before any model")
                val actual = current.push(Vectors.floats(step.getValue("frame")))
                val expected = Vectors.flattened(step.getValue("input"))
                if (expected == null) {
                    assertNull(actual, "$name, step $index")
                } else {
                    inputs++
                    assertContentEquals(expected, actual, "$name, step $index")
                    assertEquals(expected.size.toLong(), current.shape().fold(1L) { a, b -> a * b })
                }
            }
            assertTrue(inputs > 0, "$name: the run never filled a window")
        }
    }

    @Test
    fun `labels the logits as the Python agent does`() {
        for (case in vectors.getValue("labels").jsonArray.map { it.jsonObject }) {
            val logits = Vectors.floats(case.getValue("logits"))
            val labels = Vectors.strings(case.getValue("labels"))
            assertEquals(case.getValue("label").jsonPrimitive.content, labelFor(logits, labels), logits.contentToString())
        }
    }

    @Test
    fun `refuses logits that do not fit the labels`() {
        val error = assertFailsWith<IllegalArgumentException> { labelFor(floatArrayOf(1f, 2f, 3f), listOf("a", "b")) }
        assertEquals("the model gave 3 logits but its release names 2 labels (a, b)", error.message)
        assertFailsWith<IllegalArgumentException> { labelFor(floatArrayOf(Float.NaN, 2f), listOf("a", "b")) }
    }

    @Test
    fun `a window keeps its own copy of each frame`() {
        val window = Window(1)
        val frame = floatArrayOf(1f, 2f, 3f, 4f)
        window.push(frame)
        frame[0] = 99f
        assertContentEquals(floatArrayOf(1f, 2f, 3f, 4f), window.held.single())
    }

    @Test
    fun `the smoke test measures the largest absolute difference and fails on NaN`() {
        assertEquals(0.5, reproductionError(floatArrayOf(1f, 2.5f), floatArrayOf(1.25f, 2f)))
        assertEquals(Double.POSITIVE_INFINITY, reproductionError(floatArrayOf(Float.NaN, 0f), floatArrayOf(0f, 0f)))
        val error = assertFailsWith<IllegalArgumentException> { reproductionError(floatArrayOf(1f), floatArrayOf(1f, 2f)) }
        assertEquals("the model gave 1 outputs on the reference input; the release recorded 2", error.message)
    }
}
