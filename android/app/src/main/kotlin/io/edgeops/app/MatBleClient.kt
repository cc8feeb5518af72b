package io.edgeops.app

import android.annotation.SuppressLint
import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCallback
import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothManager
import android.bluetooth.BluetoothProfile
import android.bluetooth.BluetoothStatusCodes
import android.bluetooth.le.ScanCallback
import android.bluetooth.le.ScanFilter
import android.bluetooth.le.ScanResult
import android.bluetooth.le.ScanSettings
import android.content.Context
import android.os.Build
import android.os.Handler
import android.os.HandlerThread
import android.os.SystemClock
import io.edgeops.device.Decoded
import io.edgeops.device.FrameDecoder
import io.edgeops.device.FrameRefusal
import io.edgeops.device.MatProtocol

/**
 * One session with the mat (docs/ble-protocol.md) over the platform's BLE stack: scan for its address, connect,
 * write the start command, wait, subscribe to RX (the CCCD write), then write the poll command every 100 ms. Valid
 * frames go to [listener]; bad notifications are counted by reason and never end the session; silence, a lost
 * connection or a failed write does, and the client reconnects until [stop].
 *
 * All state lives on one HandlerThread: GATT callbacks arrive on binder threads and are posted to it, which also
 * keeps the GATT operations one at a time, as Android requires. Callers must hold BLUETOOTH_SCAN/BLUETOOTH_CONNECT
 * (Android 12+) or location (Android 8-11) before [start]; MainActivity asks for them.
 */
