package io.edgeops.device

import java.util.UUID

/**
 * The mat's GATT protocol (docs/ble-protocol.md), in one place; the Python side keeps the same values in
 * `Settings.ble` (src/edgeops/settings.py).
 */
object MatProtocol {
    /** The host writes commands here. */
    val TX: UUID = UUID.fromString("6e400002-c352-11e5-953d-0002a5d5c51b")

    /** The mat notifies frames here. */
    val RX: UUID = UUID.fromString("6e400003-c352-11e5-953d-0002a5d5c51b")

    /** The standard Client Characteristic Configuration descriptor: writing it turns notifications on. */
    val CLIENT_CHARACTERISTIC_CONFIG: UUID = UUID.fromString("00002902-0000-1000-8000-00805f9b34fb")

    /** Written once after connecting: starts the stream. */
    val START_COMMAND: ByteArray get() = byteArrayOf(0x01, 0xD0.toByte(), 0x01)

    /** Written every [POLL_INTERVAL_MS] while data is wanted: asks the board for frames. */
    val POLL_COMMAND: ByteArray get() = byteArrayOf(0x01, 0xC0.toByte(), 0x01)

    const val POLL_INTERVAL_MS = 100L

    /** As the original capture scripts wait after the start command, so the board has started before we listen. */
    const val START_DELAY_MS = 1_000L

    const val CONNECT_TIMEOUT_MS = 20_000L

    /** A session with no valid frame for this long has lost the mat. */
    const val SILENCE_TIMEOUT_MS = 10_000L

    /** Four chambers, one barometric sensor each. */
    const val CHAMBERS = 4
}
