"""`edgeops`: the local stack, the six stages, the pipeline and the demo from one command.

Stage commands read and write directories (default `out/stages/<stage>`), so
`edgeops ingest && edgeops train && …` runs the pipeline by hand.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeops import stack
from edgeops.errors import EdgeopsError
from edgeops.settings import Settings, parse_dataset

if TYPE_CHECKING:  # imported where used: every command starts faster
    from mypy_boto3_s3 import S3Client

    from edgeops.release import Keyring

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
pipeline_app = typer.Typer(
    no_args_is_help=True, help="Run the compiled KFP pipeline (`make compile` writes it) with the local runner."
)
app.add_typer(pipeline_app, name="pipeline")
keys_app = typer.Typer(no_args_is_help=True, help="TUF signing keys for releases (kept outside the repository).")
app.add_typer(keys_app, name="keys")
release_app = typer.Typer(no_args_is_help=True, help="Signed releases in the OTA bucket.")
app.add_typer(release_app, name="release")
data_app = typer.Typer(no_args_is_help=True, help="Datasets kept outside the repository.")
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)


STAGES = Settings().out_dir / "stages"
INGEST_DIR, TRAIN_DIR, EXPORT_DIR = STAGES / "ingest", STAGES / "train", STAGES / "export"
BENCHMARK_DIR, VERIFY_DIR, PROMOTE_DIR = STAGES / "benchmark", STAGES / "verify", STAGES / "promote"
Dir = Annotated[Path, typer.Option(file_okay=False)]


@app.command()
def up() -> None:
    """Start the local S3 server and MLflow server on 127.0.0.1 (idempotent)."""
    settings = Settings()
    stack.start(settings)
    _print_status(settings)
    console.print("stop with [bold]make down[/] (or `edgeops down`)")


@app.command()
def down() -> None:
    """Stop the local stack; data under the state dir is kept."""
    stack.stop(Settings())


@app.command()
def status() -> None:
    """Show whether the local stack is running and where."""
    _print_status(Settings())


def _print_status(settings: Settings) -> None:
    table = Table(title=f"edgeops stack (state in {settings.state_dir.resolve()})")
    for column in ("service", "pid", "url", "state"):
        table.add_column(column)
    for state in stack.status(settings):
        health = "[green]healthy[/]" if state.healthy else "[red]down[/]"
        table.add_row(state.name, str(state.pid or "-"), state.url, health)
    console.print(table)


DatasetOption = Annotated[
    str, typer.Option("--dataset", help="track: 'mat' (BLE mat recordings) or 'pmd' (PhysioNet pressure maps)")
]


@app.command()
def ingest(
    manifest: Annotated[
        str | None, typer.Option(help="mat: session manifest (file -> label), a path or s3://bucket/…/session.json")
    ] = None,
    dataset: DatasetOption = "mat",
    out: Dir = INGEST_DIR,
) -> None:
    """Build the track's versioned dataset (mat: validate and archive recordings; pmd: read settings.pmd.data_dir)."""
    from edgeops.ingest import ingest_dataset

    settings = Settings()
    settings.model_name = settings.model_name_for(parse_dataset(dataset))
    info = ingest_dataset(dataset, manifest or settings.session_manifest, out, settings)
    console.print(f"dataset [bold]{info.version}[/] samples {info.samples} → {out}; MLflow run {info.run_id}")


@app.command()
def record(
    address: Annotated[str, typer.Option(help="the mat's Bluetooth address (a device UUID on macOS)")],
    label: Annotated[str, typer.Option(help="what is on the mat, one of the dataset's labels")],
    session: Annotated[Path, typer.Option(file_okay=False, help="session directory for the CSV and session.json")],
    duration: Annotated[float | None, typer.Option(help="seconds to record (default: settings.ble)")] = None,
    upload: Annotated[bool, typer.Option(help="also upload the session to the raw bucket")] = False,
) -> None:
    """Record from the mat over BLE into a session directory, in the CSV format ingest reads."""
    from edgeops.ble import record as run

    settings = Settings()
    result = run(address, label, duration or settings.ble.record_duration_s, session, settings, upload=upload)
    bad = ", ".join(f"{count} {reason}" for reason, count in result.recording.bad_frames.items()) or "none"
    console.print(f"{result.recording.frames} frames → {result.csv} (dropped: {bad}); manifest {result.manifest}")
    if result.uri:
        console.print(f"uploaded; ingest with: edgeops ingest --manifest {result.uri}")


