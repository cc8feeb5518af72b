package io.edgeops.ota.tuf

import java.io.File
import java.io.IOException
import java.io.OutputStream
import java.io.ByteArrayOutputStream
import java.net.HttpURLConnection
import java.net.SocketTimeoutException
import java.net.URL

/**
 * HTTP GETs with java.net.HttpURLConnection (Android has it; java.net.http does not exist there).
 * Every download has a maximum length and is cut the moment it passes it (endless data), the whole poll has a
 * deadline (a trickling server cannot hold it), and what each poll costs is counted.
 */
class Fetcher(
    private val socketTimeoutMs: Int = 10_000,
    /** System.nanoTime() after which no more bytes are read; Long.MAX_VALUE for none. */
    private val deadlineNanos: Long = Long.MAX_VALUE,
) {
    var requests = 0; private set
    var metadataBytes = 0L; private set
    var targetBytes = 0L; private set

    fun bytes(url: String, maxLength: Long, metadata: Boolean): ByteArray =
        ByteArrayOutputStream().also { fetch(url, maxLength, metadata, it) }.toByteArray()

    fun toFile(url: String, maxLength: Long, file: File) {
        file.outputStream().use { out ->
            fetch(url, maxLength, false, out)
            out.flush()
            out.fd.sync()
        }
    }

    private fun checkDeadline(url: String) {
        if (System.nanoTime() - deadlineNanos > 0 && deadlineNanos != Long.MAX_VALUE) {
            throw DeadlineError("the poll deadline passed while fetching $url")
        }
    }

    private fun fetch(url: String, maxLength: Long, metadata: Boolean, out: OutputStream) {
        checkDeadline(url)
        requests++
        val connection = try {
            URL(url).openConnection() as HttpURLConnection
        } catch (error: Exception) {
            throw DownloadError("cannot open $url: $error", error)
        }
        try {
            val remainingMs = if (deadlineNanos == Long.MAX_VALUE) Long.MAX_VALUE else (deadlineNanos - System.nanoTime()) / 1_000_000
            val timeout = minOf(socketTimeoutMs.toLong(), maxOf(1L, remainingMs)).toInt()
            connection.connectTimeout = timeout
            connection.readTimeout = timeout
            connection.useCaches = false
            connection.instanceFollowRedirects = true
            val status = connection.responseCode
            if (status != HttpURLConnection.HTTP_OK) throw MissingError(url, status)
            // A server announcing more than allowed is refused before a byte is read.
            val announced = connection.contentLengthLong
            if (announced > maxLength) throw LengthError("$url is $announced bytes, more than the $maxLength allowed")
            connection.inputStream.use { input ->
                val buffer = ByteArray(64 * 1024)
                var total = 0L
                while (true) {
                    val read = input.read(buffer)
                    if (read < 0) break
                    total += read
                    if (metadata) metadataBytes += read else targetBytes += read
                    if (total > maxLength) throw LengthError("$url sent more than the $maxLength bytes allowed (endless data)")
                    out.write(buffer, 0, read)
                    checkDeadline(url)
                }
            }
        } catch (error: SocketTimeoutException) {
            throw DeadlineError("no data from $url within the socket timeout (${socketTimeoutMs} ms)", error)
        } catch (error: TufError) {
            throw error
        } catch (error: IOException) {
            throw DownloadError("download of $url failed: $error", error)
        } finally {
            connection.disconnect()
        }
    }
}
