"""Health-gated staged rollouts on a simulated fleet: real releases, real faults, real telemetry.

Twenty simulated devices (the agent's own code, `edgeops fleet simulate`) run a baseline model that tells the
two recordings apart. Then four candidates roll out in steps of 50 % and 100 %: one that fails its smoke test
(its signed reference outputs are wrong), one that loads but is a hundred times slower, one whose predictions
collapse to one class, and a healthy one. Each bad one must halt at its first step and be rolled back, with no
device outside the first step's cohort ever installing it; the healthy one must reach every device.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeops.fleet import rollout as controller
from edgeops.ota.release import cohort_position
from edgeops.settings import Settings
from tests.conftest import REPO
from tests.support.releases import TinyModel, mat_model, release, unique_model_name

DEVICES = 20
FIRST_STEP = 50
# Five times the mats' pace: within one bake, each device's mat goes through both recordings (a minute each), so
# a healthy model's predictions are mixed and a collapsed one's stand out.
SPEED = 5


def fleet_devices(settings: Settings, model: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{settings.fleet_url}/api/devices", timeout=20) as response:
        return [d for d in json.loads(response.read()) if d["model"] == model]


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def fleet(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Twenty simulated devices on the baseline, reporting every second and polling every two."""
    name = unique_model_name("rollout")
    release(stack_settings, name, mat_model("baseline"))
    log = tmp_path_factory.mktemp("rollout") / "simulate.log"
    command = [
        sys.executable, "-m", "edgeops", "fleet", "simulate", "--devices", str(DEVICES), "--duration", "900",
        "--report-interval", "1", "--poll-interval", "2", "--workers", "2", "--prefix", "ro", "--model", name,
        "--speed", str(SPEED),
    ]  # fmt: skip
    with log.open("wb") as handle:
        simulation = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    try:
        baseline = mat_model("baseline").sha256
        wait_for(
            "every device on the baseline",
            lambda: sum(d["sha256"] == baseline for d in fleet_devices(stack_settings, name)) == DEVICES,
        )
        yield name, stack_settings.state_dir.resolve() / "fleet" / "simulated"
    finally:
        simulation.send_signal(signal.SIGTERM)
        try:
            simulation.wait(120)
        except subprocess.TimeoutExpired:
            simulation.kill()
            simulation.wait()


def roll_out(settings: Settings, name: str, candidate: TinyModel, **changes: object) -> controller.Rollout:
    release(settings, name, candidate, rollout_percent=FIRST_STEP, **changes)
    # A latency bound with room for a loaded CI machine: the slow candidate is about ten times slower.
    bounds = controller.Bounds(max_failure_rate=0.2, min_inferences=150, max_latency_ratio=3.0)
    plan = controller.plan(settings, name, "stable", [FIRST_STEP, 100], 10.0, 3, bounds, 60.0)
    return controller.run(settings, plan, print, poll_s=0.5)


def assert_halted_and_rolled_back(
    settings: Settings, name: str, states: Path, done: controller.Rollout, bad: str
) -> None:
    assert done.status == "halted" and done.steps[0].decision == "halt" and done.steps[1].version is None
    assert done.rollback_version is not None and done.crossed_at is not None and done.rollback_live_at is not None
    baseline = mat_model("baseline").sha256
    wait_for("every device back on the baseline", lambda: all(
        d["sha256"] == baseline for d in fleet_devices(settings, name)
    ))  # fmt: skip
    for device in (f"ro-{index:03d}" for index in range(DEVICES)):
        installed = json.loads((states / device / "installed.json").read_text())
        held = {(installed.get(role) or {}).get("sha256") for role in ("current", "previous")}
        if cohort_position(device, name) >= FIRST_STEP:
            assert bad not in held, f"{device} is outside the first step, yet installed the bad release"
    print(
        f"\nhalted in {(done.steps[0].decided_at - done.crossed_at).total_seconds():.2f} s after the bound was seen "
        f"crossed, rollback live {(done.rollback_live_at - done.crossed_at).total_seconds():.2f} s after: "
        f"{done.steps[0].why}"
    )


def test_a_release_that_fails_its_smoke_test_halts_and_rolls_back(
    stack_settings: Settings, fleet: tuple[str, Path]
) -> None:
    name, states = fleet
    candidate = mat_model("candidate")
    wrong = [[value + 5.0 for value in row] for row in candidate.reference_output]
    done = roll_out(stack_settings, name, candidate, reference_output=wrong)
    assert "smoke-test" in done.steps[0].why
    assert_halted_and_rolled_back(stack_settings, name, states, done, candidate.sha256)


def test_a_slow_release_halts_and_rolls_back(stack_settings: Settings, fleet: tuple[str, Path]) -> None:
    name, states = fleet
    done = roll_out(stack_settings, name, mat_model("slow"))
    assert "latency" in done.steps[0].why
    assert_halted_and_rolled_back(stack_settings, name, states, done, mat_model("slow").sha256)


def test_a_release_whose_predictions_collapse_halts_and_rolls_back(
    stack_settings: Settings, fleet: tuple[str, Path]
) -> None:
    name, states = fleet
    done = roll_out(stack_settings, name, mat_model("collapse"))
    assert "collapsed" in done.steps[0].why
    assert_halted_and_rolled_back(stack_settings, name, states, done, mat_model("collapse").sha256)


def test_a_healthy_release_reaches_every_device(stack_settings: Settings, fleet: tuple[str, Path]) -> None:
    name, _ = fleet
    started = time.monotonic()
    done = roll_out(stack_settings, name, mat_model("candidate"))
    assert done.status == "completed", [step.why for step in done.steps]
    assert [step.decision for step in done.steps] == ["advance", "advance"]
    candidate = mat_model("candidate").sha256
    wait_for("every device on the candidate", lambda: all(
        d["sha256"] == candidate for d in fleet_devices(stack_settings, name)
    ))  # fmt: skip
    print(f"\nhealthy release at 100 % in {time.monotonic() - started:.1f} s, 0 devices left behind")
    again = controller.run(stack_settings, done, print)  # a restarted controller decides nothing twice
    assert again.model_dump() == done.model_dump()

    with urllib.request.urlopen(f"{stack_settings.fleet_url}/api/fleet", timeout=20) as response:
        shown = [r for r in json.loads(response.read())["rollouts"] if r["model"] == name]
    assert shown and shown[0]["status"] == "completed"  # the dashboard's rollout panel reads this
    status = subprocess.run(
        [sys.executable, "-m", "edgeops", "rollout", "status", "--model", name],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "completed" in status.stdout and "advance" in status.stdout