@app.command()
def train(
    dataset: Dir = INGEST_DIR,
    out: Dir = TRAIN_DIR,
    model: Annotated[str | None, typer.Option(help="mat-mlp or mobilenet_v2 (default: the dataset's track)")] = None,
) -> None:
    """Train the network; normalisation from the training split goes inside the model."""
    from edgeops.train import train as run

    info = run(dataset, out, Settings(), model)
    console.print(f"best epoch {info.best_epoch}: val accuracy {info.val_accuracy:.4f} → {out}")


@app.command("export")
def export_(dataset: Dir = INGEST_DIR, model: Dir = TRAIN_DIR, out: Dir = EXPORT_DIR) -> None:
    """Export the FP32 ExecuTorch program and one INT8 candidate per quantization strategy, lowered to XNNPACK."""
    from edgeops.export import export as run

    result = run(dataset, model, out, Settings())
    for name, program in (("fp32", result.fp32), *result.candidates.items()):
        console.print(
            f"{name}: {program.size_bytes:,} bytes, {program.delegated_ops} ops delegated to XNNPACK, "
            f"{program.non_delegated_ops} not → {out / program.file}"
        )


@app.command()
def benchmark(
    dataset: Dir = INGEST_DIR,
    model: Dir = TRAIN_DIR,
    executorch: Dir = EXPORT_DIR,
    out: Dir = BENCHMARK_DIR,
) -> None:
    """Accuracy and latency of eager, FP32 and every INT8 candidate on the test split."""
    from edgeops.benchmark import REPORT_FILE
    from edgeops.benchmark import benchmark as run

    run(dataset, model, executorch, out, Settings())
    console.print((out / REPORT_FILE).read_text())


@app.command()
def verify(
    dataset: Dir = INGEST_DIR,
    executorch: Dir = EXPORT_DIR,
    benchmark: Dir = BENCHMARK_DIR,
    out: Dir = VERIFY_DIR,
) -> None:
    """Pick the INT8 candidate that passes the gates (smallest, then fastest), re-download it from MLflow, check it."""
    from edgeops.export import ExportedModels
    from edgeops.verify import verify as run

    settings = Settings()
    settings.gates = settings.gates_for(ExportedModels.load(executorch).spec.dataset)
    result = run(dataset, executorch, benchmark, out, settings)
    for verdict in result.candidates:
        console.print(f"{'[green]✓[/]' if verdict.chosen else ' '} {verdict.strategy}: {verdict.reason}")
    for gate in result.gates:
        console.print(f"[green]✓[/] {gate.describe()}")


@app.command()
def promote(
    verified: Dir = VERIFY_DIR,
    out: Dir = PROMOTE_DIR,
    model_name: Annotated[str | None, typer.Option(help="registered model and OTA prefix")] = None,
    channel: Annotated[str | None, typer.Option(help="release channel (stable, canary)")] = None,
) -> None:
    """Register the verified model, alias it, and publish it as a signed release to the OTA bucket."""
    from edgeops.promote import promote as run

    result = run(verified, out, Settings(), model_name, channel)
    console.print(
        f"promoted {result.model_name} registry version {result.version} as {result.channel} "
        f"v{result.release_version}: {result.manifest_url}"
    )


def main() -> None:
    # Raised by torch's pytree from inside torchao/ExecuTorch on every graph copy: noise we cannot fix.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    try:
        app()
    except EdgeopsError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(1) from None


@pipeline_app.command("run")
def pipeline_run(
    manifest: Annotated[Path | None, typer.Option(help="session manifest (file -> label)")] = None,
    model_name: Annotated[str | None, typer.Option()] = None,
    dataset: DatasetOption = "mat",
) -> None:
    """Run the compiled pipeline with KFP's local runner and print each stage's wall time."""
    from edgeops.pipeline import pipeline_arguments, run_local

    settings = Settings()
    arguments = pipeline_arguments(settings, manifest, model_name, parse_dataset(dataset))
    result = run_local(settings, arguments, settings.out_dir / "kfp")
    _print_stage_times(result.stage_seconds, result.seconds)


