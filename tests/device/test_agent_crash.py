"""`kill -9` of the edge agent during the download and during the swap, at every file-system operation.

A device (provisioned once with the publisher's root.json via --root; it holds no signing keys) runs v1,
then v2 is published. A dry run of the update v1 -> v2 through `crash_harness.py` numbers every file-system
operation the agent makes in its state directory. Then, for each kill point, a fresh copy of the v1 device
runs the same update and gets SIGKILL just before one of those operations, just after an `open` for writing
(file created or truncated, nothing written yet), or after a random wall-clock delay. Afterwards the device
must still hold an intact v1 or v2 model that ExecuTorch loads and runs with finite output, and the next
plain `agent --once` must exit 0 with v2 installed as current, `downloads/` empty, no temporary file left
anywhere in the state directory and no model kept but the current and previous ones.

Sampling and wall-clock delays come from a seeded `random.Random`; the seed is printed, and
EDGEOPS_CRASH_SEED=<seed> replays a run. Agent runs are children forked by one harness process that has
imported torch and the ExecuTorch runtime already (a new interpreter costs 5-10 s of imports); two kills and
three next polls run in new interpreters instead, to show the forked runs behave like real ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from edgeops.device.agent import Agent
from edgeops.device.state import DOWNLOADS
from edgeops.runtime import Program
from edgeops.settings import Settings
from tests.conftest import REPO
from tests.support.crash_harness import DOWNLOAD, SWAP
from tests.support.releases import INPUT_SHAPE, OUTPUT_SHAPE, TinyModel, release, tiny_model, unique_model_name

HARNESS = Path(__file__).parents[1] / "support" / "crash_harness.py"
PYTHON = sys.executable
SIGKILLED = -signal.SIGKILL
ALL_EVENT_POINTS_UP_TO = 80  # up to this many kill points at operations, all of them; above, a sample
SAMPLED_EVENT_POINTS = 40
WALL_CLOCK_KILLS = 4
JOB_TIMEOUT_S = 120.0


class Harness:
    """`crash_harness.py serve`: one process that forks a fresh agent run per job."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.stderr = (workdir / "harness.stderr").open("wb")
        self.process = subprocess.Popen(
            [PYTHON, str(HARNESS), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=REPO,
            env=env,
            start_new_session=True,  # its own process group: stop() takes any forked child with it
        )
        self._hello: dict[str, Any] | None = None  # it imports while the test publishes and provisions

    def hello(self) -> dict[str, Any]:
        if self._hello is None:
            self._hello = self._answer(300)
        return self._hello

    def _answer(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(
                f"the crash harness did not answer within {timeout_s:.0f} s; its stderr:\n"
                + (self.workdir / "harness.stderr").read_text()[-3000:]
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def job(self, **job: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.hello()
        self.process.stdin.write(json.dumps({"timeout_s": JOB_TIMEOUT_S, **job}, default=str) + "\n")
        self.process.stdin.flush()
        return self._answer(JOB_TIMEOUT_S + 30)

    def stop(self) -> None:
        try:
            if self.process.stdin is not None:
                with contextlib.suppress(OSError):
                    self.process.stdin.close()
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # the server and any child still alive
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.stderr.close()


@pytest.fixture
def device_env(stack_settings: Settings, tmp_path: Path) -> dict[str, str]:
    """A device holds no publisher keys: its trust anchor is the root.json it was provisioned with (--root)."""
    return {**os.environ, "EDGEOPS_RELEASE__KEYS_DIR": str(tmp_path / "no-publisher-keys-on-the-device")}


@pytest.fixture
def harness(tmp_path: Path, device_env: dict[str, str]) -> Iterator[Harness]:
    server = Harness(tmp_path, device_env)
    try:
        yield server
    finally:
        server.stop()


def agent_args(state_dir: Path, name: str) -> list[str]:
    return ["agent", "--once", "--state-dir", str(state_dir), "--model", name]


def plain_agent(state_dir: Path, name: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m edgeops agent --once`: a new interpreter, no harness."""
    return subprocess.run(
        [PYTHON, "-m", "edgeops", *agent_args(state_dir, name), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=JOB_TIMEOUT_S + 60,
        check=False,
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def describe(event: dict[str, Any]) -> str:
    return f"#{event['n']} {event['event']} {' -> '.join(event['paths'])} ({event['phase']})"


def check_loadable(settings: Settings, name: str, state_dir: Path, models: dict[int, TinyModel]) -> tuple[int, str]:
    """The model the device would run: intact, one of ours, loads with ExecuTorch, finite output."""
    agent = Agent(settings, state_dir=state_dir, model_name=name)
    running = agent.state.running_model()
    assert running is not None, "no intact model: running_model() is None"
    model, role = running
    assert model.version in models, f"version {model.version} is neither 1 nor 2"
    assert model.sha256 == models[model.version].sha256, f"v{model.version} names a different model"
    output = Program(agent.state.model_path(model))(torch.randn(*INPUT_SHAPE))
    assert list(output.shape) == OUTPUT_SHAPE, f"output shape {list(output.shape)}"
    assert bool(torch.isfinite(output).all()), f"output {output.tolist()} is not finite"
    return model.version, role


@dataclass
class KillPoint:
    label: str
    kill_at: int = 0  # the n-th file-system operation, or 0 for a wall-clock kill
    after: bool = False  # just after operation n instead of just before it
    kill_after_s: float | None = None
    subprocess_kill: bool = False  # a new interpreter, not a fork of the harness
    subprocess_recovery: bool = False

    @property
    def spec(self) -> str:
        return f"{self.kill_at}{'+' if self.after else ''}"


@dataclass
class Update:
    """One device on v1 and one published v2: what each kill point starts from."""

    name: str
    baseline: Path
    workdir: Path
    harness: Harness
    env: dict[str, str]

    def device(self, label: str) -> Path:
        state_dir = self.workdir / label
        shutil.copytree(self.baseline, state_dir, symlinks=True)  # metadata/root.json is a symlink
        return state_dir

    def kill(self, point: KillPoint, state_dir: Path, events: Path, log: Path) -> int:
        """Run the update v1 -> v2 on `state_dir` and kill it at `point`; return its exit code."""
        args = agent_args(state_dir, self.name)
        if point.subprocess_kill:
            with log.open("w") as output:
                return subprocess.run(
                    [PYTHON, str(HARNESS), "run", str(state_dir), str(events), point.spec, "--", *args],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                    env=self.env,
                    timeout=JOB_TIMEOUT_S + 60,
                    check=False,
                ).returncode
        answer = self.harness.job(
            args=args,
            state_dir=state_dir,
            events=events,
            log=log,
            kill_at=point.kill_at,
            after=point.after,
            kill_after_s=point.kill_after_s,
        )
        assert not answer["timed_out"], f"{point.label}: the agent hung; log:\n{log.read_text()}"
        return int(answer["returncode"])

    def next_poll(self, point: KillPoint, state_dir: Path, log: Path) -> tuple[int, str]:
        """A plain `agent --once`, no hook: a new interpreter, or a fork of the harness."""
        if point.subprocess_recovery:
            completed = plain_agent(state_dir, self.name, self.env)
            return completed.returncode, completed.stdout + completed.stderr
        answer = self.harness.job(args=agent_args(state_dir, self.name), log=log)
        return int(answer["returncode"]), log.read_text()


def kill_points(events: list[dict[str, Any]], dry_seconds: float, rng: random.Random) -> list[KillPoint]:
    """Before every operation and just after every open for writing (or a sample), plus wall-clock kills."""
    points = [KillPoint(f"before {describe(event)}", kill_at=event["n"]) for event in events]
    points += [
        KillPoint(f"after {describe(event)}", kill_at=event["n"], after=True)
        for event in events
        if event["event"] == "open-write"
    ]
    if len(points) > ALL_EVENT_POINTS_UP_TO:
        points = rng.sample(points, SAMPLED_EVENT_POINTS)
    points.sort(key=lambda point: (point.kill_at, point.after))
    for _ in range(WALL_CLOCK_KILLS):
        delay = round(rng.uniform(0.0, dry_seconds), 4)
        points.append(KillPoint(f"wall clock {delay:.3f} s", kill_after_s=delay))
    # A download-phase and a swap-phase kill in a new interpreter, and one more plain-subprocess next poll.
    for wanted in (DOWNLOAD, SWAP):
        chosen = rng.choice([p for p in points if p.kill_at and events[p.kill_at - 1]["phase"] == wanted])
        chosen.subprocess_kill = chosen.subprocess_recovery = True
    rng.choice([p for p in points if not p.subprocess_kill]).subprocess_recovery = True
    return points


ATOMIC_WRITE_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # edgeops.files.atomic_write: .{name}.{hex}.tmp


def leftovers(state_dir: Path, name: str, settings: Settings) -> list[str]:
    """What a kill and the next poll left behind: temporary files anywhere (atomic_write's, python-tuf's in
    metadata/), anything in downloads/, models neither current nor previous."""
    installed = Agent(settings, state_dir=state_dir, model_name=name).state.installed()
    keep = {f"{m.sha256}.pte" for m in (installed.current, installed.previous) if m is not None}
    found = [str(p.relative_to(state_dir)) for p in state_dir.rglob("*") if ATOMIC_WRITE_TEMPORARY.fullmatch(p.name)]
    found += [f"metadata/{p.name}" for p in (state_dir / "metadata").iterdir() if p.name.startswith("tmp")]
    found += [f"{DOWNLOADS}/{p.name}" for p in (state_dir / DOWNLOADS).iterdir()]
    found += [f"models/{p.name}" for p in (state_dir / "models").iterdir() if p.name not in keep]
    return sorted(found)


def test_kill_9_during_download_and_swap_leaves_a_loadable_model_and_the_next_poll_recovers(
    stack_settings: Settings,
    tmp_path: Path,
    harness: Harness,
    device_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="torch.__trace")  # exporting the models logs pages of DEBUG records
    started = time.monotonic()
    seed = int(os.environ.get("EDGEOPS_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n[crash] seed {seed} (replay with EDGEOPS_CRASH_SEED={seed})")
    rng = random.Random(seed)

    # The device: provisioned with the publisher's root.json, v1 installed by the real CLI; then v2 is published.
    name = unique_model_name("crash")
    models = {1: tiny_model(1), 2: tiny_model(2)}
    release(stack_settings, name, models[1])
    provisioned_root = tmp_path / "provisioned-root.json"
    shutil.copy(stack_settings.release.keys_dir / "root.json", provisioned_root)
    baseline = tmp_path / "baseline"
    first = plain_agent(baseline, name, device_env, "--root", str(provisioned_root))
    assert first.returncode == 0, first.stdout + first.stderr
    assert check_loadable(stack_settings, name, baseline, models) == (1, "current")
    release(stack_settings, name, models[2])
    update = Update(name, baseline, tmp_path, harness, device_env)
    hello = harness.hello()
    assert hello["os_threads"] == 1, f"the harness must fork a single-threaded process: {hello}"
    print(f"[crash] device on v1, v2 published: {time.monotonic() - started:.1f} s")

    # Dry run: number the operations of one update, v1 -> v2, and time it.
    dry = update.device("dry-run")
    result = harness.job(
        args=agent_args(dry, name), state_dir=dry, events=tmp_path / "dry-run.events", log=tmp_path / "dry-run.log"
    )
    assert result["returncode"] == 0, (tmp_path / "dry-run.log").read_text()
    assert check_loadable(stack_settings, name, dry, models) == (2, "current")
    assert leftovers(dry, name, stack_settings) == [], "an update that was never killed left files behind"
    events = read_events(tmp_path / "dry-run.events")
    print(f"[crash] dry run: {len(events)} file-system operations in {result['seconds']:.2f} s")
    for event in events:
        print(f"[crash]   {describe(event)}")
    phases = {event["phase"] for event in events}
    assert DOWNLOAD in phases and SWAP in phases, f"the dry run saw no download or no swap: {phases}"

    failures: list[str] = []
    killed = 0
    points = kill_points(events, float(result["seconds"]), rng)
    for index, point in enumerate(points):
        label = f"point-{index:02d}"
        state_dir = update.device(label)
        events_file, log = tmp_path / f"{label}.events", tmp_path / f"{label}.log"
        returncode = update.kill(point, state_dir, events_file, log)
        seen = read_events(events_file)
        if point.kill_at:
            assert returncode == SIGKILLED, (
                f"{point.label}: exit code {returncode}, not SIGKILL; log:\n{log.read_text()}"
            )
            last = seen[-1] if seen else {}
            assert last.get("n") == point.kill_at and last.get("event") == events[point.kill_at - 1]["event"], (
                f"{point.label}: the run died at {last} instead: the operations are not the same in every run"
            )
        else:
            point.label += f", after {len(seen)} operations" + (" (finished first)" if returncode == 0 else "")
        killed += returncode == SIGKILLED

        problems = []
        try:
            after_kill: tuple[int, str] | None = check_loadable(stack_settings, name, state_dir, models)
        except Exception as error:
            after_kill = None
            problems.append(f"UNLOADABLE after the kill: {type(error).__name__}: {error}")
        recovery_rc, recovery_log = update.next_poll(point, state_dir, tmp_path / f"{label}.next-poll.log")
        try:
            after_recovery: tuple[int, str] | None = check_loadable(stack_settings, name, state_dir, models)
        except Exception as error:
            after_recovery = None
            problems.append(f"unloadable after the next poll: {type(error).__name__}: {error}")
        if recovery_rc != 0 or after_recovery != (2, "current"):
            problems.append(f"next poll exit {recovery_rc}, runs {after_recovery}")
        try:
            if left := leftovers(state_dir, name, stack_settings):
                problems.append(f"left behind {left}")
        except Exception as error:
            problems.append(f"leftovers unreadable: {type(error).__name__}: {error}")
        line = (
            f"{point.label} [{'subprocess' if point.subprocess_kill else 'fork'} kill, exit {returncode}; "
            f"{'subprocess' if point.subprocess_recovery else 'fork'} next poll]: "
            f"runs {after_kill} after the kill, {after_recovery} after the next poll"
        )
        print(f"[crash] {index:2d} {line}")
        if problems:
            failures.append(f"{line}: {'; '.join(problems)}\n    next poll said: {recovery_log.strip()[-800:]}")

    unloadable = sum("UNLOADABLE" in failure for failure in failures)
    summary = (
        f"{unloadable} unloadable states across {len(points)} kill points "
        f"({killed} SIGKILLed, {len(points) - WALL_CLOCK_KILLS} at file-system operations, "
        f"{len(failures)} failed, seed {seed}, {time.monotonic() - started:.0f} s)"
    )
    print(f"[crash] {summary}")
    assert not failures, summary + "\n" + "\n".join(failures)
    assert len(points) >= 20 and killed >= 20, summary
