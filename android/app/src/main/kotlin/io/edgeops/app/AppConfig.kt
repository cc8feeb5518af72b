package io.edgeops.app

import io.edgeops.device.UpdatePolicy

/** Everything about where the app gets its model and which mat it reads, in one place. */
object AppConfig {
    /**
     * The OTA repository of the model: TUF metadata under `<url>metadata/`, targets under `<url>`. 10.0.2.2 is the
     * host machine seen from the Android emulator, where `make up` serves the OTA bucket on port 8333.
     */
    const val REPOSITORY_URL = "http://10.0.2.2:8333/ota/mat-occupancy/"
    const val MODEL_NAME = "mat-occupancy"
    const val CHANNEL = "stable"
    const val TRACK = "mat"

    /** The publisher's root.json, shipped in the APK's assets: the only keys the app trusts at first start. */
    const val TRUSTED_ROOT_ASSET = "root.json"

    /** The mat's Bluetooth address (as for `edgeops record --address`). */
    const val MAT_ADDRESS = "AA:BB:CC:DD:EE:FF"

    /** Largest allowed difference between a new model's output on the release's reference input and the output
     *  recorded at release: the Python agent's `smoke_tolerance` (INT8 kernels differ a little across CPUs). */
    const val SMOKE_TOLERANCE = 0.25

    /** Poll every 15 minutes (JobScheduler's shortest period), only on unmetered networks, back off to 6 hours. */
    val UPDATE_POLICY = UpdatePolicy()
}
