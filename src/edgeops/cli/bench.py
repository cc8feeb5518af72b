"""`edgeops bench | bench-loso | bench-ota`: measurements beside the pipeline; they print figures and gate nothing."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgeops.cli.output import console
from edgeops.cli.stages import DatasetOption
from edgeops.settings import Dataset, Settings, Strategy

app = typer.Typer()


@app.command("bench-ota")
def bench_ota(
    trials: Annotated[int, typer.Option(min=1)] = 10,
    interval: Annotated[float, typer.Option(help="the agent's poll interval, seconds")] = 2.0,
) -> None:
    """Seconds from a promotion finishing until a polling agent runs the new model (real stages, real agent)."""
    from edgeops.bench.ota import measure

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


@app.command("bench-freshness")
def bench_freshness(
    days: Annotated[float, typer.Option(min=1, help="simulated days of operation")] = 400,
    step_hours: Annotated[float, typer.Option(min=0.5, help="heartbeat and poll interval, simulated hours")] = 6,
    models: Annotated[int, typer.Option(min=1)] = 2,
    release_every: Annotated[float, typer.Option(min=1, help="a new release every this many days")] = 120,
    rotation: Annotated[bool, typer.Option(help="the operator rotates the root when status warns")] = True,
) -> None:
    """Simulated months of operation on a fake clock against the local stack: heartbeats, a root rotation, polls."""
    from rich.progress import Progress

    from edgeops.bench.freshness import simulate

    settings = Settings()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=days)
        report = simulate(
            settings,
            days,
            step_hours,
            models,
            release_every,
            operator_rotates=rotation,
            on_step=lambda day: progress.update(task, completed=day),
        )
    console.print(
        f"{report.days:g} days at {report.step_hours:g} h steps, {report.models} model(s): "
        f"{report.polls} polls, [bold]{report.failed_polls} failed[/] ({report.expiry_failures} for expiry); "
        f"{report.heartbeats} heartbeats re-signed {dict(report.resigned)}; {report.releases} releases; "
        f"root rotated on day(s) {report.rotations}; devices on root {report.device_root_versions}, "
        f"releases {report.device_release_versions}; {report.seconds:.0f} s"
    )
    for failure in report.failures:
        console.print(f"[red]{failure}[/]")
    if report.failed_polls:
        raise typer.Exit(1)


@app.command("bench")
def bench(
    dataset: DatasetOption = Dataset.pmd,
    runs: Annotated[int, typer.Option(min=1, help="timed calls per engine and thread count")] = 1000,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds per ratio pair")] = 1000,
    memory: Annotated[bool, typer.Option(help="peak memory of each engine in a fresh process")] = True,
) -> None:
    """The production model under PyTorch eager, ExecuTorch FP32/INT8 and ONNX Runtime FP32/INT8, side by side."""
    from edgeops.bench.peer import PeerConfig
    from edgeops.bench.peer_report import REPORT_FILE
    from edgeops.bench.production import PEER_ARTIFACT_DIR, peer_bench

    settings = Settings()
    out = settings.out_dir / "bench"
    config = PeerConfig(latency_runs=runs, interleaved_rounds=rounds, measure_memory=memory)
    peer_bench(settings, out, config, dataset, console.print)
    console.print((out / REPORT_FILE).read_text())
    console.print(f"report: {out / REPORT_FILE} (also in the model's MLflow run under {PEER_ARTIFACT_DIR}/)")


@app.command("bench-loso")
def bench_loso(
    subjects: Annotated[list[str] | None, typer.Option("--subject", help="repeat; default: every PMD subject")] = None,
    strategy: Annotated[
        Strategy | None, typer.Option(help="INT8 quantization strategy; default: the PMD track's first")
    ] = None,
) -> None:
    """Leave-one-subject-out on PMD: per-subject and mean accuracy, FP32 and INT8."""
    from edgeops.bench.loso import LOSO_REPORT, loso

    settings = Settings()
    out = settings.out_dir / "bench-loso"
    result = loso(settings, out, subjects, strategy, console.print)
    console.print((out / LOSO_REPORT).read_text())
    console.print(
        f"mean accuracy over {len(result.folds)} held-out subjects: FP32 [bold]{result.mean_fp32:.4f}[/], "
        f"INT8 [bold]{result.mean_int8:.4f}[/]; report: {out / LOSO_REPORT}"
    )
