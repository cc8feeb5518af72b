package io.edgeops.device

/** The label of the highest logit, the first one on a tie, as `edgeops.device.loop.label_for` (torch.argmax) picks. */
fun labelFor(logits: FloatArray, labels: List<String>): String {
    require(logits.size == labels.size) {
        "the model gave ${logits.size} logits but its release names ${labels.size} labels (${labels.joinToString()})"
    }
    require(logits.all { it.isFinite() }) { "the model gave non-finite logits: ${logits.contentToString()}" }
    var best = 0
    for (index in 1 until logits.size) {
        if (logits[index] > logits[best]) best = index
    }
    return labels[best]
}

/**
 * How far a model's output is from the release's reference output: the largest absolute difference, as
 * `edgeops.runtime.reproduction_error` measures it for the Python agent's smoke test.
 */
fun reproductionError(output: FloatArray, reference: FloatArray): Double {
    require(output.size == reference.size) {
        "the model gave ${output.size} outputs on the reference input; the release recorded ${reference.size}"
    }
    var largest = 0.0
    for (index in output.indices) {
        val difference = Math.abs(output[index].toDouble() - reference[index].toDouble())
        // NaN compares false both ways: a model that outputs NaN must not pass as close.
        if (difference.isNaN()) return Double.POSITIVE_INFINITY
        largest = maxOf(largest, difference)
    }
    return largest
}