@SuppressLint("MissingPermission")
class MatBleClient(
    private val context: Context,
    private val address: String,
    private val listener: Listener,
    private val decoder: FrameDecoder = FrameDecoder(),
) {
    interface Listener {
        /** A valid frame: chamber pressures in Pa, and the wall-clock time it arrived (the frame's time). */
        fun onFrame(pressures: FloatArray, arrivedAtMs: Long)

        fun onRefused(reason: FrameRefusal, message: String)

        /** What the session is doing now, for the screen. */
        fun onState(state: String)

        /** The session ended for [message]; the client reconnects unless stopped. */
        fun onLost(message: String)
    }

    private val thread = HandlerThread("mat-ble").apply { start() }
    private val handler = Handler(thread.looper)
    private val bluetooth = context.getSystemService(BluetoothManager::class.java)
        ?: throw IllegalStateException("this device has no Bluetooth")

    private var running = false
    private var gatt: BluetoothGatt? = null
    private var tx: BluetoothGattCharacteristic? = null
    private var writeInFlight = false
    private var polling = false
    private var lastValidAt = 0L
    private var scanning: ScanCallback? = null

    fun start() = handler.post {
        running = true
        connect()
    }

    fun stop() = handler.post {
        running = false
        disconnect()
        thread.quitSafely()
    }

    private fun connect() {
        val adapter = bluetooth.adapter
        if (adapter == null || !adapter.isEnabled) return lost("Bluetooth is off; turn it on to read the mat")
        val scanner = adapter.bluetoothLeScanner ?: return lost("Bluetooth LE scanning is unavailable")
        listener.onState("looking for the mat at $address")
        val callback = object : ScanCallback() {
            override fun onScanResult(callbackType: Int, result: ScanResult) {
                handler.post { found(result.device) }
            }

            override fun onScanFailed(errorCode: Int) {
                handler.post { lost("scanning for the mat failed (error $errorCode)") }
            }
        }
        scanning = callback
        val filter = ScanFilter.Builder().setDeviceAddress(address).build()
        val settings = ScanSettings.Builder().setScanMode(ScanSettings.SCAN_MODE_LOW_LATENCY).build()
        scanner.startScan(listOf(filter), settings, callback)
        handler.postDelayed(connectTimeout, MatProtocol.CONNECT_TIMEOUT_MS)
    }

    private val connectTimeout = Runnable {
        if (gatt == null || tx == null) {
            lost("could not connect to the mat at $address within ${MatProtocol.CONNECT_TIMEOUT_MS / 1000} s; is it powered and in range?")
        }
    }

    private fun found(device: BluetoothDevice) {
        val scan = scanning ?: return // a late result after we stopped scanning
        bluetooth.adapter?.bluetoothLeScanner?.stopScan(scan)
        scanning = null
        listener.onState("connecting to ${device.address}")
        gatt = device.connectGatt(context, false, callback, BluetoothDevice.TRANSPORT_LE)
    }

    private val callback = object : BluetoothGattCallback() {
        override fun onConnectionStateChange(gatt: BluetoothGatt, status: Int, newState: Int) {
            handler.post {
                when {
                    newState == BluetoothProfile.STATE_CONNECTED && status == BluetoothGatt.GATT_SUCCESS -> {
                        listener.onState("connected; discovering services")
                        gatt.discoverServices()
                    }
                    newState == BluetoothProfile.STATE_DISCONNECTED -> lost("the mat at $address disconnected (status $status)")
                    else -> lost("connection to the mat at $address failed (status $status)")
                }
            }
        }

        override fun onServicesDiscovered(gatt: BluetoothGatt, status: Int) {
            handler.post { startStream(gatt, status) }
        }

        override fun onCharacteristicWrite(gatt: BluetoothGatt, characteristic: BluetoothGattCharacteristic, status: Int) {
            handler.post {
                writeInFlight = false
                if (status != BluetoothGatt.GATT_SUCCESS) lost("lost the mat at $address: a command write failed (status $status)")
            }
        }

        override fun onDescriptorWrite(gatt: BluetoothGatt, descriptor: BluetoothGattDescriptor, status: Int) {
            handler.post {
                writeInFlight = false
                if (status != BluetoothGatt.GATT_SUCCESS) {
                    lost("the mat at $address refused notifications (status $status)")
                } else {
                    startPolling()
                }
            }
        }

        // Android 13+ hands over the value; older versions leave it in the characteristic, which may change
        // before we read it, so copy it at once.
        override fun onCharacteristicChanged(gatt: BluetoothGatt, characteristic: BluetoothGattCharacteristic, value: ByteArray) {
            notified(characteristic, value.copyOf())
        }

        @Deprecated("Android 12 and older")
        @Suppress("DEPRECATION")
        override fun onCharacteristicChanged(gatt: BluetoothGatt, characteristic: BluetoothGattCharacteristic) {
            notified(characteristic, characteristic.value?.copyOf() ?: ByteArray(0))
        }
    }

    private fun notified(characteristic: BluetoothGattCharacteristic, payload: ByteArray) {
        if (characteristic.uuid != MatProtocol.RX) return
        val arrivedAt = System.currentTimeMillis()
        handler.post {
            when (val decoded = decoder.decode(payload)) {
                is Decoded.Frame -> {
                    lastValidAt = SystemClock.elapsedRealtime()
                    listener.onFrame(decoded.pressures, arrivedAt)
                }
                is Decoded.Refused -> listener.onRefused(decoded.reason, decoded.message)
            }
        }
    }

    private fun startStream(gatt: BluetoothGatt, status: Int) {
        if (status != BluetoothGatt.GATT_SUCCESS) return lost("service discovery on the mat at $address failed (status $status)")
        val characteristics = gatt.services.flatMap { it.characteristics }
        val tx = characteristics.firstOrNull { it.uuid == MatProtocol.TX }
        val rx = characteristics.firstOrNull { it.uuid == MatProtocol.RX }
        if (tx == null || rx == null) {
            val missing = listOfNotNull(MatProtocol.TX.takeIf { tx == null }, MatProtocol.RX.takeIf { rx == null })
            return lost("the device at $address lacks characteristic(s) ${missing.joinToString()}; is it the mat?")
        }
        this.tx = tx
        listener.onState("starting the stream")
        if (!write(MatProtocol.START_COMMAND)) return
        // As the capture scripts do: let the board start before anyone listens.
        handler.postDelayed({ subscribe(gatt, rx) }, MatProtocol.START_DELAY_MS)
    }

    @Suppress("DEPRECATION")
    private fun subscribe(gatt: BluetoothGatt, rx: BluetoothGattCharacteristic) {
        if (this.gatt !== gatt) return // lost in the meantime
        val cccd = rx.getDescriptor(MatProtocol.CLIENT_CHARACTERISTIC_CONFIG)
        if (!gatt.setCharacteristicNotification(rx, true) || cccd == null) {
            return lost("could not subscribe to the mat's RX characteristic")
        }
        val enable = BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE
        val started = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
            gatt.writeDescriptor(cccd, enable) == BluetoothStatusCodes.SUCCESS
        } else {
            cccd.value = enable
            gatt.writeDescriptor(cccd)
        }
        if (!started) return lost("could not subscribe to the mat's RX characteristic (descriptor write refused)")
        writeInFlight = true
    }

    private fun startPolling() {
        polling = true
        lastValidAt = SystemClock.elapsedRealtime()
        handler.removeCallbacks(connectTimeout)
        listener.onState("streaming from $address")
        handler.post(poll)
    }

    private val poll = object : Runnable {
        override fun run() {
            if (!polling) return
            val silentFor = SystemClock.elapsedRealtime() - lastValidAt
            if (silentFor >= MatProtocol.SILENCE_TIMEOUT_MS) {
                return lost("no valid frame from the mat at $address for ${silentFor / 1000} s; is it powered, in range and streaming?")
            }
            // One GATT operation at a time: while the last poll awaits its acknowledgement, skip this one (the
            // acknowledgement paces us to the board, as the Python recorder's write-with-response does).
            if (!writeInFlight && !write(MatProtocol.POLL_COMMAND)) return
            handler.postDelayed(this, MatProtocol.POLL_INTERVAL_MS)
        }
    }

    @Suppress("DEPRECATION")
    private fun write(command: ByteArray): Boolean {
        val gatt = gatt ?: return false
        val tx = tx ?: return false
        // With response where the mat offers it, as the Python client does.
        val type = if (tx.properties and BluetoothGattCharacteristic.PROPERTY_WRITE != 0) {
            BluetoothGattCharacteristic.WRITE_TYPE_DEFAULT
        } else {
            BluetoothGattCharacteristic.WRITE_TYPE_NO_RESPONSE
        }
        val accepted = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
            gatt.writeCharacteristic(tx, command, type) == BluetoothStatusCodes.SUCCESS
        } else {
            tx.writeType = type
            tx.value = command
            gatt.writeCharacteristic(tx)
        }
        if (!accepted) {
            lost("lost the mat at $address: the command write was refused")
            return false
        }
        writeInFlight = type == BluetoothGattCharacteristic.WRITE_TYPE_DEFAULT
        return true
    }

    private fun lost(message: String) {
        disconnect()
        listener.onLost(message)
        if (running) handler.postDelayed({ if (running && gatt == null && scanning == null) connect() }, RECONNECT_DELAY_MS)
    }

    private fun disconnect() {
        polling = false
        writeInFlight = false
        handler.removeCallbacks(poll)
        handler.removeCallbacks(connectTimeout)
        scanning?.let { bluetooth.adapter?.bluetoothLeScanner?.stopScan(it) }
        scanning = null
        tx = null
        gatt?.close() // close, not only disconnect: frees the client interface, of which Android has few
        gatt = null
    }

    private companion object {
        const val RECONNECT_DELAY_MS = 5_000L
    }
}
