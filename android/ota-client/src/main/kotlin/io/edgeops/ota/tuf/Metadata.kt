package io.edgeops.ota.tuf

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.longOrNull
import java.security.MessageDigest
import java.time.Instant

const val ROOT = "root"
const val TIMESTAMP = "timestamp"
const val SNAPSHOT = "snapshot"
const val TARGETS = "targets"
private val TOP_LEVEL = setOf(ROOT, TIMESTAMP, SNAPSHOT, TARGETS)
private val EXPIRES = Regex("""\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z""")
private val SPEC_VERSION = Regex("""1\.\d+(\.\d+)?""")

/** The keys allowed to sign one role and how many of them must. */
class RoleKeys(val keyids: List<String>, val threshold: Int)

/** A file's length and hashes as signed metadata names it (length/hashes optional for metadata files). */
class FileInfo(val version: Long?, val length: Long?, val hashes: Map<String, String>) {
    /** Spec 5.5.2, 5.6.2, 5.7: a complete file must have exactly the signed length and every signed hash. */
    fun verify(data: ByteArray, what: String) {
        if (length != null && data.size.toLong() != length) {
            throw HashError("$what is ${data.size} bytes, signed length is $length")
        }
        for ((algorithm, expected) in hashes) {
            val actual = Hashes.digest(algorithm).digest(data).toHexString()
            if (actual != expected) throw HashError("$what has $algorithm $actual, signed $expected")
        }
    }
}

object Hashes {
    fun digest(algorithm: String): MessageDigest = when (algorithm) {
        "sha256" -> MessageDigest.getInstance("SHA-256")
        "sha384" -> MessageDigest.getInstance("SHA-384")
        "sha512" -> MessageDigest.getInstance("SHA-512")
        else -> throw HashError("unsupported hash algorithm '$algorithm'")
    }
}

class TargetFile(val path: String, val length: Long, val hashes: Map<String, String>, val custom: JsonObject?) {
    val info get() = FileInfo(null, length, hashes)
}

class DelegatedRole(
    val name: String, val keys: RoleKeys, val terminating: Boolean,
    val paths: List<String>?, val pathHashPrefixes: List<String>?,
) {
    /** python-tuf's is_delegated_path: `*` and `?` never cross a `/` (fnmatch per path segment). */
    fun delegates(target: String): Boolean = when {
        paths != null -> paths.any { pattern -> matches(target, pattern) }
        pathHashPrefixes != null -> sha256Hex(target).let { hash -> pathHashPrefixes.any { hash.startsWith(it) } }
        else -> false
    }

    private fun matches(target: String, pattern: String): Boolean {
        val targetParts = target.split("/")
        val patternParts = pattern.split("/")
        return targetParts.size == patternParts.size &&
            targetParts.zip(patternParts).all { (part, glob) -> globRegex(glob).matches(part) }
    }
}

/** Hash-bin delegation (TAP 15): the bin of a target is the first bit_length bits of sha256(path). */
class SuccinctRoles(val keys: RoleKeys, val bitLength: Int, val namePrefix: String) {
    private val suffixLength = (1L shl bitLength).minus(1).toString(16).length
    fun roleFor(target: String): String {
        val first = sha256(target).copyOf(4).fold(0L) { acc, byte -> (acc shl 8) or (byte.toLong() and 0xff) }
        val bin = first ushr (32 - bitLength)
        return "$namePrefix-" + bin.toString(16).padStart(suffixLength, '0')
    }
    fun isBin(role: String): Boolean {
        val suffix = role.removePrefix("$namePrefix-")
        if (suffix == role || suffix.length != suffixLength) return false
        val number = suffix.toLongOrNull(16) ?: return false
        return number in 0 until (1L shl bitLength)
    }
}

class Delegations(val keys: Map<String, Key>, val roles: List<DelegatedRole>?, val succinct: SuccinctRoles?) {
    /** The roles to visit for `target`, in order, each with whether it terminates the search. */
    fun rolesFor(target: String): List<Pair<String, Boolean>> = when {
        roles != null -> roles.filter { it.delegates(target) }.map { it.name to it.terminating }
        succinct != null -> listOf(succinct.roleFor(target) to false)
        else -> emptyList()
    }

    fun keysOf(role: String): RoleKeys? =
        roles?.firstOrNull { it.name == role }?.keys ?: succinct?.takeIf { it.isBin(role) }?.keys
}

