"""`edgeops fleet simulate`: devices running the agent's own code, a worker killed and the broker restarted
mid-run, and every message accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgeops.settings import Settings
from tests.conftest import REPO
from tests.support.releases import release, tiny_model, unique_model_name


def test_a_simulated_fleet_installs_reports_and_loses_nothing(stack_settings: Settings, tmp_path: Path) -> None:
    name = unique_model_name("sim")
    release(stack_settings, name, tiny_model(2))
    figures = tmp_path / "figures.json"
    command = [
        sys.executable, "-m", "edgeops", "fleet", "simulate",
        "--devices", "6", "--duration", "40", "--report-interval", "1", "--poll-interval", "5",
        "--workers", "2", "--prefix", "simtest", "--model", name,
        "--kill-worker-at", "15", "--restart-broker-at", "25", "--json", str(figures),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(figures.read_text())
    assert result["devices"] == 6 and result["lost"] == 0
    assert result["worker_restarts"] >= 1 and len(result["broker_restarts"]) == 1
    assert result["issued"] >= 6 * 30  # a heartbeat and statistics per device per second, for most of 40 s
    assert result["stored"] == result["issued"] - result["dropped"] - result["queued"]
    for device, counts in result["per_device"].items():
        assert counts["stored"] == counts["issued"], device  # nothing dropped, nothing left behind

    with __import__("urllib.request").request.urlopen(f"{stack_settings.fleet_url}/api/fleet", timeout=20) as answer:
        fleet = json.loads(answer.read())
    simulated = [d for d in fleet["devices"] if d["device_id"].startswith("simtest-")]
    assert len(simulated) == 6 and all(d["version"] == 1 and d["model"] == name for d in simulated)
    assert any(row["version"] == 1 and row["inferences"] > 0 for row in fleet["latency"])
