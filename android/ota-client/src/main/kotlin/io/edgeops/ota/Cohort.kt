package io.edgeops.ota

import java.math.BigInteger
import java.security.MessageDigest

/**
 * Where a device sits in a model's staged rollouts, in [0, 100): a release at p % is for the devices below p.
 * The Python agent's `edgeops.ota.release.cohort_position`, to the bit: the first 8 bytes of
 * sha256("<model>/<device>") as an unsigned big-endian integer, over 2^64, times 100.
 */
fun cohortPosition(deviceId: String, modelName: String): Double {
    val digest = MessageDigest.getInstance("SHA-256").digest("$modelName/$deviceId".toByteArray(Charsets.UTF_8))
    val unsigned = BigInteger(1, digest.copyOfRange(0, 8))
    return unsigned.toDouble() / TWO_TO_64 * 100
}

private const val TWO_TO_64 = 18446744073709551616.0