/** The `signed` part of any role, with what the client workflow needs of it. */
class Signed(val type: String, val version: Long, val expires: Instant, val json: JsonObject) {
    // root
    lateinit var keys: Map<String, Key>
    lateinit var roles: Map<String, RoleKeys>
    var consistentSnapshot = false
    // timestamp, snapshot
    var meta: Map<String, FileInfo> = emptyMap()
    // targets
    var targets: Map<String, TargetFile> = emptyMap()
    var delegations: Delegations? = null

    val snapshotMeta: FileInfo get() = meta.getValue("snapshot.json")
    fun isExpired(now: Instant) = !now.isBefore(expires)
}

/** A TUF metadata file: its `signed` part, the signatures over its canonical form, and the bytes it came from. */
class Metadata(val signed: Signed, val signatures: Map<String, String>, val bytes: ByteArray) {
    private val canonical: ByteArray by lazy { CanonicalJson.encode(signed.json) }

    /** Spec 5.3.4, 5.4.2, 5.5.3, 5.6.3: a threshold of distinct trusted keys signed the canonical `signed`. */
    fun verify(keys: Map<String, Key>, role: RoleKeys, name: String, delegator: String) {
        val valid = role.keyids.toSet().count { keyid ->
            val key = keys[keyid] ?: return@count false
            val signature = signatures[keyid] ?: return@count false
            key.verifies(canonical, signature)
        }
        if (valid < role.threshold) {
            throw SignatureError("$name is signed by $valid of the ${role.threshold} keys $delegator trusts for it")
        }
    }

    companion object {
        /** Parses and validates `bytes` as metadata of role type `type`; MetadataError names what is wrong. */
        fun parse(bytes: ByteArray, type: String): Metadata = try {
            parseUnchecked(bytes, type)
        } catch (error: TufError) {
            throw error
        } catch (error: Exception) { // a missing field, a wrong JSON type: all malformed metadata
            throw MetadataError("malformed $type metadata: ${error.message ?: error.javaClass.simpleName}")
        }

        private fun parseUnchecked(bytes: ByteArray, type: String): Metadata {
            val whole = Json.parseToJsonElement(bytes.decodeToString()) as JsonObject
            val signatures = LinkedHashMap<String, String>()
            for (entry in whole.array("signatures")) {
                val keyid = (entry as JsonObject).string("keyid")
                if (signatures.put(keyid, entry.string("sig")) != null) {
                    throw MetadataError("$type metadata has two signatures by key $keyid")
                }
            }
            val json = whole.obj("signed")
            val actualType = json.string("_type")
            if (actualType != type) throw MetadataError("expected $type metadata, got $actualType")
            val spec = json.string("spec_version")
            if (!SPEC_VERSION.matches(spec)) throw MetadataError("unsupported spec_version $spec in $type metadata")
            val version = json.long("version")
            if (version < 1) throw MetadataError("$type metadata version $version is not positive")
            val expiresText = json.string("expires")
            if (!EXPIRES.matches(expiresText)) throw MetadataError("$type metadata expires '$expiresText' is not YYYY-MM-DDTHH:MM:SSZ")
            val signed = Signed(type, version, Instant.parse(expiresText), json)
            when (type) {
                ROOT -> {
                    signed.keys = keys(json.obj("keys"))
                    signed.roles = json.obj("roles").mapValues { (_, role) -> roleKeys(role as JsonObject) }
                    if (signed.roles.keys != TOP_LEVEL) throw MetadataError("root must define exactly the roles $TOP_LEVEL")
                    signed.consistentSnapshot = (json["consistent_snapshot"] as? JsonPrimitive)?.booleanOrNull ?: false
                }
                TIMESTAMP -> {
                    signed.meta = mapOf("snapshot.json" to fileInfo(json.obj("meta").obj("snapshot.json")))
                }
                SNAPSHOT -> signed.meta = json.obj("meta").mapValues { (_, info) -> fileInfo(info as JsonObject) }
                else -> {
                    signed.targets = json.obj("targets").mapValues { (path, info) -> targetFile(path, info as JsonObject) }
                    signed.delegations = (json["delegations"] as? JsonObject)?.let(::delegations)
                }
            }
            return Metadata(signed, signatures, bytes)
        }

        private fun keys(json: JsonObject) = json.mapValues { (_, value) ->
            val key = value as JsonObject
            Key(key.string("keytype"), key.string("scheme"), key.obj("keyval").string("public"))
        }

        private fun roleKeys(json: JsonObject): RoleKeys {
            val keyids = json.array("keyids").map { (it as JsonPrimitive).content }
            if (keyids.toSet().size != keyids.size) throw MetadataError("a role lists the same key twice")
            val threshold = json.long("threshold")
            if (threshold < 1) throw MetadataError("a role has threshold $threshold")
            return RoleKeys(keyids, threshold.toInt())
        }

        private fun fileInfo(json: JsonObject): FileInfo {
            val version = json.long("version")
            if (version < 1) throw MetadataError("meta version $version is not positive")
            val length = json["length"]?.let { (it as JsonPrimitive).longOrNull ?: throw MetadataError("length is not an integer") }
            if (length != null && length < 0) throw MetadataError("negative length $length")
            val hashes = (json["hashes"] as? JsonObject)?.let(::hashes) ?: emptyMap()
            if (json["hashes"] != null && hashes.isEmpty()) throw MetadataError("empty hashes")
            return FileInfo(version, length, hashes)
        }

        private fun hashes(json: JsonObject) = json.mapValues { (_, value) -> (value as JsonPrimitive).content }

        private fun targetFile(path: String, json: JsonObject): TargetFile {
            val length = json.long("length")
            if (length < 0) throw MetadataError("target $path has negative length")
            val hashes = hashes(json.obj("hashes"))
            if (hashes.isEmpty()) throw MetadataError("target $path has no hashes")
            return TargetFile(path, length, hashes, json["custom"] as? JsonObject)
        }

        private fun delegations(json: JsonObject): Delegations {
            val roles = (json["roles"] as? JsonArray)?.map { element ->
                val role = element as JsonObject
                val name = role.string("name")
                if (name in TOP_LEVEL) throw MetadataError("a delegated role may not be named $name")
                val paths = (role["paths"] as? JsonArray)?.map { (it as JsonPrimitive).content }
                val prefixes = (role["path_hash_prefixes"] as? JsonArray)?.map { (it as JsonPrimitive).content }
                if (paths != null && prefixes != null) throw MetadataError("role $name has both paths and path_hash_prefixes")
                DelegatedRole(name, roleKeys(role), (role["terminating"] as JsonPrimitive).booleanOrNull ?: false, paths, prefixes)
            }
            val succinct = (json["succinct_roles"] as? JsonObject)?.let { role ->
                val bits = role.long("bit_length").toInt()
                if (bits !in 1..32) throw MetadataError("succinct_roles bit_length $bits is not in 1..32")
                SuccinctRoles(roleKeys(role), bits, role.string("name_prefix"))
            }
            if ((roles == null) == (succinct == null)) throw MetadataError("delegations need exactly one of roles, succinct_roles")
            if (roles != null && roles.map { it.name }.toSet().size != roles.size) throw MetadataError("delegated role names repeat")
            return Delegations(keys(json.obj("keys")), roles, succinct)
        }
    }
}

