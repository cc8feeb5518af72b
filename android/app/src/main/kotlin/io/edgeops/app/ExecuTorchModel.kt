package io.edgeops.app

import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/** A .pte program loaded with ExecuTorch's Module; the only class that touches ExecuTorch's API. */
class ExecuTorchModel private constructor(private val module: Module, val file: File) : AutoCloseable {
    /** Runs the program's forward method on one float tensor and returns its first output, flattened. */
    fun run(input: FloatArray, shape: LongArray): FloatArray {
        val outputs = module.forward(EValue.from(Tensor.fromBlob(input, shape)))
        check(outputs.isNotEmpty()) { "${file.name}: forward returned no output" }
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()

    companion object {
        /** Loads [file]; ExecuTorch's native library comes with the AAR (arm64-v8a and x86_64). */
        fun load(file: File): ExecuTorchModel {
            if (!file.isFile) throw ModelLoadError("no model file at $file")
            val module = try {
                Module.load(file.absolutePath)
            } catch (error: RuntimeException) {
                throw ModelLoadError("ExecuTorch could not load ${file.name}: ${error.message ?: error}", error)
            }
            return ExecuTorchModel(module, file)
        }
    }
}

class ModelLoadError(message: String, cause: Throwable? = null) : Exception(message, cause)
