package io.edgeops.device

/**
 * The model's input: the newest [length] frames, oldest first, as `edgeops.device.loop.FrameWindow` keeps them
 * (layout [batch = 1, frame, chamber]). A new model's window starts with the frames the old one held, so it can
 * classify from its first frame.
 */
class Window(val length: Int, carried: Iterable<FloatArray> = emptyList()) {
    init {
        require(length >= 1) { "a window needs at least one frame, not $length" }
    }

    private val frames = ArrayDeque<FloatArray>(length)

    init {
        carried.forEach(::add)
    }

    /** The frames held now, oldest first: what a window for the next model starts with. */
    val held: List<FloatArray> get() = frames.toList()

    /** The shape of [push]'s result, for a tensor. */
    fun shape(chambers: Int = MatProtocol.CHAMBERS): LongArray = longArrayOf(1, length.toLong(), chambers.toLong())

    /** Add a frame; the flattened model input once [length] frames are in, else null. */
    fun push(pressures: FloatArray): FloatArray? {
        add(pressures)
        if (frames.size < length) return null
        val input = FloatArray(frames.sumOf { it.size })
        var at = 0
        for (frame in frames) {
            frame.copyInto(input, at)
            at += frame.size
        }
        return input
    }

    /** The window a model taking [newLength] frames starts with. */
    fun resized(newLength: Int): Window = Window(newLength, frames)

    private fun add(pressures: FloatArray) {
        if (frames.size == length) frames.removeFirst()
        frames.addLast(pressures.copyOf())
    }
}
