"""`edgeops ingest | train | export | benchmark | verify | promote`: one stage at a time, by hand.

Stage commands read and write directories (default `out/stages/<stage>`), so
`edgeops ingest && edgeops train && …` runs the pipeline by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli.device import valid_name
from edgeops.cli.output import console
from edgeops.settings import Architecture, Dataset, Settings

app = typer.Typer()

STAGES = Settings().out_dir / "stages"
INGEST_DIR, TRAIN_DIR, EXPORT_DIR = STAGES / "ingest", STAGES / "train", STAGES / "export"
BENCHMARK_DIR, VERIFY_DIR, PROMOTE_DIR = STAGES / "benchmark", STAGES / "verify", STAGES / "promote"
Dir = Annotated[Path, typer.Option(file_okay=False)]
DatasetOption = Annotated[
    Dataset, typer.Option("--dataset", help="track: mat (BLE mat recordings) or pmd (PhysioNet pressure maps)")
]


@app.command()
def ingest(
    manifest: Annotated[
        str | None, typer.Option(help="mat: session manifest (file -> label), a path or s3://bucket/…/session.json")
    ] = None,
    dataset: DatasetOption = Dataset.mat,
    out: Dir = INGEST_DIR,
    model_name: Annotated[
        str | None, typer.Option(help="model this run is for (default: the track's)", callback=valid_name)
    ] = None,
) -> None:
    """Build the track's versioned dataset (mat: validate and archive recordings; pmd: read settings.pmd.data.root)."""
    from edgeops.stages.ingest import ingest as run

    info = run(dataset, out, Settings(), manifest, model_name)
    console.print(f"dataset [bold]{info.version}[/] samples {info.samples} → {out}; MLflow run {info.run_id}")


@app.command()
def train(
    dataset: Dir = INGEST_DIR,
    out: Dir = TRAIN_DIR,
    model: Annotated[Architecture | None, typer.Option(help="network (default: the dataset's track's)")] = None,
) -> None:
    """Train the network; normalisation from the training split goes inside the model."""
    from edgeops.stages.train import train as run
    from edgeops.stages.train import validation_summary

    info = run(dataset, out, Settings(), model)
    console.print(f"kept epoch {info.best_epoch}: {validation_summary(info)} → {out}")


@app.command("export")
def export_(dataset: Dir = INGEST_DIR, model: Dir = TRAIN_DIR, out: Dir = EXPORT_DIR) -> None:
    """Export the FP32 ExecuTorch program and one INT8 candidate per quantization strategy, lowered to XNNPACK."""
    from edgeops.stages.export import export as run

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
    from edgeops.stages.benchmark import REPORT_FILE
    from edgeops.stages.benchmark import benchmark as run

    run(dataset, model, executorch, out, Settings())
    console.print((out / REPORT_FILE).read_text())


@app.command()
def verify(
    dataset: Dir = INGEST_DIR,
    executorch: Dir = EXPORT_DIR,
    benchmark: Dir = BENCHMARK_DIR,
    out: Dir = VERIFY_DIR,
) -> None:
    """Pick the INT8 candidate that passes the track's gates (smallest, then fastest), re-download it, check it."""
    from edgeops.stages.verify import verify as run

    result = run(dataset, executorch, benchmark, out, Settings())
    for verdict in result.candidates:
        console.print(f"{'[green]✓[/]' if verdict.chosen else ' '} {verdict.strategy}: {verdict.reason}")
    for gate in result.gates:
        console.print(f"[green]✓[/] {gate.describe()}")


@app.command()
def promote(
    verified: Dir = VERIFY_DIR,
    out: Dir = PROMOTE_DIR,
    model_name: Annotated[
        str | None, typer.Option(help="registered model and OTA prefix (default: the run's)", callback=valid_name)
    ] = None,
    channel: Annotated[str | None, typer.Option(help="release channel (stable, canary)", callback=valid_name)] = None,
) -> None:
    """Register the verified model, alias it, and publish it as a signed release to the OTA bucket."""
    from edgeops.stages.promote import promote as run

    result = run(verified, out, Settings(), model_name, channel)
    console.print(f"promoted {result.describe()}: {result.manifest_url}")
