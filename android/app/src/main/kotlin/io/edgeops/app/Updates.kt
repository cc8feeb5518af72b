package io.edgeops.app

import android.content.Context
import android.net.ConnectivityManager
import android.net.NetworkCapabilities
import io.edgeops.device.NetworkState
import io.edgeops.device.UpdateDecision
import io.edgeops.device.UpdateHistory
import io.edgeops.device.UpdatePolicy
import io.edgeops.ota.InstalledModel
import io.edgeops.ota.OtaClient
import io.edgeops.ota.OtaConfig
import io.edgeops.ota.Outcome
import java.io.File
import java.io.FileNotFoundException
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.atomic.AtomicBoolean

/** What the last update attempt did, for the screen. [reason] is a shared refusal reason, e.g. "smoke-test". */
data class UpdateReport(
    val outcome: Outcome?,
    val message: String,
    val reason: String? = null,
    val installedVersion: Int? = null,
    val atMs: Long = System.currentTimeMillis(),
    /** Why a later check did not poll (schedule, network, backoff), or null if this report is that check's. */
    val waiting: String? = null,
)

/**
 * The app's one OtaClient and its poll schedule, shared by UpdateJobService (which polls) and MainActivity (which
 * shows the outcome and swaps models). One poll at a time per process: the policy refuses a second while one runs.
 */
object Updates {
    fun interface Listener {
        fun onUpdate(report: UpdateReport)
    }

    private const val PREFERENCES = "updates"
    private const val LAST_ATTEMPT_AT = "last_attempt_at_ms"
    private const val FAILURES_IN_A_ROW = "failures_in_a_row"

    private val inFlight = AtomicBoolean(false)
    private val listeners = CopyOnWriteArrayList<Listener>()
    private var client: OtaClient? = null

    @Volatile
    var lastReport: UpdateReport? = null
        private set

    fun addListener(listener: Listener) = listeners.add(listener)

    fun removeListener(listener: Listener) = listeners.remove(listener)

    @Synchronized
    fun client(context: Context): OtaClient = client ?: OtaClient(
        OtaConfig(
            repositoryUrl = AppConfig.REPOSITORY_URL,
            modelName = AppConfig.MODEL_NAME,
            channel = AppConfig.CHANNEL,
            track = AppConfig.TRACK,
            trustedRoot = trustedRoot(context.applicationContext),
            stateDir = File(context.applicationContext.filesDir, "ota"),
        ),
        ExecuTorchSmokeTest(AppConfig.SMOKE_TOLERANCE),
    ).also { client = it }

    /** The model to run and its file: what status.json names as running, else the current one, if its file is there. */
    fun runningModel(context: Context): Pair<InstalledModel, File>? {
        val ota = client(context)
        val model = ota.status().installed ?: ota.installed().current ?: return null
        return ota.modelFile(model).takeIf(File::isFile)?.let { model to it }
    }

    /** Called on a background thread (the job's): poll if the policy says so, and tell the listeners what happened. */
    fun pollIfDue(context: Context, appStart: Boolean, policy: UpdatePolicy = AppConfig.UPDATE_POLICY): UpdateReport {
        val preferences = context.getSharedPreferences(PREFERENCES, Context.MODE_PRIVATE)
        val now = System.currentTimeMillis()
        val history = UpdateHistory(
            lastAttemptAtMs = preferences.getLong(LAST_ATTEMPT_AT, -1).takeIf { it >= 0 },
            failuresInARow = preferences.getInt(FAILURES_IN_A_ROW, 0),
            pollInFlight = inFlight.get(),
        )
        val decision = policy.decide(now, history, network(context), appStart)
        if (decision is UpdateDecision.Wait || !inFlight.compareAndSet(false, true)) {
            val why = (decision as? UpdateDecision.Wait)?.why ?: "a poll is already running"
            return publish((lastReport ?: UpdateReport(null, "no poll yet")).copy(waiting = why))
        }
        try {
            preferences.edit().putLong(LAST_ATTEMPT_AT, now).apply()
            val report = try {
                val result = client(context).poll()
                UpdateReport(result.outcome, result.message, result.reason, result.installed?.version)
            } catch (error: Exception) { // poll() reports refusals itself; this is the app's own failure, e.g. no root
                UpdateReport(Outcome.REFUSED, error.message ?: error.toString(), "other")
            }
            val failures = if (report.outcome == Outcome.REFUSED) history.failuresInARow + 1 else 0
            preferences.edit().putInt(FAILURES_IN_A_ROW, failures).apply()
            return publish(report)
        } finally {
            inFlight.set(false)
        }
    }

    private fun publish(report: UpdateReport): UpdateReport {
        lastReport = report
        listeners.forEach { it.onUpdate(report) }
        return report
    }

    private fun network(context: Context): NetworkState {
        val connectivity = context.getSystemService(ConnectivityManager::class.java) ?: return NetworkState(false, false)
        val capabilities = connectivity.getNetworkCapabilities(connectivity.activeNetwork) ?: return NetworkState(false, false)
        return NetworkState(
            connected = capabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET),
            unmetered = capabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_NOT_METERED),
        )
    }

    /** The root.json shipped in the APK, as a file for OtaConfig; TUF keeps newer roots in its own metadata. */
    private fun trustedRoot(context: Context): File {
        val file = File(context.filesDir, "trusted-root.json")
        try {
            context.assets.open(AppConfig.TRUSTED_ROOT_ASSET).use { input -> file.outputStream().use(input::copyTo) }
        } catch (error: FileNotFoundException) {
            throw IllegalStateException(
                "no trusted root in the app: put the publisher's root.json at app/src/main/assets/" +
                    "${AppConfig.TRUSTED_ROOT_ASSET} and rebuild",
                error,
            )
        }
        return file
    }
}
