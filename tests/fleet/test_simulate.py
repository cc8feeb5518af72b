"""`edgeops fleet simulate`: devices running the agent's own code, a worker killed and the broker restarted
mid-run, and every message accounted for."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
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


def test_sigterm_ends_a_simulation_early_and_stops_its_workers(stack_settings: Settings, tmp_path: Path) -> None:
    """`kill <simulate>` (as a test's teardown does) stops the workers it started and still accounts for messages."""
    name = unique_model_name("simterm")
    release(stack_settings, name, tiny_model(2))
    figures = tmp_path / "figures.json"
    command = [
        sys.executable, "-m", "edgeops", "fleet", "simulate", "--devices", "2", "--duration", "900",
        "--report-interval", "1", "--workers", "2", "--prefix", "simterm", "--model", name, "--json", str(figures),
    ]  # fmt: skip
    simulation = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(workers := children(simulation.pid)) < 2:
            time.sleep(0.5)
        assert len(workers) == 2, workers
        time.sleep(3)
        simulation.send_signal(signal.SIGTERM)
        output, _ = simulation.communicate(timeout=120)
    finally:
        if simulation.poll() is None:
            simulation.kill()
            simulation.wait()
    assert simulation.returncode == 0, output.decode(errors="replace")[-3000:]
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived the simulation"
    result = json.loads(figures.read_text())
    assert result["devices"] == 2 and result["lost"] == 0 and result["stored"] > 0


def children(pid: int) -> list[int]:
    """The processes `pid` started (Linux: /proc/<pid>/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found
