"""The agent survives whatever a cycle raises, records it in status.json, and one state directory has one agent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeops.device.agent import Agent, AgentError
from edgeops.device.loop import run
from edgeops.device.state import LOCK_FILE, STATUS_FILE, StateDirBusyError, StateLock
from edgeops.settings import Settings
from tests.conftest import REPO
from tests.support.releases import release, tiny_model, unique_model_name

DEAD_REPOSITORY = "http://127.0.0.1:9/nothing/"  # the discard port: connection refused at once


def status(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


class Running:
    """`loop.run` in a thread, as `edgeops agent` runs it, with what it reports."""

    def __init__(self, agent: Agent, interval_s: float) -> None:
        self.reports: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run, args=(agent, interval_s, None, self.reports.append, self.stop))
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the agent did not stop"


def test_an_unexpected_error_in_a_cycle_is_recorded_and_the_next_cycle_succeeds(
    stack_settings: Settings, tmp_path: Path
) -> None:
    name = unique_model_name("robust")
    release(stack_settings, name, tiny_model(1))
    agent = Agent(stack_settings, state_dir=tmp_path / "device", model_name=name)
    downloads = agent.state.downloads_dir
    downloads.rmdir()
    downloads.write_text("a file where the agent keeps its downloads")  # not one of our error types: an OSError

    with pytest.raises(AgentError, match="FileExistsError"):
        agent.poll()
    failed = status(agent.state.root)
    assert failed["last_error"] and "FileExistsError" in failed["last_error"]
    assert failed["last_failure"]["type"] == "FileExistsError"
    assert failed["last_failure"]["at"] == failed["last_check"]
    assert failed["failures_in_a_row"] == 1 and failed["installed"] is None

    downloads.unlink()  # the cause is gone
    downloads.mkdir()
    assert agent.poll().outcome == "installed v1"
    recovered = status(agent.state.root)
    assert recovered["last_error"] is None and recovered["failures_in_a_row"] == 0
    assert recovered["installed"]["version"] == 1
    assert recovered["last_failure"] == failed["last_failure"], "the newest failure stays for the operator"


def test_the_poll_loop_survives_an_error_outside_the_poll_and_recovers(
    stack_settings: Settings, tmp_path: Path
) -> None:
    name = unique_model_name("robust-loop")
    release(stack_settings, name, tiny_model(1))
    agent = Agent(stack_settings, state_dir=tmp_path / "device", model_name=name)
    installed = agent.state.root / "installed.json"
    installed.write_text("{ half a file")  # the loop reads it before it polls

    running = Running(agent, interval_s=0.1)
    try:
        wait_for(lambda: status(agent.state.root).get("failures_in_a_row", 0) >= 2, "two failed cycles")
        failed = status(agent.state.root)
        assert failed["last_failure"]["type"] == "StateDirError"
        assert f"{installed} is unreadable" in failed["last_error"]
        assert running.thread.is_alive()
        installed.unlink()  # the cause is gone
        wait_for(lambda: (status(agent.state.root).get("installed") or {}).get("version") == 1, "v1 installed")
    finally:
        running.finish()
    assert status(agent.state.root)["last_error"] is None
    assert any("poll failed, keeping the running model; retrying in 0.1 s" in line for line in running.reports)


def offline_agent(state_dir: Path) -> Agent:
    """An agent whose every poll fails: no trusted root, and nothing listening at its repository."""
    return Agent(
        Settings(), state_dir=state_dir, model_name="offline", repository_url=DEAD_REPOSITORY, trusted_root=Path("/-")
    )


def test_the_poll_loop_survives_when_even_the_status_cannot_be_written(tmp_path: Path) -> None:
    agent = offline_agent(tmp_path / "device")
    status_file = agent.state.root / STATUS_FILE
    status_file.mkdir()  # writing status.json fails: an OSError inside the error handling itself

    running = Running(agent, interval_s=0.05)
    try:
        wait_for(lambda: sum("poll failed" in line for line in running.reports) >= 2, "two reported failures")
        assert "status.json could not be updated either" in running.reports[0]
        assert running.thread.is_alive()
        status_file.rmdir()
        wait_for(lambda: status(agent.state.root).get("failures_in_a_row", 0) >= 1, "a recorded failure")
    finally:
        running.finish()
    assert status(agent.state.root)["last_failure"]["type"] == "AgentError"
    assert "no trusted root" in status(agent.state.root)["last_error"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit, on purpose
def test_keyboard_interrupt_and_system_exit_still_stop_the_agent(tmp_path: Path) -> None:
    agent = offline_agent(tmp_path / "device")

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    agent.updater.refresh = interrupted
    with pytest.raises(KeyboardInterrupt):
        agent.poll()

    def exiting(*_: object) -> None:
        raise SystemExit(3)

    agent.updater.refresh = exiting
    running = Running(agent, interval_s=0.05)
    running.thread.join(timeout=30)  # the poller is gone, so the agent ends instead of running without updates
    assert not running.thread.is_alive()
    assert running.stop.is_set()


def agent_command(state_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgeops", "agent", "--state-dir", str(state_dir), "--model", "offline", *extra]


def test_a_second_agent_on_a_state_directory_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    state_dir = tmp_path / "device"
    env = {**os.environ, "EDGEOPS_RELEASE__KEYS_DIR": str(tmp_path / "no-keys")}
    log = (tmp_path / "first.log").open("w")
    # The first agent polls a dead repository: every cycle fails, and it keeps running.
    first = subprocess.Popen(
        agent_command(state_dir, "--repository", DEAD_REPOSITORY, "--interval", "3600"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        lock_file = state_dir / LOCK_FILE

        def locked_or_gone() -> bool:
            return (lock_file.is_file() and lock_file.read_text().strip() == str(first.pid)) or first.poll() is not None

        wait_for(locked_or_gone, "the first agent to take the lock", timeout_s=120)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        wait_for(lambda: status(state_dir).get("failures_in_a_row", 0) >= 1, "the first agent's failed poll", 120)

        second = subprocess.run(
            agent_command(state_dir, "--once"), capture_output=True, text=True, cwd=REPO, env=env, timeout=120
        )
        said = " ".join((second.stdout + second.stderr).split())  # rich wraps long lines
        assert second.returncode == 1, said
        assert f"{state_dir} is in use by another edgeops agent (pid {first.pid}" in said
        assert "give this one another --state-dir" in said
        assert first.poll() is None, "the first agent keeps running"

        with pytest.raises(StateDirBusyError, match=f"pid {first.pid}"):
            StateLock(state_dir)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        log.close()
    with StateLock(state_dir):  # the kernel dropped the killed agent's lock
        assert (state_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
    shutil.rmtree(state_dir)
