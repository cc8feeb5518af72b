package io.edgeops.ota.tuf

/**
 * Every way an update can fail, each with the refusal reason of the shared vocabulary
 * (rollback, signature, expired, length, hash, missing, deadline, metadata) so callers never parse messages.
 */
open class TufError(val reason: String, message: String, cause: Throwable? = null) : Exception(message, cause)

class RollbackError(message: String) : TufError("rollback", message)
class SignatureError(message: String) : TufError("signature", message)
class ExpiredError(val role: String, val expires: java.time.Instant, message: String) : TufError("expired", message)
class LengthError(message: String) : TufError("length", message)
class HashError(message: String) : TufError("hash", message)
class MissingError(val url: String, val status: Int) : TufError("missing", "HTTP $status for $url")
class DeadlineError(message: String, cause: Throwable? = null) : TufError("deadline", message, cause)
class MetadataError(message: String) : TufError("metadata", message)
class DownloadError(message: String, cause: Throwable? = null) : TufError("other", message, cause)
