package io.edgeops.ota.tuf

import java.io.File
import java.io.IOException
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.time.Instant

/** Limits and choices of one updater; the defaults are python-tuf's UpdaterConfig. */
data class UpdaterConfig(
    val maxRootRotations: Int = 32,
    val maxDelegations: Int = 32,
    val rootMaxLength: Long = 512_000,
    val timestampMaxLength: Long = 16_384,
    val snapshotMaxLength: Long = 2_000_000,
    val targetsMaxLength: Long = 2_000_000,
    /** With consistent snapshots, fetch targets as `<dir>/<hash>.<name>`; off where names are content-addressed. */
    val prefixTargetsWithHash: Boolean = true,
)

/**
 * A TUF client following the specification's "Detailed client workflow" (section 5) step by step.
 * Trusted metadata is kept non-versioned in [metadataDir] (root.json, timestamp.json, snapshot.json, targets.json,
 * <url-quoted delegated role>.json); a local copy that does not verify is ignored, as python-tuf's ngclient does.
 */
class Updater(
    private val metadataDir: File,
    metadataBaseUrl: String,
    private val targetBaseUrl: String,
    private val fetcher: Fetcher,
    private val config: UpdaterConfig = UpdaterConfig(),
    bootstrapRoot: ByteArray? = null,
    private val clock: () -> Instant = Instant::now,
) {
    private val metadataBaseUrl = if (metadataBaseUrl.endsWith("/")) metadataBaseUrl else "$metadataBaseUrl/"
    private var referenceTime: Instant = clock()
    private var root: Metadata
    private var timestamp: Metadata? = null
    private var snapshot: Metadata? = null
    /** Verified targets roles by name, with the delegator they were verified against. */
    private val targets = HashMap<String, Pair<Metadata, String>>()
    private var refreshed = false

    init {
        // 5.2: load the trusted root (the newest this directory verified, else the provisioned one); it must
        // be signed by its own threshold. Its expiry does not matter yet (5.3.10 checks the final root).
        metadataDir.mkdirs()
        val data = bootstrapRoot ?: readLocal(ROOT)
            ?: throw MetadataError("no trusted root: ${File(metadataDir, "root.json")} does not exist")
        root = Metadata.parse(data, ROOT)
        root.verify(root.signed.keys, root.signed.roles.getValue(ROOT), "the trusted root", "the trusted root itself")
        if (bootstrapRoot != null) persist(ROOT, bootstrapRoot)
    }

    val trustedRoot: Metadata get() = root
    fun trustedTargets(): Metadata? = targets[TARGETS]?.first

    /** 5.1 to 5.6: refresh the top-level metadata. Throws a [TufError] naming what failed. */
    fun refresh() {
        referenceTime = clock() // 5.1: one time for the whole update
        updateRootChain()
        loadTimestamp()
        loadSnapshot()
        loadTargets(TARGETS, ROOT)
        refreshed = true
    }

    // ---- 5.3 root ------------------------------------------------------------------------------------------

    private fun updateRootChain() {
        val initial = root.signed
        // 5.3.2/5.3.3: N+1.root.json until the repository has none (403/404), at most maxRootRotations of them.
        val first = root.signed.version + 1
        for (next in first until first + config.maxRootRotations) {
            val data = try {
                downloadMetadata(ROOT, config.rootMaxLength, next)
            } catch (error: MissingError) {
                if (error.status == 403 || error.status == 404) break else throw error
            }
            val new = Metadata.parse(data, ROOT)
            // 5.3.4: signed by a threshold of the old root's root keys AND of the new root's.
            new.verify(root.signed.keys, root.signed.roles.getValue(ROOT), "root v${new.signed.version}", "root v${root.signed.version}")
            // 5.3.5: exactly version N+1.
            if (new.signed.version != next) {
                throw RollbackError("root $next.root.json has version ${new.signed.version}, expected $next")
            }
            new.verify(new.signed.keys, new.signed.roles.getValue(ROOT), "root v$next", "root v$next itself")
            // 5.3.6 (expiry of an intermediate root does not matter), 5.3.7 trust it, 5.3.8 persist it.
            root = new
            persist(ROOT, data)
        }
        // 5.3.10: the final root must not be expired (freeze attack).
        checkExpiry(root, ROOT)
        // 5.3.11: new timestamp/snapshot keys: forget those roles' local copies, so a fast-forward attack's
        // high versions do not block the recovery the key rotation is for.
        if (rotated(initial, root.signed, TIMESTAMP) || rotated(initial, root.signed, SNAPSHOT)) {
            for (role in listOf(TIMESTAMP, SNAPSHOT)) localFile(role).delete()
        }
        // 5.3.12: consistent_snapshot is read from the trusted root where URLs are built.
    }

    private fun rotated(old: Signed, new: Signed, role: String): Boolean {
        val before = old.roles.getValue(role)
        val after = new.roles.getValue(role)
        return before.keyids.toSet() != after.keyids.toSet() || before.threshold != after.threshold
    }

    // ---- 5.4 timestamp -------------------------------------------------------------------------------------

    private fun loadTimestamp() {
        // A local copy (even an expired one) is the reference the new one may not go back from.
        readLocal(TIMESTAMP)?.let { local -> ignoreInvalid { updateTimestamp(local) } }
        // 5.4.1: timestamp.json, never versioned, up to timestampMaxLength bytes.
        val data = downloadMetadata(TIMESTAMP, config.timestampMaxLength, null)
        try {
            updateTimestamp(data)
        } catch (_: EqualVersion) {
            return // the one we trust already: nothing to persist
        }
        persist(TIMESTAMP, data) // 5.4.5
    }

    private fun updateTimestamp(data: ByteArray) {
        val new = Metadata.parse(data, TIMESTAMP)
        new.verify(root.signed.keys, root.signed.roles.getValue(TIMESTAMP), "timestamp", "the root") // 5.4.2
        timestamp?.signed?.let { trusted -> // 5.4.3: rollback of the timestamp and of the snapshot it names
            if (new.signed.version < trusted.version) {
                throw RollbackError("timestamp v${new.signed.version} is older than the trusted v${trusted.version}")
            }
            if (new.signed.version == trusted.version) throw EqualVersion()
            val newSnapshot = new.signed.snapshotMeta.version!!
            val trustedSnapshot = trusted.snapshotMeta.version!!
            if (newSnapshot < trustedSnapshot) {
                throw RollbackError("timestamp names snapshot v$newSnapshot, older than the trusted v$trustedSnapshot")
            }
        }
        timestamp = new // kept even if expired: it still guards against rollback
        checkExpiry(new, TIMESTAMP) // 5.4.4
    }

    // ---- 5.5 snapshot --------------------------------------------------------------------------------------

    private fun loadSnapshot() {
        checkExpiry(timestamp!!, TIMESTAMP)
        readLocal(SNAPSHOT)?.let { local ->
            if (ignoreInvalid { updateSnapshot(local, trusted = true) }) return // the local one is still current
        }
        val meta = timestamp!!.signed.snapshotMeta
        val version = if (root.signed.consistentSnapshot) meta.version else null // 5.5.1: N.snapshot.json
        val data = downloadMetadata(SNAPSHOT, meta.length ?: config.snapshotMaxLength, version)
        updateSnapshot(data, trusted = false)
        persist(SNAPSHOT, data) // 5.5.7
    }

    private fun updateSnapshot(data: ByteArray, trusted: Boolean) {
        val meta = timestamp!!.signed.snapshotMeta
        if (!trusted) meta.verify(data, "snapshot") // 5.5.2: hashes/length as the timestamp signs them
        val new = Metadata.parse(data, SNAPSHOT)
        new.verify(root.signed.keys, root.signed.roles.getValue(SNAPSHOT), "snapshot", "the root") // 5.5.3
        snapshot?.signed?.meta?.forEach { (name, info) -> // 5.5.5: no targets role disappears or goes back
            val newInfo = new.signed.meta[name] ?: throw RollbackError("the new snapshot drops $name")
            if (newInfo.version!! < info.version!!) {
                throw RollbackError("the new snapshot names $name v${newInfo.version}, older than the trusted v${info.version}")
            }
        }
        snapshot = new
        checkFinalSnapshot()
    }

    /** 5.5.4 version as the timestamp names it, 5.5.6 not expired. */
    private fun checkFinalSnapshot() {
        val current = snapshot!!
        checkExpiry(current, SNAPSHOT)
        val expected = timestamp!!.signed.snapshotMeta.version
        if (current.signed.version != expected) {
            throw RollbackError("snapshot has version ${current.signed.version}, the timestamp names v$expected")
        }
    }

    // ---- 5.6 targets and delegations ----------------------------------------------------------------------

    private fun loadTargets(role: String, delegator: String): Metadata {
        targets[role]?.let { (cached, verifiedBy) ->
            // Verified before, maybe through another delegator: its authority must come from this one too.
            if (verifiedBy != delegator) verifyDelegated(cached, role, delegator)
            return cached
        }
        readLocal(role)?.let { local -> ignoreInvalid { return updateTargets(local, role, delegator) } }
        val meta = snapshot!!.signed.meta["${role}.json"]
            ?: throw MetadataError("role '$role' is delegated but the snapshot does not list it")
        val version = if (root.signed.consistentSnapshot) meta.version else null // 5.6.1: N.<role>.json
        val data = downloadMetadata(role, meta.length ?: config.targetsMaxLength, version)
        return updateTargets(data, role, delegator).also { persist(role, data) } // 5.6.6
    }

    private fun updateTargets(data: ByteArray, role: String, delegator: String): Metadata {
        checkFinalSnapshot()
        val meta = snapshot!!.signed.meta["${role}.json"]
            ?: throw MetadataError("role '$role' is delegated but the snapshot does not list it")
        meta.verify(data, "$role metadata") // 5.6.2
        val new = Metadata.parse(data, TARGETS)
        verifyDelegated(new, role, delegator) // 5.6.3
        if (new.signed.version != meta.version) { // 5.6.4
            throw RollbackError("$role has version ${new.signed.version}, the snapshot names v${meta.version}")
        }
        checkExpiry(new, role) // 5.6.5
        targets[role] = new to delegator
        return new
    }

    private fun verifyDelegated(metadata: Metadata, role: String, delegator: String) {
        if (delegator == ROOT) {
            metadata.verify(root.signed.keys, root.signed.roles.getValue(TARGETS), TARGETS, "the root")
            return
        }
        val delegations = targets.getValue(delegator).first.signed.delegations
            ?: throw SignatureError("$delegator delegates nothing, so it cannot vouch for $role")
        val keys = delegations.keysOf(role) ?: throw SignatureError("$delegator does not delegate to $role")
        metadata.verify(delegations.keys, keys, role, delegator)
    }

    /** 5.6.7: pre-order depth-first search of the delegation graph for [path]; null when no role lists it. */
    fun getTargetInfo(path: String): TargetFile? {
        if (!refreshed) refresh()
        val toVisit = ArrayDeque(listOf(TARGETS to ROOT))
        val visited = HashSet<Pair<String, String>>()
        var budget = config.maxDelegations // 5.6.7.1: at most this many roles visited
        while (budget > 0 && toVisit.isNotEmpty()) {
            val (role, delegator) = toVisit.removeLast()
            if (!visited.add(role to delegator)) continue // a cycle
            val signed = loadTargets(role, delegator).signed
            signed.targets[path]?.let { return it }
            budget--
            val children = ArrayList<Pair<String, String>>()
            for ((child, terminating) in signed.delegations?.rolesFor(path).orEmpty()) {
                children.add(child to role)
                if (terminating) { // 5.6.7.2.1: a terminating delegation ends the search below this point
                    toVisit.clear()
                    break
                }
            }
            toVisit.addAll(children.asReversed()) // first listed, first visited
        }
        return null
    }

    // ---- 5.7 targets ---------------------------------------------------------------------------------------

    /** True when [file] holds exactly the signed target (length and every hash): no download needed. */
    fun isCached(target: TargetFile, file: File): Boolean =
        file.isFile && file.length() == target.length && runCatching { verifyFile(target, file) }.isSuccess

    /** 5.7: download [target] into [partial] (at most its signed length), verify length and hashes, move to [destination]. */
    fun downloadTarget(target: TargetFile, destination: File, partial: File = File(destination.parentFile, "${destination.name}.part")) {
        var path = target.path
        if (root.signed.consistentSnapshot && config.prefixTargetsWithHash) {
            val slash = path.lastIndexOf('/')
            path = path.substring(0, slash + 1) + target.hashes.values.first() + "." + path.substring(slash + 1)
        }
        partial.parentFile?.mkdirs()
        try {
            fetcher.toFile(targetBaseUrl + quote(path, safe = "/"), target.length, partial)
            verifyFile(target, partial)
            Files.move(partial.toPath(), destination.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
        } finally {
            partial.delete()
        }
    }

    private fun verifyFile(target: TargetFile, file: File) {
        if (file.length() != target.length) {
            throw HashError("${target.path} is ${file.length()} bytes, signed length is ${target.length}")
        }
        val digests = target.hashes.mapValues { (algorithm, _) -> Hashes.digest(algorithm) }
        file.inputStream().use { input ->
            val buffer = ByteArray(64 * 1024)
            while (true) {
                val read = input.read(buffer)
                if (read < 0) break
                digests.values.forEach { it.update(buffer, 0, read) }
            }
        }
        for ((algorithm, digest) in digests) {
            val actual = digest.digest().toHexString()
            if (actual != target.hashes[algorithm]) {
                throw HashError("${target.path} has $algorithm $actual, signed ${target.hashes[algorithm]}")
            }
        }
    }

    // ---- files and downloads -------------------------------------------------------------------------------

    private fun checkExpiry(metadata: Metadata, role: String) {
        if (metadata.signed.isExpired(referenceTime)) {
            throw ExpiredError(role, metadata.signed.expires, "$role metadata expired at ${metadata.signed.expires}")
        }
    }

    private fun downloadMetadata(role: String, maxLength: Long, version: Long?): ByteArray {
        val name = (if (version != null) "$version." else "") + quote(role) + ".json"
        return fetcher.bytes(metadataBaseUrl + name, maxLength, metadata = true)
    }

    private fun localFile(role: String) = File(metadataDir, quote(role) + ".json")

    private fun readLocal(role: String): ByteArray? = try {
        localFile(role).takeIf { it.isFile }?.readBytes()
    } catch (_: IOException) {
        null
    }

    /** Non-versioned and atomic: a temporary file, fsync, then one rename over the old copy. */
    private fun persist(role: String, data: ByteArray) = writeAtomically(localFile(role), data)

    /** Runs [block]; a local copy that fails verification is simply not used (false). */
    private inline fun ignoreInvalid(block: () -> Unit): Boolean = try {
        block()
        true
    } catch (_: TufError) {
        false
    }

    private class EqualVersion : Exception()
}

/** Writes [data] to [file] so that a crash leaves either the old or the new content. */
fun writeAtomically(file: File, data: ByteArray) {
    file.parentFile?.mkdirs()
    val temp = File.createTempFile(".${file.name}.", ".tmp", file.parentFile)
    try {
        temp.outputStream().use { out ->
            out.write(data)
            out.flush()
            out.fd.sync()
        }
        Files.move(temp.toPath(), file.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
    } finally {
        temp.delete()
    }
}

/** Python's urllib.parse.quote(text, safe): what python-tuf uses for role names in URLs and file names. */
fun quote(text: String, safe: String = ""): String = buildString {
    for (byte in text.toByteArray()) {
        val char = (byte.toInt() and 0xff).toChar()
        if (char.isLetterOrDigit() && char.code < 128 || char in "_.-~" || char in safe) append(char)
        else append('%').append("%02X".format(byte.toInt() and 0xff))
    }
}
