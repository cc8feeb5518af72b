package io.edgeops.ota.tuf

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class FetcherTest {
    @Test
    fun `endless data is cut just past the maximum length`() = TestRepository().use { repository ->
        repository.endless = "metadata/timestamp.json"
        val fetcher = Fetcher(socketTimeoutMs = 5_000)
        val error = assertFailsWith<LengthError> { fetcher.bytes(repository.url + "metadata/timestamp.json", 16_384, metadata = true) }
        assertEquals("length", error.reason)
        assertTrue(fetcher.metadataBytes in 16_385..16_384 + 64 * 1024, "read ${fetcher.metadataBytes} bytes")
    }

    @Test
    fun `a file within its limit arrives whole, a missing one is a 404, and both are counted`() = TestRepository().use { repository ->
        val fetcher = Fetcher()
        assertContentEquals(repository.root, fetcher.bytes(repository.url + "metadata/1.root.json", 512_000, metadata = true))
        assertEquals(404, assertFailsWith<MissingError> { fetcher.bytes(repository.url + "metadata/2.root.json", 512_000, true) }.status)
        assertEquals(2, fetcher.requests)
        assertEquals(repository.root.size.toLong(), fetcher.metadataBytes)
    }

    @Test
    fun `a passed deadline stops the poll before another request`() = TestRepository().use { repository ->
        val fetcher = Fetcher(deadlineNanos = System.nanoTime() - 1)
        assertFailsWith<DeadlineError> { fetcher.bytes(repository.url + "metadata/1.root.json", 512_000, true) }
        assertEquals(0, repository.requests)
    }
}
