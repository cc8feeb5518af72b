package io.edgeops.ota

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import org.bouncycastle.crypto.params.Ed25519PublicKeyParameters
import org.bouncycastle.crypto.signers.Ed25519Signer

/** A TUF metadata file: its `signed` part and the signatures over its canonical form. */
class Metadata(val signed: JsonObject, private val signatures: Map<String, String>) {
    val type: String get() = signed.getValue("_type").jsonPrimitive.content
    val version: Long get() = signed.getValue("version").jsonPrimitive.long

    /**
     * Spec 5.3.4/5.3.5 (root), 5.4.2, 5.5.3, 5.6.3: at least `threshold` distinct keys of `role`, as `delegator`
     * lists them, signed the canonical `signed`. Unknown key types and bad signatures count for nothing.
     */
    fun verifiedBy(delegator: JsonObject, role: String): Boolean {
        val roleEntry = delegator.getValue("roles").jsonObject[role]?.jsonObject
            ?: throw MetadataError("no role '$role' in ${delegator.getValue("_type").jsonPrimitive.content}")
        val threshold = roleEntry.getValue("threshold").jsonPrimitive.long
        val keys = delegator.getValue("keys").jsonObject
        val payload = CanonicalJson.encode(signed)
        val valid = roleEntry.getValue("keyids").jsonArray.map { it.jsonPrimitive.content }.toSet().count { keyid ->
            val key = keys[keyid]?.jsonObject ?: return@count false
            val signature = signatures[keyid] ?: return@count false
            ed25519Verifies(key, payload, signature)
        }
        return valid >= threshold
    }

    companion object {
        fun parse(bytes: ByteArray): Metadata {
            val root = try {
                Json.parseToJsonElement(bytes.decodeToString()).jsonObject
            } catch (error: IllegalArgumentException) {
                throw MetadataError("not TUF metadata: ${error.message}")
            }
            val signatures = root.getValue("signatures").jsonArray.associate {
                val entry = it.jsonObject
                entry.getValue("keyid").jsonPrimitive.content to entry.getValue("sig").jsonPrimitive.content
            }
            return Metadata(root.getValue("signed").jsonObject, signatures)
        }

        private fun ed25519Verifies(key: JsonObject, payload: ByteArray, signatureHex: String): Boolean {
            if (key.getValue("keytype").jsonPrimitive.content != "ed25519") return false
            if (key.getValue("scheme").jsonPrimitive.content != "ed25519") return false
            val public = key.getValue("keyval").jsonObject.getValue("public").jsonPrimitive.content.hexToByteArray()
            val signature = runCatching { signatureHex.hexToByteArray() }.getOrNull() ?: return false
            if (public.size != Ed25519PublicKeyParameters.KEY_SIZE || signature.size != 64) return false
            return Ed25519Signer().run {
                init(false, Ed25519PublicKeyParameters(public, 0))
                update(payload, 0, payload.size)
                verifySignature(signature)
            }
        }
    }
}
