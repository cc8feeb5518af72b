package io.edgeops.ota.cli

import io.edgeops.ota.OtaClient
import io.edgeops.ota.OtaConfig
import io.edgeops.ota.Outcome
import io.edgeops.ota.StateDirError
import io.edgeops.ota.tuf.Fetcher
import io.edgeops.ota.tuf.TufError
import io.edgeops.ota.tuf.Updater
import io.edgeops.ota.tuf.quote
import io.edgeops.ota.tuf.writeAtomically
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import java.io.File
import kotlin.system.exitProcess

private const val USAGE = """usage:
  ota-cli poll --state-dir D --repository URL --root FILE --model NAME [--channel C] [--track T] [--json]
  ota-cli conformance --metadata-dir D init ROOT
  ota-cli conformance --metadata-dir D --metadata-url U refresh
  ota-cli conformance --metadata-dir D --metadata-url U --target-name T [--target-name T2 ...] --target-base-url B --target-dir TD download"""

class UsageError(message: String) : Exception(message)

/** `--name value` options (repeatable) and the remaining positional words, in order. */
class Arguments(args: List<String>, flags: Set<String>) {
    val options = LinkedHashMap<String, MutableList<String>>()
    val words = ArrayList<String>()

    init {
        var i = 0
        while (i < args.size) {
            val arg = args[i]
            when {
                arg in flags -> options.getOrPut(arg) { ArrayList() }.add("")
                arg.startsWith("--") -> {
                    val value = args.getOrNull(i + 1) ?: throw UsageError("$arg needs a value")
                    options.getOrPut(arg) { ArrayList() }.add(value)
                    i++
                }
                else -> words.add(arg)
            }
            i++
        }
    }

    fun has(name: String) = name in options
    fun optional(name: String) = options[name]?.last()
    fun required(name: String) = optional(name) ?: throw UsageError("$name is required")
    fun all(name: String) = options[name].orEmpty()
}

fun main(args: Array<String>) {
    val code = try {
        when (args.firstOrNull()) {
            "poll" -> poll(Arguments(args.drop(1), setOf("--json")))
            "conformance" -> conformance(Arguments(args.drop(1), emptySet()))
            else -> throw UsageError("unknown command '${args.firstOrNull() ?: ""}'")
        }
    } catch (error: UsageError) {
        System.err.println("ota-cli: ${error.message}\n$USAGE")
        1
    }
    exitProcess(code)
}

/** One OtaClient poll. Exit 0 installed/unchanged, 2 refused, 1 usage or I/O error. */
private fun poll(args: Arguments): Int {
    val config = OtaConfig(
        repositoryUrl = args.required("--repository"),
        modelName = args.required("--model"),
        channel = args.optional("--channel") ?: "stable",
        track = args.optional("--track") ?: "mat",
        trustedRoot = File(args.required("--root")),
        stateDir = File(args.required("--state-dir")),
    )
    val result = try {
        OtaClient(config).poll()
    } catch (error: StateDirError) {
        System.err.println("ota-cli: ${error.message}")
        return 1
    } catch (error: java.io.IOException) {
        System.err.println("ota-cli: ${error.javaClass.simpleName}: ${error.message}")
        return 1
    }
    if (args.has("--json")) {
        println(
            buildJsonObject {
                put("outcome", result.outcome.name.lowercase())
                put("version", result.installed?.version)
                put("sha256", result.installed?.sha256)
                put("reason", result.reason)
                put("message", result.message)
                put("requests", result.requests)
                put("metadata_bytes", result.metadataBytes)
                put("target_bytes", result.targetBytes)
                put("seconds", result.seconds)
            }.toString(),
        )
    } else {
        val installed = result.installed?.let { "v${it.version} (${it.sha256.take(12)})" } ?: "nothing"
        println("${result.outcome.name.lowercase()}${result.reason?.let { " [$it]" } ?: ""}: ${result.message}")
        println("installed: $installed")
        println("cost: ${result.requests} requests, ${result.metadataBytes} metadata bytes, ${result.targetBytes} target bytes, ${result.seconds} s")
    }
    return if (result.outcome == Outcome.REFUSED) 2 else 0
}

/** tuf-conformance's client CLI (CLIENT-CLI.md): init, refresh, download; exit 0 on success, 1 on any failure. */
private fun conformance(args: Arguments): Int {
    val metadataDir = File(args.required("--metadata-dir"))
    val command = args.words.firstOrNull() ?: throw UsageError("init, refresh or download?")
    return try {
        when (command) {
            "init" -> {
                val root = File(args.words.getOrNull(1) ?: throw UsageError("init needs the trusted root file"))
                metadataDir.mkdirs()
                writeAtomically(File(metadataDir, "root.json"), root.readBytes())
            }
            "refresh" -> updater(metadataDir, args, "").refresh()
            "download" -> {
                val updater = updater(metadataDir, args, args.required("--target-base-url").let { if (it.endsWith("/")) it else "$it/" })
                val targetDir = File(args.required("--target-dir")).also { it.mkdirs() }
                updater.refresh()
                for (name in args.all("--target-name")) {
                    val target = updater.getTargetInfo(name) ?: throw TufError("missing", "no signed target '$name'")
                    // One file per target path, whatever its content: the suite expects a changed target in the same file.
                    val file = File(targetDir, quote(name))
                    if (updater.isCached(target, file)) {
                        System.err.println("$name: cached")
                    } else {
                        updater.downloadTarget(target, file)
                        System.err.println("$name: downloaded")
                    }
                }
            }
            else -> throw UsageError("unknown conformance command '$command'")
        }
        0
    } catch (error: TufError) {
        System.err.println("refused [${error.reason}]: ${error.javaClass.simpleName}: ${error.message}")
        1
    } catch (error: java.io.IOException) {
        System.err.println("failed: ${error.javaClass.simpleName}: ${error.message}")
        1
    }
}

private fun updater(metadataDir: File, args: Arguments, targetBaseUrl: String) =
    Updater(metadataDir, args.required("--metadata-url"), targetBaseUrl, Fetcher(socketTimeoutMs = 10_000))