internal fun JsonObject.obj(name: String) = get(name) as? JsonObject ?: throw MetadataError("'$name' is missing or not an object")
internal fun JsonObject.array(name: String) = get(name) as? JsonArray ?: throw MetadataError("'$name' is missing or not a list")
internal fun JsonObject.string(name: String) =
    (get(name) as? JsonPrimitive)?.takeIf { it.isString }?.content ?: throw MetadataError("'$name' is missing or not a string")
internal fun JsonObject.long(name: String) =
    (get(name) as? JsonPrimitive)?.takeIf { !it.isString }?.longOrNull ?: throw MetadataError("'$name' is missing or not an integer")

internal fun sha256(text: String): ByteArray = MessageDigest.getInstance("SHA-256").digest(text.toByteArray())
internal fun sha256Hex(text: String) = sha256(text).toHexString()

/** fnmatch's glob (`*`, `?`, `[seq]`, `[!seq]`) as a regex over one path segment. */
internal fun globRegex(glob: String): Regex {
    val out = StringBuilder()
    var i = 0
    while (i < glob.length) {
        val c = glob[i]
        when {
            c == '*' -> out.append(".*")
            c == '?' -> out.append('.')
            c == '[' && glob.indexOf(']', i + 2) > 0 -> {
                val end = glob.indexOf(']', i + 2)
                var set = glob.substring(i + 1, end)
                val negate = set.startsWith("!")
                if (negate) set = set.substring(1)
                out.append('[').append(if (negate) "^" else "").append(set.replace("\\", "\\\\").replace("[", "\\[")).append(']')
                i = end
            }
            else -> out.append(Regex.escape(c.toString()))
        }
        i++
    }
    return Regex(out.toString(), RegexOption.DOT_MATCHES_ALL)
}

