"""Drift that starts retraining: when the fleet's inputs have moved away from the training data's, train again on
what the mats recorded most recently.

The fleet service runs `DriftWatch` in a thread. Every `drift_check_s` it computes each chamber's PSI against the
training recordings (`summary.drift_report`); when a chamber is flagged and the last trigger is older than
`retrain_cooldown_s`, it records the trigger (in the database, so the cool-down survives a restart), fetches the
newest session from the raw bucket and starts `edgeops pipeline run` on it with the local runner. The run's log
path and status are on the dashboard. The run is a child of the fleet service: `edgeops down` stops it too.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgeops.fleet.store import Store
from edgeops.fleet.summary import drift_report
from edgeops.settings import Settings
from edgeops.stack.s3 import s3_client
from edgeops.stack.sessions import SESSIONS_PREFIX, fetch_session

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


def start_training(settings: Settings, session: str, at: datetime) -> tuple[subprocess.Popen[bytes], Path]:
    """Fetch `session` and start the pipeline on it; returns the run's process and log."""
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    workdir = settings.state_dir.resolve() / "retrain" / stamp
    manifest = fetch_session(session, workdir, s3_client(settings))
    log = settings.state_dir.resolve() / "logs" / f"retrain-{stamp}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeops", "pipeline", "run", "--manifest", str(manifest)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it reaches the runner's task processes too
        )
    return process, log


class DriftWatch:
    def __init__(
        self,
        store: Store,
        reference: dict[str, list[float]],
        settings: Settings,
        start: Callable[[Settings, str, datetime], tuple[subprocess.Popen[bytes], Path]] = start_training,
    ) -> None:
        self.store, self.reference, self.settings, self.start = store, reference, settings, start
        self.runs: list[subprocess.Popen[bytes]] = []
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
            return self.store.record_retrain(
                now, drifted, "", "drift, but no session in the raw bucket to train on", ""
            )
        trigger = self.store.record_retrain(now, drifted, session, "starting", "")
        try:
            process, log = self.start(self.settings, session, now)
        except Exception as error:
            self.store.update_retrain(trigger, f"could not start: {error}")
            raise
        self.runs.append(process)
        self.store.update_retrain(trigger, f"running (pid {process.pid}); log {log}")
        logger.warning("drift in %s: started a training run on %s (log %s)", ", ".join(drifted), session, log)
        return trigger

    def stop(self) -> None:
        self._stop.set()
        for process in self.runs:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
