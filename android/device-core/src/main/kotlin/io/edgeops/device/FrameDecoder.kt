package io.edgeops.device

import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Why a notification is not a frame; [wire] is the counter name the Python recorder and agent use. */
enum class FrameRefusal(val wire: String) {
    SHORT("short"),
    NON_FINITE("non_finite"),
    OUT_OF_RANGE("out_of_range"),
}

sealed interface Decoded {
    /** The chamber pressures in Pa, in payload order. */
    class Frame(val pressures: FloatArray) : Decoded

    class Refused(val reason: FrameRefusal, val message: String) : Decoded
}

/**
 * Turns a notification into a frame, refusing what ingest would refuse, exactly as
 * `edgeops.device.ble.decode` does (checked on shared vectors: src/test/resources/vectors/frames.json).
 */
class FrameDecoder(val minPa: Double = DEFAULT_MIN_PA, val maxPa: Double = DEFAULT_MAX_PA) {
    fun decode(payload: ByteArray): Decoded {
        if (payload.size < FRAME_BYTES) {
            return Decoded.Refused(
                FrameRefusal.SHORT,
                "notification of ${payload.size} bytes; a frame needs at least $FRAME_BYTES",
            )
        }
        val buffer = ByteBuffer.wrap(payload, HEADER_BYTES, FRAME_BYTES - HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN)
        val pressures = FloatArray(MatProtocol.CHAMBERS) { buffer.getFloat() }
        // Value by value, as Python does: the first bad value decides the reason.
        for (value in pressures) {
            if (!value.isFinite()) {
                return Decoded.Refused(
                    FrameRefusal.NON_FINITE,
                    "frame holds $value, not a finite pressure: ${pressures.contentToString()}",
                )
            }
            val pa = value.toDouble()
            if (pa < minPa || pa > maxPa) {
                // A unit slip is the likeliest cause of a plausible value a thousand times too small.
                val hint = if (pa * 1000 in minPa..maxPa) " ($KPA_HINT; the mat reports Pa)" else ""
                return Decoded.Refused(
                    FrameRefusal.OUT_OF_RANGE,
                    "frame holds $value Pa, outside the plausible $minPa to $maxPa Pa$hint",
                )
            }
        }
        return Decoded.Frame(pressures)
    }

    companion object {
        /** The firmware's layout, not a setting: a header byte, then four little-endian float32. */
        const val HEADER_BYTES = 1
        const val FRAME_BYTES = HEADER_BYTES + MatProtocol.CHAMBERS * 4

        /** Ingest's plausible range (MatDataConfig.min_pa / max_pa). */
        const val DEFAULT_MIN_PA = 80_000.0
        const val DEFAULT_MAX_PA = 120_000.0
        const val KPA_HINT = "looks like kPa"
    }
}
