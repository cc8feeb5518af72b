package io.edgeops.app

import io.edgeops.device.Window
import io.edgeops.device.labelFor
import io.edgeops.ota.InstalledModel
import java.io.File

data class Prediction(val version: Int, val label: String, val logits: FloatArray, val atMs: Long)

/**
 * Runs the installed model on a sliding window of frames, as the Python agent's Predictor
 * (src/edgeops/device/loop.py): one prediction per frame once the window is full. Not thread-safe: feed it from one
 * thread.
 */
class Classifier private constructor(val model: InstalledModel, private val program: ExecuTorchModel, carried: List<FloatArray>) :
    AutoCloseable {
    init {
        require(model.inputShape.size == 3) { "v${model.version}: input shape ${model.inputShape} is not [batch, frame, chamber]" }
    }

    private val window = Window(model.inputShape[1], carried)
    private val shape = model.inputShape.map(Int::toLong).toLongArray()

    /** The frames held now: a classifier for the next model starts with them. */
    val held: List<FloatArray> get() = window.held

    fun feed(pressures: FloatArray, atMs: Long): Prediction? {
        val input = window.push(pressures) ?: return null
        val logits = try {
            program.run(input, shape)
        } catch (error: RuntimeException) {
            throw InferenceError("v${model.version} failed on a window: ${error.message ?: error}", error)
        }
        val label = try {
            labelFor(logits, model.labels)
        } catch (error: IllegalArgumentException) {
            throw InferenceError("v${model.version}: ${error.message}", error)
        }
        return Prediction(model.version, label, logits, atMs)
    }

    override fun close() = program.close()

    companion object {
        /** Loads [model] from [file]; frames [carried] over from the previous model fill its window first. */
        fun load(model: InstalledModel, file: File, carried: List<FloatArray> = emptyList()): Classifier =
            Classifier(model, ExecuTorchModel.load(file), carried)
    }
}

class InferenceError(message: String, cause: Throwable? = null) : Exception(message, cause)
