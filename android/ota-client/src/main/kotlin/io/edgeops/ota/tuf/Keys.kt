package io.edgeops.ota.tuf

import org.bouncycastle.crypto.params.Ed25519PublicKeyParameters
import org.bouncycastle.crypto.signers.Ed25519Signer
import java.security.KeyFactory
import java.security.PublicKey
import java.security.Signature
import java.security.spec.MGF1ParameterSpec
import java.security.spec.PSSParameterSpec
import java.security.spec.X509EncodedKeySpec
import java.util.Base64

/**
 * A TUF public key (keytype, scheme, keyval.public) and the one check it is for: does it sign these bytes.
 * Ed25519 goes through BouncyCastle's lightweight API (any Android level, no provider clash); ECDSA and
 * RSA-PSS through JCA algorithms Android's Conscrypt provides. Unknown types verify nothing (python-tuf too).
 */
class Key(val keytype: String, val scheme: String, val public: String) {
    fun verifies(payload: ByteArray, signatureHex: String): Boolean {
        val signature = runCatching { signatureHex.hexToByteArray() }.getOrNull() ?: return false
        return runCatching {
            when {
                keytype == "ed25519" && scheme == "ed25519" -> ed25519(payload, signature)
                keytype in ECDSA_TYPES && scheme == "ecdsa-sha2-nistp256" -> jca("EC", "SHA256withECDSA", payload, signature)
                keytype in ECDSA_TYPES && scheme == "ecdsa-sha2-nistp384" -> jca("EC", "SHA384withECDSA", payload, signature)
                keytype == "rsa" && scheme == "rsassa-pss-sha256" -> rsaPss(payload, signature)
                else -> false
            }
        }.getOrDefault(false)
    }

    private fun ed25519(payload: ByteArray, signature: ByteArray): Boolean {
        val key = public.hexToByteArray()
        if (key.size != Ed25519PublicKeyParameters.KEY_SIZE || signature.size != 64) return false
        return Ed25519Signer().run {
            init(false, Ed25519PublicKeyParameters(key, 0))
            update(payload, 0, payload.size)
            verifySignature(signature)
        }
    }

    private fun pemKey(algorithm: String): PublicKey {
        val base64 = public.lines().filterNot { it.startsWith("-----") }.joinToString("").filterNot { it.isWhitespace() }
        return KeyFactory.getInstance(algorithm).generatePublic(X509EncodedKeySpec(Base64.getDecoder().decode(base64)))
    }

    private fun jca(keyAlgorithm: String, algorithm: String, payload: ByteArray, signature: ByteArray): Boolean =
        Signature.getInstance(algorithm).run {
            initVerify(pemKey(keyAlgorithm))
            update(payload)
            verify(signature)
        }

    /** securesystemslib signs with salt = digest length; older signers used the maximum: accept both. */
    private fun rsaPss(payload: ByteArray, signature: ByteArray): Boolean {
        val key = pemKey("RSA")
        val modulusBytes = ((key as java.security.interfaces.RSAPublicKey).modulus.bitLength() + 7) / 8
        return listOf(32, modulusBytes - 32 - 2).any { salt ->
            runCatching {
                pss().run {
                    setParameter(PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, salt, 1))
                    initVerify(key)
                    update(payload)
                    verify(signature)
                }
            }.getOrDefault(false)
        }
    }

    /** The JDK names it RSASSA-PSS; Android's Conscrypt SHA256withRSA/PSS (both take the parameters). */
    private fun pss(): Signature =
        runCatching { Signature.getInstance("RSASSA-PSS") }.getOrElse { Signature.getInstance("SHA256withRSA/PSS") }

    private companion object {
        val ECDSA_TYPES = setOf("ecdsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384")
    }
}
