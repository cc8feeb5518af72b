"""How long from a promotion finishing until a polling device runs the new model.

Real parts throughout: models trained, exported and verified by the stages (three
training seeds, so every promotion brings bytes the device has never seen, not a
kept copy), promoted with `promote()`, and an `edgeops agent` process polling the
local stack at `interval_s` while classifying a replayed recording. A model counts
as running when the agent writes its first prediction with the new version.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgeops.device.state import PREDICTIONS_FILE, STATUS_FILE
from edgeops.errors import EdgeopsError
from edgeops.ota.keys import ensure_keys
from edgeops.settings import BenchmarkConfig, Dataset, Settings
from edgeops.stack import supervisor
from edgeops.stages.benchmark import benchmark
from edgeops.stages.export import export
from edgeops.stages.ingest import ingest
from edgeops.stages.promote import promote
from edgeops.stages.train import train
from edgeops.stages.verify import VerifiedModel, verify

SEEDS = (7, 8, 9)  # three distinct models: the device never holds the next one already
WAIT_LIMIT_S = 60.0


def reusable(verified_dir: Path) -> bool:
    """A verified model from an earlier run, in this version's record format."""
    try:
        VerifiedModel.load(verified_dir)
    except (FileNotFoundError, ValidationError):
        return False
    return True


def verified_models(settings: Settings, work: Path, report: Callable[[str], None]) -> list[Path]:
    """One verified model per seed, reused from an earlier run of this benchmark when present.

    Each seed gets its own ingest, because ingest opens the MLflow run the later stages log into.
    """
    quick = settings.model_copy(update={"benchmark": BenchmarkConfig(latency_runs=200, warmup_runs=20)})
    directories = []
    for seed in SEEDS:
        model_dir = work / f"seed-{seed}"
        if not reusable(model_dir / "verify"):
            report(f"training, exporting and verifying the seed-{seed} model (once; reused next time)")
            track = quick.mat.model_copy(update={"train": quick.mat.train.model_copy(update={"seed": seed})})
            seeded = quick.model_copy(update={"mat": track})
            dataset = model_dir / "ingest"
            ingest(Dataset.mat, dataset, seeded)
            train(dataset, model_dir / "train", seeded)
            export(dataset, model_dir / "train", model_dir / "export", seeded)
            benchmark(dataset, model_dir / "train", model_dir / "export", model_dir / "benchmark", seeded)
            verify(dataset, model_dir / "export", model_dir / "benchmark", model_dir / "verify", seeded)
        directories.append(model_dir / "verify")
    shas = {VerifiedModel.load(d).sha256 for d in directories}
    if len(shas) != len(directories):
        raise EdgeopsError("the seeds produced identical models; the benchmark needs distinct ones")
    return directories


def _first_prediction_at(predictions: Path, version: int, offset: int) -> float | None:
    if not predictions.exists():
        return None
    with predictions.open() as handle:
        handle.seek(offset)
        for line in handle:
            record = json.loads(line)
            if record["version"] == version:
                return datetime.fromisoformat(record["at"]).timestamp()
    return None


def measure(settings: Settings, trials: int, interval_s: float, report: Callable[[str], None]) -> dict[str, Any]:
    ensure_keys(settings.release)
    supervisor.start(settings)
    work = settings.out_dir / "bench-ota"
    models = verified_models(settings, work, report)
    name = f"{settings.mat.model_name}-ota-bench-{int(time.time())}"
    device = work / "device" / name
    promote(models[0], work / "promotions" / "0", settings, name)

    recording = Path(settings.mat.session_manifest).parent / "occupied.csv"
    command = [
        sys.executable,
        "-m",
        "edgeops",
        "agent",
        "--model",
        name,
        "--state-dir",
        str(device),
        "--interval",
        str(interval_s),
        "--source",
        f"replay:{recording}",
        "--speed",
        "1",
        "--repeat",
    ]
    log = (work / "agent.log").open("w")
    agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    results: list[dict[str, float]] = []  # seconds; negative when installed before promote() returned
    seed = random.SystemRandom().randrange(1 << 32)  # recorded, so a run's promotion phases can be replayed
    try:
        _wait_for_version(device, 1, agent)
        rng = random.Random(seed)
        for trial in range(1, trials + 1):
            time.sleep(rng.uniform(0, interval_s))  # promotions land at any phase of the poll cycle
            predictions = device / PREDICTIONS_FILE
            offset = predictions.stat().st_size if predictions.exists() else 0
            started = time.time()
            promotion = promote(models[trial % len(models)], work / "promotions" / str(trial), settings, name)
            finished = time.time()
            if promotion.release_version is None:
                raise EdgeopsError("bench-ota times promote's own signing: set EDGEOPS_RELEASE__SIGNED_BY=promote")
            running_at = _wait_for_version(device, promotion.release_version, agent, predictions, offset)
            status = json.loads((device / STATUS_FILE).read_text())
            installed_at = datetime.fromisoformat(status["installed"]["installed_at"]).timestamp()
            results.append(
                {
                    "release_version": promotion.release_version,
                    "installed_s": round(installed_at - finished, 3),
                    "running_s": round(running_at - finished, 3),
                    # An upper bound that does not depend on when inside promote() the release went live.
                    "running_since_promote_started_s": round(running_at - started, 3),
                    "model_bytes": status["last_poll"]["target_bytes"] if status["last_poll"] else 0,
                }
            )
            report(
                f"trial {trial}: v{promotion.release_version} installed {results[-1]['installed_s']:.2f} s and "
                f"running {results[-1]['running_s']:.2f} s after its promotion finished"
            )
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
    running = [r["running_s"] for r in results]
    summary = {
        "model_name": name,
        "interval_s": interval_s,
        "phase_seed": seed,
        "trials": results,
        "running_s_max": max(running),
        "running_s_median": statistics.median(running),
        "running_since_promote_started_s_max": max(r["running_since_promote_started_s"] for r in results),
        "agent_log": str(work / "agent.log"),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _wait_for_version(
    device: Path, version: int, agent: subprocess.Popen[bytes], predictions: Path | None = None, offset: int = 0
) -> float:
    """Wall time of the first prediction made with `version`."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    predictions = predictions or device / PREDICTIONS_FILE
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise EdgeopsError(f"the agent exited with {agent.returncode}; see its log next to {device}")
        at = _first_prediction_at(predictions, version, offset)
        if at is not None:
            return at
        time.sleep(0.02)
    raise EdgeopsError(f"the agent did not run v{version} within {WAIT_LIMIT_S:g} s")
