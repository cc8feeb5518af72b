package io.edgeops.app

import android.app.job.JobInfo
import android.app.job.JobParameters
import android.app.job.JobScheduler
import android.app.job.JobService
import android.content.ComponentName
import android.content.Context
import io.edgeops.device.UpdatePolicy

/**
 * Polls the OTA repository in the background: periodically, and once when the app starts, each time only when
 * JobScheduler sees the required network (unmetered unless the policy allows metered). The poll itself blocks on the
 * network and on the smoke test, so it runs on a thread of its own, never on the main thread the job starts on.
 */
class UpdateJobService : JobService() {
    override fun onStartJob(params: JobParameters): Boolean {
        val appStart = params.jobId == START_JOB_ID
        Thread({
            try {
                Updates.pollIfDue(applicationContext, appStart)
            } finally {
                jobFinished(params, false)
            }
        }, "edgeops-update").start()
        return true // still working, on that thread
    }

    // The poll ends by its own deadline (OtaConfig.pollDeadlineMs) and leaves the state consistent if the process
    // dies; the next period tries again, so no reschedule is asked for.
    override fun onStopJob(params: JobParameters): Boolean = false

    companion object {
        const val PERIODIC_JOB_ID = 1
        const val START_JOB_ID = 2

        fun schedule(context: Context, policy: UpdatePolicy = AppConfig.UPDATE_POLICY) {
            val scheduler = context.getSystemService(JobScheduler::class.java)
                ?: throw IllegalStateException("JobScheduler is unavailable")
            val service = ComponentName(context, UpdateJobService::class.java)
            val network = if (policy.allowMetered) JobInfo.NETWORK_TYPE_ANY else JobInfo.NETWORK_TYPE_UNMETERED
            // Scheduling the same id again would restart its period; keep a periodic job that is already there.
            if (scheduler.getPendingJob(PERIODIC_JOB_ID) == null) {
                scheduler.schedule(
                    JobInfo.Builder(PERIODIC_JOB_ID, service)
                        .setRequiredNetworkType(network)
                        .setPeriodic(policy.intervalMs, policy.earlyMs)
                        .setPersisted(true)
                        .build(),
                )
            }
            scheduler.schedule(JobInfo.Builder(START_JOB_ID, service).setRequiredNetworkType(network).build())
        }
    }
}
