package io.edgeops.device

import io.edgeops.device.UpdatePolicy.Companion.MINUTE_MS
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs

class UpdatePolicyTest {
    private val policy = UpdatePolicy()
    private val wifi = NetworkState(connected = true, unmetered = true)
    private val cellular = NetworkState(connected = true, unmetered = false)
    private val t0 = 1_700_000_000_000L

    private fun history(lastAt: Long? = t0, failures: Int = 0, inFlight: Boolean = false) =
        UpdateHistory(lastAttemptAtMs = lastAt, failuresInARow = failures, pollInFlight = inFlight)

    @Test
    fun `polls at start and then every interval`() {
        assertEquals(UpdateDecision.PollNow, policy.decide(t0, history(lastAt = null), wifi))
        assertEquals(UpdateDecision.PollNow, policy.decide(t0 + 1, history(), wifi, appStart = true))
        // Due 15 minutes on, but a scheduled run up to 5 minutes early (JobScheduler's flex) polls too.
        val wait = assertIs<UpdateDecision.Wait>(policy.decide(t0 + 9 * MINUTE_MS, history(), wifi))
        assertEquals(t0 + 10 * MINUTE_MS, wait.notBeforeMs)
        assertEquals("next poll in 60 s", wait.why)
        assertEquals(UpdateDecision.PollNow, policy.decide(t0 + 10 * MINUTE_MS, history(), wifi))
        val exact = policy.copy(earlyMs = 0)
        assertIs<UpdateDecision.Wait>(exact.decide(t0 + 15 * MINUTE_MS - 1, history(), wifi))
        assertEquals(UpdateDecision.PollNow, exact.decide(t0 + 15 * MINUTE_MS, history(), wifi))
    }

    @Test
    fun `waits for an unmetered network unless allowed`() {
        val wait = assertIs<UpdateDecision.Wait>(policy.decide(t0, history(lastAt = null), cellular, appStart = true))
        assertEquals("the network is metered; updates wait for an unmetered one", wait.why)
        assertEquals(UpdateDecision.PollNow, policy.copy(allowMetered = true).decide(t0, history(lastAt = null), cellular))
        assertIs<UpdateDecision.Wait>(policy.decide(t0, history(lastAt = null), NetworkState(false, false)))
    }

    @Test
    fun `never polls while a poll is running, not even at start`() {
        val wait = assertIs<UpdateDecision.Wait>(policy.decide(t0 + 60 * MINUTE_MS, history(inFlight = true), wifi, appStart = true))
        assertEquals("a poll is already running", wait.why)
    }

    @Test
    fun `backs off exponentially after failures, up to the cap`() {
        assertEquals(
            listOf(15L, 30, 60, 120, 240, 360, 360).map { it * MINUTE_MS },
            (0..6).map(policy::delayAfter),
        )
        assertEquals(policy.maxBackoffMs, policy.delayAfter(10_000)) // no overflow however long it fails
        val wait = assertIs<UpdateDecision.Wait>(policy.decide(t0 + 20 * MINUTE_MS, history(failures = 1), wifi))
        assertEquals(t0 + 25 * MINUTE_MS, wait.notBeforeMs)
        assertEquals("backing off after 1 failed poll(s); next in 300 s", wait.why)
        assertEquals(UpdateDecision.PollNow, policy.decide(t0 + 25 * MINUTE_MS, history(failures = 1), wifi))
    }

    @Test
    fun `refuses settings that make no sense`() {
        assertFailsWith<IllegalArgumentException> { UpdatePolicy(intervalMs = 0) }
        assertFailsWith<IllegalArgumentException> { UpdatePolicy(maxBackoffMs = MINUTE_MS) }
        assertFailsWith<IllegalArgumentException> { UpdatePolicy(earlyMs = 15 * MINUTE_MS) }
    }

    @Test
    fun `a clock set back does not hold polls off`() {
        assertEquals(UpdateDecision.PollNow, policy.decide(t0 - 24 * 60 * MINUTE_MS, history(), wifi))
    }
}
