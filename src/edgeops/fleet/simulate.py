"""A fleet on one machine: N devices running the agent's own update and telemetry code.

Each simulated device is an `Agent` (its own state directory, polling the real OTA bucket with python-tuf), a
`Predictor` running the installed model in ExecuTorch, and an `AgentReporter` with its own broker identity and
on-disk outbox. Its mat is a replay of the real recordings from a device-specific point, with the device's own
Gaussian noise (and an optional offset, to make a fleet drift). Devices are shared among worker processes; the
coordinator restarts a worker that dies (so `kill -9` of one is survivable, as it is for a real agent), can
restart the broker mid-run, and at the end accounts for every message: issued = stored + dropped + still queued
+ lost.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.datasets.mat import Frame
from edgeops.device.agent import Agent, AgentError
from edgeops.device.loop import Predictor
from edgeops.device.outbox import Outbox
from edgeops.device.telemetry import OUTBOX_FILE, AgentReporter, BrokerCredentials, Telemetry
from edgeops.fleet.credentials import add_devices
from edgeops.fleet.reference import recorded_pressures
from edgeops.settings import Settings
from edgeops.stack import supervisor

FRAME_HZ = 6.3  # the mat's notification rate (docs/ble-protocol.md)


@dataclass(frozen=True)
class Plan:
    """What the coordinator asks of each worker (passed as JSON on its command line)."""

    device_ids: list[str]
    starts: list[float]  # where in the recordings each device's mat starts, as a fraction of their length
    model_name: str
    root: str  # simulated devices' state directories live in <root>/<id>
    report_interval_s: float
    poll_interval_s: float
    frame_hz: float
    noise_pa: float
    offset_pa: float
    seed: int


def device_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index:03d}" for index in range(count)]


class SimulatedDevice:
    def __init__(self, device_id: str, start: float, plan: Plan, settings: Settings, frames: np.ndarray) -> None:
        self.device_id = device_id
        state_dir = Path(plan.root) / device_id
        credentials = BrokerCredentials.load(settings.device_credentials_dir / f"{device_id}.json")
        self.agent = Agent(settings, state_dir, plan.model_name, device_id=device_id)
        self.agent.check_installed()
        telemetry = Telemetry(credentials, state_dir, settings.fleet).start()
        self.reporter = AgentReporter(self.agent, telemetry, settings.mat.data.channel_columns)
        seed = plan.seed + int.from_bytes(device_id.encode(), "little") % 100_003
        self.random = np.random.default_rng(seed)
        self.frames = frames
        self.position = int(start * len(frames))
        self.noise = plan.noise_pa
        self.offset = plan.offset_pa
        self.predictor: Predictor | None = None
        self.changed = threading.Event()
        self.changed.set()

    def poll(self) -> None:
        before = self.agent.state.installed().current
        with contextlib.suppress(AgentError):  # reported, and in status.json; the running model keeps running
            self.reporter.poll()
        if self.agent.state.installed().current != before:
            self.changed.set()

    def step(self) -> None:
        """One frame from this device's mat, classified by its installed model."""
        base = self.frames[self.position % len(self.frames)]
        self.position += 1
        pressures = tuple(float(v) for v in base + self.offset + self.random.normal(0, self.noise, base.shape))
        if self.changed.is_set():
            self.changed.clear()
            recent = self.predictor.window.frames if self.predictor else ()
            self.predictor = Predictor(self.agent, recent) if self.agent.state.running_model() else None
        if self.predictor is None:
            self.reporter.observe(pressures, None, None)
            return
        try:
            prediction = self.predictor.feed(Frame(datetime.now(UTC), pressures))
        except Exception:
            self.reporter.interval.errors += 1
            return
        self.reporter.observe(
            pressures,
            prediction["label"] if prediction else None,
            prediction["latency_ms"] / 1000 if prediction else None,
            self.predictor.model.version,
        )

    def close(self, drain_s: float) -> None:
        self.reporter.report()
        self.reporter.telemetry.drain(drain_s)
        self.reporter.telemetry.close()


