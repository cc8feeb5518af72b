package io.edgeops.app

import android.Manifest
import android.app.Activity
import android.content.pm.PackageManager
import android.os.Build
import android.os.Bundle
import android.os.Handler
import android.os.HandlerThread
import android.view.ViewGroup
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import io.edgeops.device.FrameRefusal
import io.edgeops.ota.Outcome
import java.text.DateFormat
import java.util.Date
import java.util.EnumMap

/**
 * The one screen: the live prediction, the model running, the update status, and what failed (the smoke test of a
 * new release, loading a model, inference). Frames come from [MatBleClient]; the model runs on a thread of its own,
 * never the main thread; a newly installed model takes over with the frames the old one held.
 */
class MainActivity : Activity(), MatBleClient.Listener, Updates.Listener {
    private lateinit var predictionView: TextView
    private lateinit var modelView: TextView
    private lateinit var updateView: TextView
    private lateinit var matView: TextView
    private lateinit var failuresView: TextView

    private val inference = HandlerThread("edgeops-inference").apply { start() }
    private val inferenceHandler = Handler(inference.looper)
    private var classifier: Classifier? = null // touched on the inference thread only
    private var mat: MatBleClient? = null
    private val refused = EnumMap<FrameRefusal, Int>(FrameRefusal::class.java)
    private val failures = linkedMapOf<String, String>() // kind → newest message, main thread only

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(layout())
        Updates.addListener(this)
        Updates.lastReport?.let(::showUpdate)
        UpdateJobService.schedule(this)
        inferenceHandler.post(::loadRunningModel)
        if (missingPermissions().isEmpty()) startMat() else requestPermissions(missingPermissions(), PERMISSIONS_REQUEST)
    }

    override fun onDestroy() {
        Updates.removeListener(this)
        mat?.stop()
        inferenceHandler.post {
            classifier?.close()
            classifier = null
        }
        inference.quitSafely()
        super.onDestroy()
    }

    override fun onRequestPermissionsResult(requestCode: Int, permissions: Array<out String>, grantResults: IntArray) {
        if (requestCode != PERMISSIONS_REQUEST) return
        if (grantResults.isNotEmpty() && grantResults.all { it == PackageManager.PERMISSION_GRANTED }) {
            startMat()
        } else {
            matView.text = "Bluetooth permission denied: the app cannot read the mat"
        }
    }

    // The mat: these arrive on the BLE client's thread.

    override fun onFrame(pressures: FloatArray, arrivedAtMs: Long) {
        inferenceHandler.post { classify(pressures, arrivedAtMs) }
    }

    override fun onRefused(reason: FrameRefusal, message: String) {
        runOnUiThread {
            refused.merge(reason, 1, Int::plus)
            failures["bad frames"] = refused.entries.joinToString { (r, n) -> "$n ${r.wire}" } + " (latest: $message)"
            showFailures()
        }
    }

    override fun onState(state: String) = runOnUiThread { matView.text = "Mat: $state" }

    override fun onLost(message: String) = runOnUiThread { matView.text = "Mat: $message; reconnecting" }

    // Updates: arrive on the job's thread.

    override fun onUpdate(report: UpdateReport) {
        runOnUiThread { showUpdate(report) }
        if (report.outcome == Outcome.INSTALLED && report.waiting == null) inferenceHandler.post(::loadRunningModel)
    }

    private fun showUpdate(report: UpdateReport) {
        val at = DateFormat.getTimeInstance().format(Date(report.atMs))
        val outcome = report.outcome?.name?.lowercase() ?: "not polled yet"
        updateView.text = buildString {
            append("Update: $outcome at $at: ${report.message}")
            report.waiting?.let { append("\nNot polling now: $it") }
        }
        if (report.outcome == Outcome.REFUSED) {
            val kind = if (report.reason == "smoke-test") "smoke test" else "update (${report.reason})"
            failures[kind] = report.message
            showFailures()
        }
    }

    // The model: on the inference thread.

    private fun loadRunningModel() {
        val running = try {
            Updates.runningModel(this)
        } catch (error: Exception) {
            return fail("load", "cannot read the installed model: ${error.message ?: error}")
        }
        if (running == null) {
            runOnUiThread { modelView.text = "Model: none installed yet; waiting for the first update" }
            return
        }
        val (model, file) = running
        val old = classifier
        if (old != null && old.model.sha256 == model.sha256) return
        classifier = try {
            Classifier.load(model, file, old?.held.orEmpty())
        } catch (error: Exception) {
            // Keep the model that works rather than stop classifying.
            return fail("load", "v${model.version} could not be loaded: ${error.message ?: error}")
        }
        old?.close()
        runOnUiThread {
            modelView.text = "Model: v${model.version} (${model.channel}), ${model.sha256.take(12)}, installed ${model.installedAt}"
        }
    }

    private fun classify(pressures: FloatArray, arrivedAtMs: Long) {
        val current = classifier ?: return // nothing verified to run yet
        val prediction = try {
            current.feed(pressures, arrivedAtMs) ?: return
        } catch (error: InferenceError) {
            return fail("inference", error.message ?: error.toString())
        }
        runOnUiThread {
            val at = DateFormat.getTimeInstance().format(Date(prediction.atMs))
            predictionView.text = "${prediction.label}\n(v${prediction.version}, $at)"
        }
    }

    private fun fail(kind: String, message: String) = runOnUiThread {
        failures[kind] = message
        showFailures()
    }

    private fun showFailures() {
        failuresView.text = if (failures.isEmpty()) "" else "Failures:\n" + failures.entries.joinToString("\n") { (k, m) -> "• $k: $m" }
    }

    private fun missingPermissions(): Array<String> {
        val needed = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
            arrayOf(Manifest.permission.BLUETOOTH_SCAN, Manifest.permission.BLUETOOTH_CONNECT)
        } else {
            arrayOf(Manifest.permission.ACCESS_FINE_LOCATION)
        }
        return needed.filter { checkSelfPermission(it) != PackageManager.PERMISSION_GRANTED }.toTypedArray()
    }

    private fun startMat() {
        if (mat != null) return
        mat = try {
            MatBleClient(this, AppConfig.MAT_ADDRESS, this).also { it.start() }
        } catch (error: IllegalStateException) {
            matView.text = "Mat: ${error.message}"
            null
        }
    }

    private fun layout(): ScrollView {
        fun text(size: Float) = TextView(this).apply {
            textSize = size
            setPadding(0, 0, 0, 24)
        }
        predictionView = text(32f).apply { text = "waiting for frames" }
        modelView = text(16f)
        updateView = text(16f)
        matView = text(16f)
        failuresView = text(14f)
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(48, 48, 48, 48)
            listOf(predictionView, modelView, updateView, matView, failuresView).forEach(::addView)
        }
        return ScrollView(this).apply {
            addView(column, ViewGroup.LayoutParams(ViewGroup.LayoutParams.MATCH_PARENT, ViewGroup.LayoutParams.WRAP_CONTENT))
        }
    }

    private companion object {
        const val PERMISSIONS_REQUEST = 1
    }
}
