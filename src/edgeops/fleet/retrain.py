"""Drift that starts retraining: when the fleet's inputs have moved away from the training data's, train again on
what the mats recorded most recently.

The fleet service runs `DriftWatch` in a thread. Every `drift_check_s` it computes each chamber's PSI against the
training recordings (`summary.drift_report`); when a chamber is flagged and the last trigger is older than
`retrain_cooldown_s`, it records the trigger (in the database, so the cool-down survives a restart) and starts the
pipeline on the newest session in the raw bucket: `edgeops pipeline run` with the local runner beside the service
(`fleet.retrain_runner = local`; the run is its child, so `edgeops down` stops it too), or the cluster pipeline
submitted to Kubeflow Pipelines (`cluster`). Ingest records the session it trained on as a run parameter, by
which later checks find the run in MLflow and link it on the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edgeops.fleet.store import Store
from edgeops.fleet.summary import drift_report
from edgeops.settings import Dataset, Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import s3_client
from edgeops.stack.sessions import SESSION_PARAM, SESSIONS_PREFIX

logger = logging.getLogger(__name__)
MANIFEST = "session.json"


def newest_session(settings: Settings) -> str | None:
    """The s3:// URI of the most recently written session manifest in the raw bucket, if any."""
    s3 = s3_client(settings)
    newest: tuple[datetime, str] | None = None
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.raw_bucket, Prefix=SESSIONS_PREFIX):
        for item in page.get("Contents", []):
            if item["Key"].endswith(f"/{MANIFEST}") and (newest is None or item["LastModified"] > newest[0]):
                newest = (item["LastModified"], item["Key"])
    return f"s3://{settings.raw_bucket}/{newest[1]}" if newest else None


@dataclass
class TrainingRun:
    """A training run drift started: where to follow it, and its process when it runs on this machine."""

    where: str  # the local run's log file, or the Kubeflow Pipelines run's URL
    process: subprocess.Popen[bytes] | None = None


def start_training(settings: Settings, session: str, at: datetime) -> TrainingRun:
    """Start the pipeline on `session` (ingest fetches it from the bucket)."""
    if settings.fleet.retrain_runner == "cluster":
        from edgeops.pipeline.arguments import pipeline_arguments
        from edgeops.pipeline.cluster import submit

        return TrainingRun(submit(settings, settings.cluster.pipeline_package, pipeline_arguments(settings, session)))
    log = settings.state_dir.resolve() / "logs" / f"retrain-{at.strftime('%Y%m%dT%H%M%SZ')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeops", "pipeline", "run", "--manifest", session],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it reaches the runner's task processes too
        )
    return TrainingRun(str(log), process)


def mlflow_run_url(settings: Settings, session: str, since: datetime) -> str | None:
    """The MLflow run a trigger started: the first run built from `session` since the trigger, if any yet."""
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.track(Dataset.mat).experiment)
    if experiment is None:
        return None
    quoted, since_ms = session.replace("'", "\\'"), int(since.timestamp() * 1000)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"params.`{SESSION_PARAM}` = '{quoted}' and attributes.start_time >= {since_ms}",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if not runs:
        return None
    return f"{settings.tracking_uri}/#/experiments/{experiment.experiment_id}/runs/{runs[0].info.run_id}"


class DriftWatch:
    def __init__(
        self,
        store: Store,
        reference: dict[str, list[float]],
        settings: Settings,
        start: Callable[[Settings, str, datetime], TrainingRun] = start_training,
    ) -> None:
        self.store, self.reference, self.settings, self.start = store, reference, settings, start
        self.runs: dict[int, subprocess.Popen[bytes]] = {}  # trigger -> its local run, while it runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drift-watch", daemon=True)

    def begin(self) -> DriftWatch:
        if self.settings.fleet.retrain_on_drift and self.reference:
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.fleet.drift_check_s):
            try:
                self.check()
            except Exception:  # a database or bucket that is away: try again next time
                logger.exception("the drift check failed")

    def check(self) -> int | None:
        """One check; the trigger's id when it started (or tried to start) a training run."""
        now = datetime.now(UTC)
        self.link_runs()
        drifted = {
            d["chamber"]: d["psi"]
            for d in drift_report(self.store, self.reference, self.settings.fleet, now)
            if d["flagged"]
        }
        if not drifted:
            return None
        last = self.store.last_retrain()
        if last is not None and now - last < timedelta(seconds=self.settings.fleet.retrain_cooldown_s):
            return None  # fired within the cool-down
        session = newest_session(self.settings)
        if session is None:
            nothing = "drift, but no session in the raw bucket to train on"
            return self.store.record_retrain(now, drifted, "", nothing, "")
        trigger = self.store.record_retrain(now, drifted, session, "starting", "")
        try:
            run = self.start(self.settings, session, now)
        except Exception as error:
            self.store.update_retrain(trigger, status=f"could not start: {error}")
            raise
        if run.process is not None:
            self.runs[trigger] = run.process
        self.store.update_retrain(trigger, status="running" if run.process else "submitted", log=run.where)
        logger.warning("drift in %s: started a training run on %s (%s)", ", ".join(drifted), session, run.where)
        return trigger

    def link_runs(self) -> None:
        """Find the MLflow run of each trigger that has none yet (it appears once ingest is done); note local runs
        that ended."""
        for row in self.store.retrain_triggers():
            if row["log"] and not row["mlflow_run"]:  # a run was started (its log or KFP run is set), not linked yet
                url = mlflow_run_url(self.settings, row["session"], datetime.fromisoformat(row["at"]))
                if url is not None:
                    self.store.update_retrain(row["id"], mlflow_run=url)
        for trigger, process in list(self.runs.items()):
            if process.poll() is not None:
                ended = "finished" if process.returncode == 0 else f"failed (exit {process.returncode})"
                self.store.update_retrain(trigger, status=ended)
                del self.runs[trigger]

    def stop(self) -> None:
        self._stop.set()
        for process in self.runs.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
