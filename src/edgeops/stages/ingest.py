"""Ingest: build the track's versioned dataset, archive it to the raw bucket, open the pipeline run in MLflow.

The track's adapter (`edgeops.datasets`) reads, validates and splits; this stage does all the
S3 and MLflow work, with one client each. PMD not on disk (a cluster pod) comes from the copy
`edgeops data upload pmd` put in the raw bucket, fetched into scratch space first.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from edgeops import progress
from edgeops.datasets import adapter_for, pmd
from edgeops.datasets.base import DATA_FILE, BuiltDataset, DatasetRecord, dataset_key, save_splits
from edgeops.settings import Dataset, Settings, check_name, parse_choice
from edgeops.stack import tracking
from edgeops.stack.s3 import put_if_absent, s3_client
from edgeops.stack.sessions import SESSION_PARAM, fetch_session, is_session_uri, session_location
from edgeops.stack.sources import fetch_pmd, source_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow's dataset contexts


def ingest(
    dataset: Dataset | str,
    out_dir: Path,
    settings: Settings,
    manifest: Path | str | None = None,
    model_name: str | None = None,
) -> DatasetRecord:
    """Build `dataset`, archive raw files and the dataset, open the MLflow run every later stage logs into.

    `manifest` (mat) lists the recordings, as a path or the `s3://` URI `edgeops record --upload` prints;
    `model_name` defaults to the track's. PMD is read from `settings.pmd.data.root`, or, when that holds no
    data, from the raw bucket's copy (`edgeops.stack.sources`). Nothing is written to `out_dir` or S3 unless
    the data is valid and `model_name` a valid name; a manifest key or entry that would leave its directory is
    refused.
    """
    track = settings.track(parse_choice(Dataset, dataset))
    model_name = check_name("model_name", track.model_name if model_name is None else model_name)
    s3: S3Client | None = None
    session = None
    with ExitStack() as scratch:
        if manifest is not None and is_session_uri(manifest):
            session = "s3://{}/{}".format(*session_location(manifest))  # "s3:/" once it was a Path
            s3 = s3_client(settings)
            directory = Path(scratch.enter_context(tempfile.TemporaryDirectory()))
            manifest = fetch_session(session, directory, s3)
        source = settings
        if track.dataset == Dataset.pmd and not pmd.on_disk(settings.pmd.data):
            s3 = s3 or s3_client(settings)
            directory = Path(scratch.enter_context(tempfile.TemporaryDirectory()))
            fetched = fetch_pmd(settings.pmd.data, directory, s3, settings.raw_bucket)
            source = settings.model_copy(update={"pmd": settings.pmd.model_copy(update={"data": fetched})})
        built = adapter_for(track.dataset, source, Path(manifest) if manifest else None).build()  # validates
        # Where the data came from, not the scratch directory it was read in.
        if source is not settings:
            built.params["pmd.root"] = source_uri(settings.pmd.data, settings.raw_bucket)
        if session is not None:  # the fleet service finds the runs its drift started by this
            built.params[SESSION_PARAM] = session
        samples = ", ".join(f"{split} {count:,}" for split, count in built.record.samples.items())
        progress.report(f"dataset {built.record.version}: {samples} samples; archiving to s3://{settings.raw_bucket}")
        save_splits(built.splits, out_dir)
        publish_dataset(built, out_dir, s3 or s3_client(settings), settings, track.experiment, model_name)
    return built.record


def publish_dataset(
    built: BuiltDataset, out_dir: Path, s3: S3Client, settings: Settings, experiment: str, model_name: str
) -> None:
    """Archive raw files and the dataset to the raw bucket and open the pipeline run's MLflow run.

    Sets the record's `run_id` and `model_name` and saves it in `out_dir`.
    """
    record, bucket = built.record, settings.raw_bucket
    for key, path in built.raw_files.items():
        put_if_absent(s3, bucket, key, path.read_bytes(), "text/csv")
    s3.upload_file(str(out_dir / DATA_FILE), bucket, dataset_key(record.version, DATA_FILE))
    s3.put_object(
        Bucket=bucket,
        Key=dataset_key(record.version, record.record_file),
        Body=record.model_dump_json(indent=2).encode(),
        ContentType="application/json",
    )

    import mlflow

    with tracking.start_run(settings, experiment, run_name=f"{model_name}-{record.version}") as run:
        mlflow.set_tags({"dataset_version": record.version, "dataset": record.dataset, "model_name": model_name})
        mlflow.log_params(built.params)
        for split, context in SPLIT_CONTEXTS.items():
            x, y = built.splits[split]
            if not len(y):
                continue  # an empty split (no validation subjects) is no dataset to log
            logged = mlflow.data.from_numpy(
                x,
                targets=y,
                source=f"s3://{bucket}/{dataset_key(record.version, DATA_FILE)}",
                name=f"{record.version}-{split}",
            )
            mlflow.log_input(logged, context=context)
        mlflow.log_metrics({f"dataset_{split}_samples": count for split, count in record.samples.items()})
        record.run_id, record.model_name = run.info.run_id, model_name
        mlflow.log_dict(record.model_dump(mode="json"), "dataset/dataset.json")
    record.save(out_dir)
