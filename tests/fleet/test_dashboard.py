"""The fleet dashboard in a real headless Chromium, against the real fleet service over HTTP.

200 devices' heartbeats, update events and inference statistics go through `Store.ingest` (the path MQTT
messages take) into SQLite, with a few malformed, impersonating and redelivered messages among them; one
chamber's inputs are shifted away from the training reference. The service runs under uvicorn on a free
loopback port, and `tests/browser/dashboard.mjs` (playwright-core driving Debian's Chromium) waits until
every chart is drawn. `pytest -s` prints the screenshot's path and the time to the first chart.

Without Chromium, Node.js or playwright-core (`make browser`) the test is skipped, except in CI, where it fails.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgeops.device.messages import (
    ChamberStats,
    Heartbeat,
    InferenceStats,
    Kind,
    UpdateEvent,
    encode,
    telemetry_topic,
)
from edgeops.fleet.app import create_app
from edgeops.fleet.store import Incoming, Store
from edgeops.settings import FleetConfig, Settings
from tests.support.telemetry import serving

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DEVICES = 200
CHAMBERS = {  # training mean and spread of each chamber's pressure, Pa
    "Float1": (99_200.0, 1_400.0),
    "Float2": (100_300.0, 1_200.0),
    "Float3": (100_800.0, 1_500.0),
    "Float4": (99_800.0, 1_300.0),
}
SHIFTED = "Float3"  # the fleet's Float3 reads this much higher than in training
SHIFT_PA = 1_000.0
# (channel, track, model, version, role, devices): 200 in all; None: no model installed yet.
FLEET = [
    ("stable", "mat", "mat-occupancy", 5, "current", 60),
    ("stable", "mat", "mat-occupancy", 6, "current", 100),
    ("canary", "mat", "mat-occupancy", 7, "current", 22),
    ("canary", "mat", "mat-occupancy", 6, "previous", 6),  # v7 failed its smoke test: fell back
    ("stable", "pmd", "pmd-posture", 2, "current", 8),
    ("stable", "mat", "mat-occupancy", None, None, 4),
]
LATENCY_MS = {2: 1.6, 5: 0.42, 6: 0.31, 7: 0.24}  # p50 per version; p95 is about twice that
REFUSALS = ["hash"] * 5 + ["deadline"] * 4 + ["expired"] * 3 + ["signature"] * 2
OFFLINE = 12  # devices last heard from four minutes ago
PAGE_TIMEOUT_S = 60


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _need(condition: bool, message: str) -> None:
    if condition:
        return
    if _in_ci():
        pytest.fail(f"{message} (CI is set, so this test must not be skipped)", pytrace=False)
    pytest.skip(message)


# The fleet's telemetry ----------------------------------------------------------------------------------


def _bin_fractions(mean: float, spread: float, config: FleetConfig) -> list[float]:
    """A normal distribution's mass in each drift bin; the tails count in the end bins."""
    width = (config.drift_high_pa - config.drift_low_pa) / config.drift_bins
    edges = [config.drift_low_pa + i * width for i in range(config.drift_bins + 1)]
    cdf = [0.5 * (1 + math.erf((edge - mean) / (spread * math.sqrt(2)))) for edge in edges]
    cdf[0], cdf[-1] = 0.0, 1.0
    return [high - low for low, high in itertools.pairwise(cdf)]


def training_reference(config: FleetConfig) -> dict[str, list[float]]:
    return {name: _bin_fractions(mean, spread, config) for name, (mean, spread) in CHAMBERS.items()}


