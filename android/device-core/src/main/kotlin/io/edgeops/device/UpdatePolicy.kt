package io.edgeops.device

/** The network as the device sees it when a poll is due. */
data class NetworkState(val connected: Boolean, val unmetered: Boolean)

/** What the device remembers about its polls. Times are milliseconds on one clock (e.g. System.currentTimeMillis). */
data class UpdateHistory(
    /** When the last poll started, or null if none has yet. */
    val lastAttemptAtMs: Long?,
    /** Polls that failed (error or refusal) since the last one that succeeded. */
    val failuresInARow: Int,
    /** A poll, and so maybe a download, is running now. */
    val pollInFlight: Boolean,
)

sealed interface UpdateDecision {
    data object PollNow : UpdateDecision

    /** Not now: [why] for the status line; [notBeforeMs] when a poll could be due again, if time alone decides. */
    data class Wait(val why: String, val notBeforeMs: Long?) : UpdateDecision
}

/**
 * When the app asks the OTA repository for a new release: once at start and every [intervalMs] after that, on an
 * unmetered network unless [allowMetered], backing off exponentially after failures up to [maxBackoffMs], and never
 * while a poll is already running (two polls would race for the same download and state directory).
 */
data class UpdatePolicy(
    val intervalMs: Long = 15 * MINUTE_MS, // JobScheduler's shortest periodic interval
    val allowMetered: Boolean = false,
    val maxBackoffMs: Long = 6 * 60 * MINUTE_MS,
    /** How early a scheduled run may come and still poll: JobScheduler runs a periodic job anywhere in the last
     *  `flex` of its period, so without this a run a minute early would skip a whole period. */
    val earlyMs: Long = 5 * MINUTE_MS, // JobScheduler's shortest flex
) {
    init {
        require(intervalMs > 0) { "the poll interval must be positive, not $intervalMs ms" }
        require(maxBackoffMs >= intervalMs) { "the backoff cap ($maxBackoffMs ms) is below the interval ($intervalMs ms)" }
        require(earlyMs in 0 until intervalMs) { "earlyMs ($earlyMs) must be at least 0 and below the interval ($intervalMs ms)" }
    }

    /** The wait after a poll: the interval, doubled for each failure in a row, capped. */
    fun delayAfter(failuresInARow: Int): Long {
        require(failuresInARow >= 0) { "failures in a row cannot be negative: $failuresInARow" }
        var delay = intervalMs
        repeat(failuresInARow) {
            if (delay >= maxBackoffMs) return maxBackoffMs
            delay *= 2
        }
        return minOf(delay, maxBackoffMs)
    }

    /** Whether to poll now. [appStart]: the app has just started, which polls whatever the schedule says. */
    fun decide(nowMs: Long, history: UpdateHistory, network: NetworkState, appStart: Boolean = false): UpdateDecision {
        if (history.pollInFlight) return UpdateDecision.Wait("a poll is already running", null)
        if (!network.connected) return UpdateDecision.Wait("no network", null)
        if (!network.unmetered && !allowMetered) {
            return UpdateDecision.Wait("the network is metered; updates wait for an unmetered one", null)
        }
        val last = history.lastAttemptAtMs
        // A clock set back past the last poll would otherwise hold polls off until it catches up.
        if (appStart || last == null || nowMs < last) return UpdateDecision.PollNow
        val due = last + delayAfter(history.failuresInARow) - earlyMs
        if (nowMs >= due) return UpdateDecision.PollNow
        val why = if (history.failuresInARow == 0) {
            "next poll in ${(due - nowMs + 999) / 1000} s"
        } else {
            "backing off after ${history.failuresInARow} failed poll(s); next in ${(due - nowMs + 999) / 1000} s"
        }
        return UpdateDecision.Wait(why, due)
    }

    companion object {
        const val MINUTE_MS = 60_000L
    }
}
