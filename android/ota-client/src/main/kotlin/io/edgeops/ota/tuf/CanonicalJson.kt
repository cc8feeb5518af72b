package io.edgeops.ota.tuf

import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive

/**
 * The canonical JSON TUF signs (securesystemslib's `encode_canonical`, OLPC canonical JSON): keys sorted by
 * code point, no whitespace, integers only, and in strings only `"` and `\` escaped.
 * A signature covers these bytes, so two encoders must agree on every one of them.
 */
object CanonicalJson {
    fun encode(element: JsonElement): ByteArray = StringBuilder().also { write(element, it) }.toString().toByteArray()

    private fun write(element: JsonElement, out: StringBuilder) {
        when (element) {
            is JsonNull -> out.append("null")
            is JsonObject -> {
                out.append('{')
                element.keys.sorted().forEachIndexed { index, key ->
                    if (index > 0) out.append(',')
                    string(key, out)
                    out.append(':')
                    write(element.getValue(key), out)
                }
                out.append('}')
            }
            is JsonArray -> {
                out.append('[')
                element.forEachIndexed { index, item ->
                    if (index > 0) out.append(',')
                    write(item, out)
                }
                out.append(']')
            }
            is JsonPrimitive -> when {
                element.isString -> string(element.content, out)
                element.content == "true" || element.content == "false" -> out.append(element.content)
                else -> out.append(
                    element.content.toLongOrNull()
                        ?: throw MetadataError("canonical JSON has integers only, not ${element.content}"),
                )
            }
        }
    }

    private fun string(value: String, out: StringBuilder) {
        out.append('"')
        for (char in value) {
            if (char == '"' || char == '\\') out.append('\\')
            out.append(char)
        }
        out.append('"')
    }
}

