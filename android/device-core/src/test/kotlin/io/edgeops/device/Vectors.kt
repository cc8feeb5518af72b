package io.edgeops.device

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonPrimitive

/** The shared vectors tests/device/vectors.py wrote from the Python agent's code. */
object Vectors {
    fun load(name: String): JsonObject {
        val stream = Vectors::class.java.getResourceAsStream("/vectors/$name")
            ?: error("vectors/$name is not on the test classpath; run `python -m tests.device.vectors`")
        return Json.parseToJsonElement(stream.bufferedReader().readText()) as JsonObject
    }

    fun floats(element: JsonElement): FloatArray =
        (element as JsonArray).map { it.jsonPrimitive.content.toDouble().toFloat() }.toFloatArray()

    /** A nested list of numbers ([1][frames][chambers]) flattened in row-major order, or null for JSON null. */
    fun flattened(element: JsonElement): FloatArray? {
        if (element is JsonNull) return null
        val out = ArrayList<Float>()
        fun walk(node: JsonElement) {
            if (node is JsonArray) node.forEach(::walk) else out.add(node.jsonPrimitive.content.toDouble().toFloat())
        }
        walk(element)
        return out.toFloatArray()
    }

    fun hex(text: String): ByteArray = text.chunked(2).map { it.toInt(16).toByte() }.toByteArray()

    fun strings(element: JsonElement): List<String> = element.jsonArray.map { it.jsonPrimitive.content }
}