def run_worker(plan: Plan, settings: Settings) -> None:
    """Run this worker's devices until SIGTERM; then a last report each, drained to the broker if it can be."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <worker>` prints every thread's stack to its log
    frames = recorded_pressures(settings.mat.session_manifest, settings.mat.data)
    simulated = [
        SimulatedDevice(device_id, start, plan, settings, frames)
        for device_id, start in zip(plan.device_ids, plan.starts, strict=True)
    ]
    polls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="poll")
    next_poll = {d.device_id: time.monotonic() + random.uniform(0, 2) for d in simulated}
    busy: set[str] = set()
    lock = threading.Lock()

    def poll(device: SimulatedDevice) -> None:
        try:
            device.poll()
        finally:
            with lock:
                busy.discard(device.device_id)

    def report_forever() -> None:
        """Every device reports every `report_interval_s`, on a fixed schedule however long a round takes."""
        due = time.monotonic()
        while not stop.wait(max(0.0, (due := due + plan.report_interval_s) - time.monotonic())):
            for device in simulated:
                device.reporter.report()

    reporter = threading.Thread(target=report_forever, name="report", daemon=True)
    reporter.start()
    tick = 1 / plan.frame_hz
    deadline = time.monotonic()
    coordinator = os.getppid()
    while not stop.is_set():
        if os.getppid() != coordinator:  # the coordinator is gone: nobody would stop or account for us
            stop.set()
        now = time.monotonic()
        for device in simulated:
            with lock:
                due = next_poll[device.device_id] <= now and device.device_id not in busy
                if due:
                    busy.add(device.device_id)
                    next_poll[device.device_id] = now + plan.poll_interval_s
            if due:
                polls.submit(poll, device)
            device.step()
        deadline += tick
        stop.wait(max(0.0, deadline - time.monotonic()))
    polls.shutdown(wait=True, cancel_futures=True)
    for device in simulated:
        device.close(settings.fleet.drain_timeout_s)


@dataclass
class ProcessUsage:
    """CPU seconds and peak memory of a server process, from /proc."""

    name: str
    pid: int | None
    cpu_start: float = 0.0
    cpu_s: float = 0.0
    carried_s: float = 0.0  # CPU of earlier processes under this name (a restarted broker)
    peak_rss_mb: float = 0.0
    samples: list[float] = field(default_factory=list)

    def switch(self, pid: int | None) -> None:
        """The service was restarted: keep what its earlier process used, measure the new one from its start."""
        self.sample()
        self.carried_s, self.pid, self.samples = self.cpu_s, pid, []

    def sample(self) -> None:
        if self.pid is None:
            return
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if not self.samples:
            self.cpu_start = cpu if not self.carried_s else 0.0  # a restarted process is measured from its start
        self.samples.append(cpu)
        self.cpu_s = self.carried_s + cpu - self.cpu_start
        rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), "0")
        self.peak_rss_mb = max(self.peak_rss_mb, int(rss) / 1024)


@dataclass
class SimulationResult:
    devices: int
    seconds: float
    issued: int
    stored: int
    dropped: int
    queued: int
    lost: int
    duplicates: int
    rejected: dict[str, int]
    worker_restarts: int
    broker_restarts: list[float]
    usage: list[ProcessUsage]
    per_device: dict[str, dict[str, int]]


def simulate(
    settings: Settings,
    devices: int,
    duration_s: float,
    *,
    prefix: str = "sim",
    model_name: str | None = None,
    workers: int = 0,
    report_interval_s: float | None = None,
    poll_interval_s: float | None = None,
    speed: float = 1.0,
    offset_pa: float = 0.0,
    seed: int = 0,
    kill_worker_at: float | None = None,
    restart_broker_at: float | None = None,
    progress: Any = None,
) -> SimulationResult:
    """Run `devices` simulated devices for `duration_s` against the running stack, then account for every message."""
    names = device_names(prefix, devices)
    add_devices(settings, names)
    root = settings.state_dir.resolve() / "fleet" / "simulated"
    count = workers or settings.fleet.simulate_workers or os.cpu_count() or 1
    count = max(1, min(count, devices))
    plans = [
        Plan(
            device_ids=names[index::count],
            starts=[position / devices for position in range(devices)][index::count],
            model_name=model_name or settings.mat.model_name,
            root=str(root),
            report_interval_s=report_interval_s or settings.fleet.report_interval_s,
            poll_interval_s=poll_interval_s or settings.fleet.simulate_poll_interval_s,
            frame_hz=FRAME_HZ * speed,
            noise_pa=settings.fleet.simulate_noise_pa,
            offset_pa=offset_pa,
            seed=seed,
        )
        for index in range(count)
    ]
    usage = [
        ProcessUsage("fleet service", supervisor.running_pid(settings, "fleet")),
        ProcessUsage("broker", supervisor.running_pid(settings, "mosquitto")),
    ]
    processes = [_start_worker(plan, settings) for plan in plans]
    restarts, broker_restarts = 0, []
    started = time.monotonic()
    killed = restarted = False
    # SIGTERM ends the run early as the duration does: the workers drain and stop, and every message is accounted.
    stopped = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set()) if in_main else None
    try:
        while (elapsed := time.monotonic() - started) < duration_s and not stopped.is_set():
            for index, process in enumerate(processes):
                if process.poll() is not None:  # died (or was killed): its devices resume from their state dirs
                    restarts += 1
                    processes[index] = _start_worker(plans[index], settings)
            if kill_worker_at is not None and not killed and elapsed >= kill_worker_at:
                killed = True
                processes[0].send_signal(signal.SIGKILL)
            if restart_broker_at is not None and not restarted and elapsed >= restart_broker_at:
                restarted = True
                broker_restarts.append(supervisor.restart_broker(settings))
                usage[1].switch(supervisor.running_pid(settings, "mosquitto"))
            for item in usage:
                item.sample()
            if progress is not None:
                progress(elapsed, duration_s)
            stopped.wait(1.0)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=settings.fleet.drain_timeout_s + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return _account(settings, names, root, time.monotonic() - started, restarts, broker_restarts, usage)


def _start_worker(plan: Plan, settings: Settings) -> subprocess.Popen[bytes]:
    log = settings.state_dir.resolve() / "logs" / f"simulate-{plan.device_ids[0]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "edgeops", "fleet", "simulate-worker", json.dumps(plan.__dict__)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _account(
    settings: Settings,
    names: list[str],
    root: Path,
    seconds: float,
    restarts: int,
    broker_restarts: list[float],
    usage: list[ProcessUsage],
) -> SimulationResult:
    """Wait until the fleet service has stored what the broker acknowledged, then compare with every outbox."""
    totals: dict[str, dict[str, int]] = {}
    for device_id in names:
        outbox = Outbox(root / device_id / OUTBOX_FILE, settings.fleet.queue_limit)
        queued, dropped, issued = outbox.counts()
        outbox.close()
        totals[device_id] = {"issued": issued, "dropped": dropped, "queued": queued}
    expected = sum(t["issued"] - t["dropped"] - t["queued"] for t in totals.values())
    counters = _fleet_counters(settings)
    deadline = time.monotonic() + 60
    while _stored(counters, names) < expected and time.monotonic() < deadline:
        time.sleep(1)
        counters = _fleet_counters(settings)
    for device_id, stored in counters.get("devices", {}).items():
        if device_id in totals:
            totals[device_id]["stored"] = stored["stored"]
    issued = sum(t["issued"] for t in totals.values())
    stored_total = sum(t.get("stored", 0) for t in totals.values())
    dropped = sum(t["dropped"] for t in totals.values())
    queued = sum(t["queued"] for t in totals.values())
    return SimulationResult(
        devices=len(names),
        seconds=seconds,
        issued=issued,
        stored=stored_total,
        dropped=dropped,
        queued=queued,
        lost=issued - stored_total - dropped - queued,
        duplicates=counters.get("duplicates", 0),
        rejected={k: v for k, v in counters.get("rejected", {}).items() if v},
        worker_restarts=restarts,
        broker_restarts=broker_restarts,
        usage=usage,
        per_device=totals,
    )


def _stored(counters: dict[str, Any], names: list[str]) -> int:
    found = counters.get("devices", {})
    return sum(found[name]["stored"] for name in names if name in found)


def _fleet_counters(settings: Settings) -> dict[str, Any]:
    with urllib.request.urlopen(f"{settings.fleet_url}/api/counters", timeout=30) as response:
        return dict(json.loads(response.read()))