def _histogram(rng: random.Random, mean: float, spread: float, samples: int, config: FleetConfig) -> list[int]:
    counts = [0] * config.drift_bins
    width = (config.drift_high_pa - config.drift_low_pa) / config.drift_bins
    for _ in range(samples):
        index = int((rng.gauss(mean, spread) - config.drift_low_pa) // width)
        counts[min(config.drift_bins - 1, max(0, index))] += 1
    return counts


@dataclass
class Device:
    device_id: str
    channel: str
    track: str
    model: str
    version: int | None
    role: str | None
    heard_at: datetime  # when the service last received from it
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def _fleet(now: datetime) -> list[Device]:
    devices = []
    for channel, track, model, version, role, count in FLEET:
        for _ in range(count):
            index = len(devices)
            offline = index % (DEVICES // OFFLINE) == 7 and index // (DEVICES // OFFLINE) < OFFLINE
            heard = now - timedelta(minutes=4) if offline else now
            devices.append(Device(f"dev-{index:03d}", channel, track, model, version, role, heard))
    assert len(devices) == DEVICES
    return devices


def _stats(device: Device, at: datetime, rng: random.Random, config: FleetConfig) -> InferenceStats:
    minutes = at.timestamp() / 60
    occupied_share = 0.45 + 0.2 * math.sin(minutes / 9) + rng.uniform(-0.05, 0.05)
    count = 300
    occupied = round(count * occupied_share)
    p50 = LATENCY_MS[device.version] * rng.uniform(0.9, 1.1) if device.version else None
    chambers = []
    for name, (mean, spread) in CHAMBERS.items():
        fleet_mean = mean + (SHIFT_PA if name == SHIFTED else 0.0)
        histogram = _histogram(rng, fleet_mean, spread, 60, config)
        chambers.append(
            ChamberStats(
                name=name,
                mean=fleet_mean,
                std=spread,
                min=fleet_mean - 3 * spread,
                max=fleet_mean + 3 * spread,
                histogram=histogram,
            )
        )
    return InferenceStats(
        device_id=device.device_id,
        seq=device.next_seq(),
        sent_at=at,
        version=device.version,
        interval_s=300.0,
        count=count,
        latency_p50_ms=p50,
        latency_p95_ms=p50 * rng.uniform(1.8, 2.4) if p50 else None,
        classes={"occupied": occupied, "empty_or_cat": count - occupied},
        histogram_low=config.drift_low_pa,
        histogram_high=config.drift_high_pa,
        chambers=chambers,
    )


def _events(device: Device, at: datetime, refusal: str | None) -> list[UpdateEvent]:
    """The update path's story for this device, oldest first."""
    if device.version is None:
        return []
    events = []

    def add(event: str, version: int, **fields: object) -> None:
        seq = device.next_seq()
        events.append(
            UpdateEvent(device_id=device.device_id, seq=seq, sent_at=at, event=event, version=version, **fields)  # type: ignore[arg-type]
        )

    add("smoke-test", device.version, passed=True)
    add("installed", device.version)
    if device.role == "previous":  # then tried v7, whose candidate did not reproduce its reference outputs
        add("smoke-test", 7, passed=False, detail="max abs error 0.41 > tolerance 0.25")
        add("fell-back", 7, detail="back on v6")
    if refusal:
        add("refused", device.version + 1, reason=refusal, detail=f"v{device.version + 1}: {refusal}")
    return events


def _heartbeat(device: Device, at: datetime, uptime_s: float, queued: int) -> Heartbeat:
    return Heartbeat(
        device_id=device.device_id,
        seq=device.next_seq(),
        sent_at=at,
        model=device.model,
        channel=device.channel,
        track=device.track,
        version=device.version,
        sha256=f"{device.version:064x}" if device.version else None,
        role=device.role,  # type: ignore[arg-type]
        uptime_s=uptime_s,
        queued=queued,
        dropped=0,
    )


def fill(store: Store, config: FleetConfig) -> dict[str, int]:
    """Fifty-five minutes of a 200-device fleet, through the service's own ingest path; what was sent of each kind."""
    rng = random.Random(15)
    now = datetime.now(UTC)
    devices = _fleet(now)
    refusals = iter(REFUSALS)
    messages: list[Incoming] = []
    for index, device in enumerate(devices):
        # Every five minutes, staggered by a minute per device, so each one-minute bucket hears from the fleet.
        offset = timedelta(minutes=index % 5, seconds=rng.uniform(0, 50))
        times = [device.heard_at - offset - timedelta(minutes=5 * k) for k in range(11)]
        for at in sorted(times):
            message = _stats(device, at, rng, config)
            messages.append(Incoming(telemetry_topic(device.device_id, Kind.stats), encode(message), device.heard_at))
        tries_next = device.version in (5, 6) and device.role == "current" and index % 7 == 0
        refusal = next(refusals, None) if tries_next else None
        for event in _events(device, device.heard_at - timedelta(minutes=50), refusal):
            messages.append(Incoming(telemetry_topic(device.device_id, Kind.event), encode(event), device.heard_at))
        queued = rng.randint(5, 40) if device.heard_at < now else 0  # the offline ones could not send
        beat = _heartbeat(device, device.heard_at, uptime_s=rng.uniform(600, 400_000), queued=queued)
        messages.append(Incoming(telemetry_topic(device.device_id, Kind.heartbeat), encode(beat), device.heard_at))
    # What a broker also delivers: QoS 1 redeliveries, and messages the service must refuse.
    redelivered = messages[5:400:16]
    hostile = [
        Incoming(telemetry_topic("dev-001", Kind.heartbeat), b"{not json", now),
        Incoming(
            telemetry_topic("dev-002", Kind.heartbeat), b'{"schema": "edgeops.telemetry/1", "kind": "heartbeat"}', now
        ),
        Incoming(telemetry_topic("dev-003", Kind.heartbeat), messages[-1].payload, now),  # sent as dev-199
        Incoming("edgeops/devices/dev-004/status", b"{}", now),
    ]
    outcomes = []
    batch = 500
    for start in range(0, len(messages), batch):
        outcomes += store.ingest(messages[start : start + batch])
    outcomes += store.ingest(redelivered + hostile)
    assert outcomes.count(None) == len(messages), [o for o in outcomes[: len(messages)] if o][:5]
    assert outcomes.count("duplicate") == len(redelivered)
    return {"stored": len(messages), "duplicates": len(redelivered), "rejected": len(hostile)}


# The service -------------------------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    store: Store
    sent: dict[str, int]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


@pytest.fixture
def fleet_service(tmp_path: Path) -> Iterator[Service]:
    """The fleet service on a free 127.0.0.1 port, in a background thread, over a filled SQLite database."""
    settings = Settings()
    config = settings.fleet
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}", config)
    sent = fill(store, config)
    app = create_app(settings, store, training_reference(config))
    try:
        with serving(app) as url:
            assert json.loads(_get(f"{url}/api/health")) == {"ok": True}
            yield Service(url, store, sent)
    finally:
        store.close()


# The test ----------------------------------------------------------------------------------------------


def test_dashboard_draws_every_chart_for_200_devices(fleet_service: Service, tmp_path: Path) -> None:
    node = shutil.which("node")
    _need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}; run `make browser`")
    _need(node is not None, "Node.js is not installed (node is not on PATH)")
    _need((BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), "playwright-core is missing; run `make browser`")

    # What the page is about to draw, from the same API.
    summary = json.loads(_get(f"{fleet_service.url}/api/fleet"))
    assert len(summary["devices"]) == DEVICES
    assert summary["counters"]["duplicates"] == fleet_service.sent["duplicates"]
    assert sum(summary["counters"]["rejected"].values()) == fleet_service.sent["rejected"]
    psi = {item["chamber"]: item["psi"] for item in summary["drift"]}
    assert psi[SHIFTED] > summary["drift_threshold"], psi
    assert all(value < summary["drift_threshold"] for name, value in psi.items() if name != SHIFTED), psi
    assert b"plotly" in _get(f"{fleet_service.url}/static/plotly.min.js")[:2000].lower()

    screenshot = tmp_path / "dashboard.png"
    run = subprocess.run(
        [str(node), str(BROWSER_DIR / "dashboard.mjs"), f"{fleet_service.url}/", str(screenshot)],
        cwd=BROWSER_DIR,
        env={**os.environ, "CHROMIUM": CHROMIUM, "TIMEOUT_MS": str(PAGE_TIMEOUT_S * 1000)},
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S + 60,
        check=False,
    )
    assert run.returncode == 0, f"dashboard.mjs exited {run.returncode}:\n{run.stderr}\n{run.stdout}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\ndashboard screenshot: {screenshot}")
    print(f"first chart after {result['first_chart_ms']:.0f} ms (load event {result['load_ms']} ms), {DEVICES} devices")

    charts = 5 + len(summary["drift"])  # releases, updates, refusals, latency, class mix; one per chamber
    assert result["charts"] == charts
    assert result["device_rows"] == DEVICES
    assert result["drift_flagged"] == [SHIFTED]
    assert result["console_errors"] == []
    assert result["page_errors"] == []
    assert result["first_chart_ms"] > 0
    assert screenshot.stat().st_size > 50_000
