"""The peer benchmark's report: a Markdown table, the interleaved ratios, where the time goes, and two plots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeops.bench.peer import ORT_REPORTED_NODES, RECORD_FILE, PeerResult

REPORT_FILE = "peer.md"
LATENCY_PLOT = "peer_latency.png"
CONFUSION_PLOT = "peer_confusion.png"
PLOT_DPI = 120
CONFUSION_COLUMNS = 3
ANNOTATE_MAX_CLASSES = 6  # beyond this, counts in the confusion cells are unreadable
WHISKER_PERCENTILES = (1, 99)
NOT_MEASURED = "n/a"
LATENCY_TICKS = (1.0, 2.0, 5.0)  # labelled ticks per decade on the log axis


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in counts.items()) or "none"


def render_report(result: PeerResult) -> str:
    threads = result.config.thread_counts
    header = ["engine", "accuracy", "agrees with eager"]
    for count in threads:
        header += [f"p50 ms ({count}t)", f"p95 ms ({count}t)", f"p99 ms ({count}t)"]
    header += ["load ms", "peak MiB", "import MiB", "size bytes"]
    lines = [
        "# Peer benchmark: ExecuTorch vs ONNX Runtime",
        "",
        f"{result.test_windows} test windows, one per call (batch 1); INT8 calibrated on "
        f"{result.calibration_windows} windows. {result.machine['cpu']}, {result.machine['logical_cpus']} logical "
        f"CPUs; torch {result.machine['torch']}, executorch {result.machine['executorch']}, "
        f"onnxruntime {result.machine['onnxruntime']}.",
        "",
        f"Latency: {result.config.latency_runs} timed calls after {result.config.warmup_runs} warm-up calls, one "
        "engine at a time, cycling through the test windows; `Nt` = N threads (XNNPACK pool, ORT intra-op "
        "threads, torch threads). Load: median of "
        f"{result.config.load_repeats} loads in a warm process. Memory: see below.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in result.engines.values():
        cells = [r.label, f"{r.evaluation.accuracy:.4f}", f"{r.agreement_with_eager:.4f}"]
        for count in threads:
            stats = r.latency[count]
            cells += [f"{stats.p50_ms:.3f}", f"{stats.p95_ms:.3f}", f"{stats.p99_ms:.3f}"]
        memory = [f"{r.memory.peak_mib:.1f}", f"{r.memory.import_mib:.1f}"] if r.memory else [NOT_MEASURED] * 2
        cells += [f"{r.load_ms:.1f}", *memory, f"{r.size_bytes:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Interleaved ratios",
        "",
        "Both engines called alternately in the same rounds (order shuffled per round), so machine noise hits "
        "both alike. Below 1: the first engine is faster.",
        "",
        "| engines | threads | ratio of medians | median of per-round ratios | rounds |",
        "|---|---|---|---|---|",
    ]
    for pairing in result.ratios:
        a, b = result.engines[pairing.a].label, result.engines[pairing.b].label
        lines.append(
            f"| {a} / {b} | {pairing.threads} | {pairing.ratio.of_medians:.3f} | "
            f"{pairing.ratio.median_paired:.3f} | {pairing.ratio.rounds} |"
        )
    lines += ["", "## Where the time goes", ""]
    for key, coverage in result.executorch.items():
        lowered = (
            f"; at lowering {coverage.delegated_ops} edge ops delegated, {coverage.non_delegated_ops} not"
            if coverage.delegated_ops is not None
            else ""
        )
        lines.append(
            f"- {result.engines[key].label}: delegate calls {_counts(coverage.delegate_calls)}; operator calls "
            f"outside delegates: {_counts(coverage.kernel_calls)}{lowered}."
        )
    for key, nodes in result.ort_nodes.items():
        reported = {name: nodes.get(name, 0) for name in ORT_REPORTED_NODES}
        lines.append(
            f"- {result.engines[key].label}, graph ORT runs (after ORT_ENABLE_ALL): {_counts(reported)} "
            f"(all nodes: {_counts(nodes)})."
        )
    lines += [
        "",
        "## Memory",
        "",
        (
            f"Each engine loads and runs {result.config.memory_runs} times in its own fresh process with numpy and "
            "torch imported. `import MiB` is the RSS that importing the engine's Python modules adds (for "
            "ExecuTorch, its Python bindings and what they import; not the size of the on-device C++ runtime); "
            "`peak MiB` is the highest RSS while loading and running minus the RSS just before loading."
            if result.config.measure_memory
            else "Not measured (`measure_memory` off)."
        ),
        "",
        f"![latency]({LATENCY_PLOT})",
        "",
        f"![confusion matrices]({CONFUSION_PLOT})",
    ]
    return "\n".join(lines) + "\n"


def plot_latency(result: PeerResult, path: Path) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    threads = result.config.thread_counts
    names = [r.label for r in result.engines.values()]
    figure = Figure(figsize=(7 * len(threads), 0.6 * len(names) + 1.5), layout="constrained")
    axes = figure.subplots(1, len(threads), squeeze=False)[0]
    for axis, count in zip(axes, threads, strict=True):
        samples = [r.latency[count].samples_ms for r in result.engines.values()]
        axis.boxplot(samples, vert=False, whis=WHISKER_PERCENTILES, showfliers=False, tick_labels=names)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=LATENCY_TICKS))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("ms per call (whiskers: 1st-99th percentile)")
        axis.set_title(f"Latency at batch 1, {count} thread{'s' if count > 1 else ''}")
        axis.grid(axis="x", which="both", alpha=0.3)
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def plot_confusion(result: PeerResult, path: Path) -> Path:
    from matplotlib.figure import Figure

    classes = len(result.labels)
    rows = math.ceil(len(result.engines) / CONFUSION_COLUMNS)
    size = 2 + 0.25 * classes
    figure = Figure(figsize=(size * CONFUSION_COLUMNS, size * rows), layout="constrained")
    axes = figure.subplots(rows, CONFUSION_COLUMNS, squeeze=False).ravel()
    for axis, r in zip(axes, result.engines.values(), strict=False):
        confusion = np.array(r.evaluation.confusion)
        recall = confusion / np.maximum(1, confusion.sum(axis=1, keepdims=True))
        axis.imshow(recall, vmin=0, vmax=1, cmap="Blues")
        axis.set_title(f"{r.label}\naccuracy {r.evaluation.accuracy:.3f}", fontsize="small")
        axis.set_xticks(range(classes), result.labels, rotation=90, fontsize="x-small")
        axis.set_yticks(range(classes), result.labels, fontsize="x-small")
        axis.set_xlabel("predicted", fontsize="small")
        axis.set_ylabel("true", fontsize="small")
        if classes <= ANNOTATE_MAX_CLASSES:
            for (row, column), count in np.ndenumerate(confusion):
                color = "white" if recall[row, column] > 0.5 else "black"
                axis.text(column, row, str(count), ha="center", va="center", color=color, fontsize="small")
    for axis in axes[len(result.engines) :]:
        axis.set_visible(False)
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def write_report(result: PeerResult, out_dir: Path) -> list[Path]:
    """Markdown report, plots and the JSON record; returns their paths (report first) for MLflow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / REPORT_FILE
    report.write_text(render_report(result))
    result.save(out_dir)
    return [
        report,
        plot_latency(result, out_dir / LATENCY_PLOT),
        plot_confusion(result, out_dir / CONFUSION_PLOT),
        out_dir / RECORD_FILE,
    ]
