package io.edgeops.app

import io.edgeops.device.reproductionError
import io.edgeops.ota.ModelCheck
import io.edgeops.ota.Release
import java.io.File

/**
 * The smoke test a downloaded, signature-checked model must pass before OtaClient installs it, as the Python agent's
 * (src/edgeops/device/smoke.py): the release's reference input must give its reference output to within [tolerance].
 * A model this device cannot load or run fails it too: installing it would only replace a model that works.
 */
class ExecuTorchSmokeTest(private val tolerance: Double = AppConfig.SMOKE_TOLERANCE) : ModelCheck {
    override fun check(model: File, release: Release) {
        val expectedInput = release.inputShape.fold(1L) { size, dim -> size * dim }
        if (release.referenceInput.size.toLong() != expectedInput) {
            throw SmokeTestError(
                "release v${release.version}: reference input holds ${release.referenceInput.size} values, " +
                    "its input shape ${release.inputShape} needs $expectedInput",
            )
        }
        val output = ExecuTorchModel.load(model).use { program ->
            program.run(release.referenceInput, release.inputShape.map(Int::toLong).toLongArray())
        }
        val difference = try {
            reproductionError(output, release.referenceOutput)
        } catch (error: IllegalArgumentException) {
            throw SmokeTestError("release v${release.version}: ${error.message}")
        }
        if (difference > tolerance) {
            throw SmokeTestError(
                "release v${release.version}: output on the reference input differs from the released output by " +
                    "%.4g (tolerance %s)".format(difference, tolerance),
            )
        }
    }
}

class SmokeTestError(message: String) : Exception(message)