@app.command()
def demo(
    manifest: Annotated[Path | None, typer.Option(help="session manifest (file -> label)")] = None,
    model_name: Annotated[str | None, typer.Option()] = None,
    dataset: DatasetOption = "mat",
) -> None:
    """Start the stack, run the pipeline, then fetch and run the promoted model as a device would."""
    from edgeops.demo import run_demo

    settings = Settings()
    track = parse_dataset(dataset)
    summary = run_demo(
        settings, manifest or settings.session_manifest, model_name or settings.model_name_for(track), track
    )
    agent = summary["agent"]
    unchanged = agent["unchanged_poll"]
    if summary["created_release_keys"]:
        console.print(f"created TUF signing keys in {summary['release_keys']} (keep them out of git; back them up)")
    _print_stage_times(summary["stage_seconds"], summary["pipeline_seconds"])
    table = Table(title="edgeops demo", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("dataset version", summary["dataset_version"]),
        ("MLflow run", summary["mlflow_run_url"]),
        ("test samples", f"{summary['test_samples']:.0f} ({summary['test_split']})"),
        ("INT8 candidate promoted", f"{summary['int8_strategy']}: {summary['int8_strategy_reason']}"),
        (
            "accuracy eager / FP32 / INT8",
            f"{summary['eager_accuracy']:.4f} / {summary['fp32_accuracy']:.4f} / {summary['int8_accuracy']:.4f}",
        ),
        (
            "latency p50 FP32 / INT8",
            f"{summary['fp32_latency_p50_ms']:.4f} ms / {summary['int8_latency_p50_ms']:.4f} ms"
            f" (p95 INT8 {summary['int8_latency_p95_ms']:.4f} ms)",
        ),
        ("size FP32 / INT8", f"{summary['fp32_size_bytes']:,} / {summary['int8_size_bytes']:,} bytes"),
        (
            "promoted",
            f"{summary['model_name']} registry version {summary['promoted_version']} "
            f"(alias '{summary['registry_alias']}'), signed release {summary['release']}",
        ),
        (
            "edge agent",
            f"installed v{agent['installed_version']} in {agent['install_poll']['seconds']:.2f} s; an unchanged poll: "
            f"{unchanged['requests']} requests, {unchanged['metadata_bytes']} metadata bytes, "
            f"{unchanged['target_bytes']} model bytes",
        ),
        ("manifest", summary["manifest_url"]),
        ("model", summary["model_url"]),
    ]
    for source, result in summary["device_check"]["predictions"].items():
        rows.append(
            (
                f"device: {source}",
                f"{result['agreement']:.0%} of {result['samples']} samples read as '{result['label']}'",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"summary: {settings.out_dir / 'demo' / 'summary.json'}")
    console.print(f"MLflow UI: {summary['mlflow_tracking_uri']}   device manifest: {summary['manifest_url']}")
    console.print("the stack keeps running; stop it with [bold]make down[/]")


def _print_stage_times(stage_seconds: dict[str, float], total: float) -> None:
    table = Table(title="pipeline wall time (KFP local runner)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in stage_seconds.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("[bold]whole pipeline[/]", f"[bold]{total:.1f}[/]")
    console.print(table)


@pipeline_app.command("submit")
def pipeline_submit(
    package: Annotated[Path, typer.Option(help="compiled cluster pipeline")] = Path(
        "pipelines/mat_occupancy_cluster.yaml"
    ),
    model_name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Upload the cluster pipeline to Kubeflow Pipelines, start a run and print its URL."""
    from edgeops.cluster import submit
    from edgeops.pipeline import pipeline_arguments

    settings = Settings()
    # Inside the component image the recordings sit at the default relative path.
    console.print(f"run started: {submit(settings, package, pipeline_arguments(settings, model_name=model_name))}")


ModelOption = Annotated[str | None, typer.Option("--model", help="model name (default: the configured model)")]
ChannelOption = Annotated[str | None, typer.Option(help="release channel (default: stable)")]
KeysOption = Annotated[Path | None, typer.Option(help="keys directory (default: settings.release.keys_dir)")]


@keys_app.command("init")
def keys_init(keys_dir: KeysOption = None) -> None:
    """Create one Ed25519 key per TUF role and the root that trusts them. Refuses to overwrite or go into git."""
    from edgeops.release import init_keys

    root = init_keys(Settings().release, keys_dir)
    console.print(f"keys and trusted root written to {root.parent} (private keys mode 0600)")
    console.print(f"provision devices with [bold]{root}[/] (`edgeops agent --root {root}`)")


def _release_context(keys_dir: Path | None) -> tuple[Settings, Keyring, S3Client]:
    from edgeops.release import Keyring
    from edgeops.storage import s3_client

    settings = Settings()
    return settings, Keyring.load(settings.release, keys_dir), s3_client(settings)


@release_app.command("rollback")
def release_rollback(
    model: ModelOption = None,
    channel: ChannelOption = None,
    to_version: Annotated[int | None, typer.Option(help="release to go back to (default: the one before)")] = None,
    keys_dir: KeysOption = None,
) -> None:
    """Re-publish an earlier release's model under a higher version, so devices move forward onto it."""
    from edgeops.release import rollback

    settings, keyring, s3 = _release_context(keys_dir)
    name, channel = model or settings.model_name, channel or settings.release.channel
    release = rollback(s3, settings.ota_bucket, name, channel, keyring, settings.release, to_version)
    console.print(
        f"{name} {channel} v{release.version} now serves the model of v{release.rollback_of} ({release.sha256[:12]})"
    )


@release_app.command("heartbeat")
def release_heartbeat(model: ModelOption = None, keys_dir: KeysOption = None) -> None:
    """Re-sign the timestamp with a fresh expiry (schedule it well inside settings.release.timestamp_expiry_s)."""
    from edgeops.release import heartbeat

    settings, keyring, s3 = _release_context(keys_dir)
    name = model or settings.model_name
    timestamp = heartbeat(s3, settings.ota_bucket, name, keyring, settings.release)
    console.print(f"{name}: timestamp v{timestamp.version} valid until {timestamp.expires.isoformat()}")


@release_app.command("list")
def release_list(model: ModelOption = None, keys_dir: KeysOption = None) -> None:
    """Show every signed release of a model, per channel."""
    from edgeops.release import read_release, read_state

    settings, keyring, s3 = _release_context(keys_dir)
    name = model or settings.model_name
    state = read_state(s3, settings.ota_bucket, name, keyring)
    if state is None:
        raise EdgeopsError(f"{name} has no signed releases in s3://{settings.ota_bucket}/")
    table = Table(title=f"{name} releases (timestamp v{state.timestamp.signed.version})")
    for column in ("channel", "version", "sha256", "registry", "rollback of", "created"):
        table.add_column(column)
    for channel in settings.release.channels:
        for version, path in state.releases(channel):
            release = read_release(s3, settings.ota_bucket, name, path)
            table.add_row(
                channel,
                str(version),
                release.sha256[:12],
                str(release.registry_version or "-"),
                str(release.rollback_of or "-"),
                release.created_at,
            )
    console.print(table)


@app.command()
def agent(
    source: Annotated[
        str | None, typer.Option(help="frames to classify: replay:PATH (CSV at its recorded pace) or ble:ADDRESS")
    ] = None,
    interval: Annotated[float | None, typer.Option(help="seconds between polls")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="one poll, then exit 0 only if a verified model is installed")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(file_okay=False, help="everything the device keeps")] = None,
    model: ModelOption = None,
    channel: ChannelOption = None,
    root: Annotated[Path | None, typer.Option(dir_okay=False, help="trusted root.json for a new device")] = None,
    repository: Annotated[str | None, typer.Option(help="base URL of the model's releases")] = None,
    speed: Annotated[float, typer.Option(help="replay this many times faster than recorded")] = 1.0,
    repeat: Annotated[bool, typer.Option("--repeat", help="start the source again when it ends")] = False,
) -> None:
    """The edge agent: install signed releases safely, and classify frames with the installed model."""
    from edgeops.agent import Agent, AgentError, run

    settings = Settings()
    device = Agent(settings, state_dir, model, channel, repository, root, report=console.print)
    device.check_installed()
    if once:
        try:
            stats = device.poll()
            console.print(
                f"{stats.outcome}; {stats.requests} requests, {stats.metadata_bytes} metadata bytes, "
                f"{stats.target_bytes} target bytes, {stats.seconds:.2f} s"
            )
        except AgentError as error:
            Console(stderr=True).print(f"[bold red]poll failed:[/] {error}", highlight=False)
        running = device.running_model()
        if running is None:
            Console(stderr=True).print("[bold red]no verified model is installed[/]")
            raise SystemExit(1)
        model_info, role = running
        console.print(f"running {device.model_name} v{model_info.version} ({role}), sha256 {model_info.sha256}")
        raise SystemExit(0 if device.status.last_error is None else 2)

    frames = None
    if source:
        from edgeops.frames import Frame, open_source

        def repeated(spec: str) -> Iterator[Frame]:
            while True:
                yield from open_source(spec, settings, speed=speed)

        frames = repeated(source) if repeat else open_source(source, settings, speed=speed)
    console.print(
        f"polling {device.repository_url} every {interval or settings.agent.poll_interval_s:g} s; Ctrl-C stops"
    )
    try:
        run(device, interval or settings.agent.poll_interval_s, frames, console.print)
    except KeyboardInterrupt:
        console.print("stopped")


@app.command("bench-ota")
def bench_ota(
    trials: Annotated[int, typer.Option(min=1)] = 10,
    interval: Annotated[float, typer.Option(help="the agent's poll interval, seconds")] = 2.0,
) -> None:
    """Seconds from a promotion finishing until a polling agent runs the new model (real stages, real agent)."""
    from edgeops.ota_latency import measure

    settings = Settings()
    summary = measure(settings, trials, interval, console.print)
    table = Table(title=f"promotion -> running on an agent polling every {interval:g} s")
    columns = ("release", "installed (s)", "running (s)", "running since promote() began (s)", "target bytes")
    for column in columns:
        table.add_column(column, justify="right")
    for trial in summary["trials"]:
        table.add_row(
            f"v{trial['release_version']}",
            f"{trial['installed_s']:.2f}",
            f"{trial['running_s']:.2f}",
            f"{trial['running_since_promote_started_s']:.2f}",
            f"{trial['model_bytes']:,}",
        )
    console.print(table)
    console.print(
        f"running within [bold]{summary['running_s_max']:.2f} s[/] at worst, "
        f"median {summary['running_s_median']:.2f} s after promote() returned "
        f"(at worst {summary['running_since_promote_started_s_max']:.2f} s after it began) "
        f"({len(summary['trials'])} promotions); summary: {settings.out_dir / 'bench-ota' / 'summary.json'}"
    )


@app.command("bench")
def bench(
    dataset: DatasetOption = "pmd",
    runs: Annotated[int, typer.Option(min=1, help="timed calls per engine and thread count")] = 1000,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds per ratio pair")] = 1000,
    memory: Annotated[bool, typer.Option(help="peak memory of each engine in a fresh process")] = True,
) -> None:
    """The production model under PyTorch eager, ExecuTorch FP32/INT8 and ONNX Runtime FP32/INT8, side by side."""
    from edgeops.bench import PEER_ARTIFACT_DIR, peer_bench
    from edgeops.peer import REPORT_FILE, PeerConfig

    settings = Settings()
    out = settings.out_dir / "bench"
    config = PeerConfig(latency_runs=runs, interleaved_rounds=rounds, measure_memory=memory)
    peer_bench(settings, out, config, parse_dataset(dataset), console.print)
    console.print((out / REPORT_FILE).read_text())
    console.print(f"report: {out / REPORT_FILE} (also in the model's MLflow run under {PEER_ARTIFACT_DIR}/)")


@app.command("bench-loso")
def bench_loso(
    subjects: Annotated[list[str] | None, typer.Option("--subject", help="repeat; default: every PMD subject")] = None,
    strategy: Annotated[str, typer.Option(help="INT8 quantization strategy")] = "qat",
) -> None:
    """Leave-one-subject-out on PMD: per-subject and mean accuracy, FP32 and INT8."""
    from edgeops.bench import LOSO_REPORT, loso
    from edgeops.settings import parse_strategy

    settings = Settings()
    out = settings.out_dir / "bench-loso"
    result = loso(settings, out, subjects, parse_strategy(strategy), console.print)
    console.print((out / LOSO_REPORT).read_text())
    console.print(
        f"mean accuracy over {len(result.folds)} held-out subjects: FP32 [bold]{result.mean_fp32:.4f}[/], "
        f"INT8 [bold]{result.mean_int8:.4f}[/]; report: {out / LOSO_REPORT}"
    )


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="dataset to download: pmd (PhysioNet pressure maps)")],
    dest: Annotated[Path | None, typer.Option(file_okay=False, help="default: settings.pmd.data_dir")] = None,
) -> None:
    """Download a public dataset and verify every file against its published SHA256SUMS."""
    from edgeops.pmd import fetch

    if dataset != "pmd":
        raise EdgeopsError(f"unknown dataset '{dataset}' (known: pmd)")
    config = Settings().pmd

    def progress(path: str, done: int, total: int, downloaded: bool) -> None:
        how = "downloaded" if downloaded else "already present"
        console.print(f"[{done}/{total}] {path} {how}, sha256 ok")

    target = fetch(config, dest or config.data_dir, progress)
    console.print(f"PhysioNet PMD in {target}, every file verified against SHA256SUMS.txt")
