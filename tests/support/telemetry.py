"""Real telemetry messages, built with the device's own schema classes, for the fleet tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn

from edgeops.device.messages import (
    ChamberStats,
    Heartbeat,
    InferenceStats,
    Kind,
    UpdateEvent,
    encode,
    telemetry_topic,
)
from edgeops.fleet.store import Incoming
from edgeops.settings import FleetConfig

SHA = "ab" * 32
CHAMBERS = ["Float1", "Float2", "Float3", "Float4"]


def heartbeat(device: str, seq: int, version: int | None = 1, **changes: object) -> Heartbeat:
    fields: dict[str, object] = {
        "device_id": device,
        "seq": seq,
        "sent_at": datetime.now(UTC),
        "model": "mat-occupancy",
        "channel": "stable",
        "track": "mat",
        "version": version,
        "sha256": SHA if version else None,
        "role": "current" if version else None,
        "uptime_s": 1.0 * seq,
        "queued": 0,
        "dropped": 0,
    }
    return Heartbeat.model_validate(fields | changes)


def event(device: str, seq: int, event: str, version: int | None = 1, **changes: object) -> UpdateEvent:
    fields: dict[str, object] = {
        "device_id": device,
        "seq": seq,
        "sent_at": datetime.now(UTC),
        "event": event,
        "version": version,
    }
    return UpdateEvent.model_validate(fields | changes)


def stats(
    device: str,
    seq: int,
    config: FleetConfig,
    version: int | None = 1,
    bin_index: int = 10,
    classes: dict[str, int] | None = None,
    latency_ms: float = 0.2,
    at: datetime | None = None,
) -> InferenceStats:
    """An interval whose inputs all fell in one bin of every chamber."""
    histogram = [0] * config.drift_bins
    histogram[bin_index] = 60
    return InferenceStats(
        device_id=device,
        seq=seq,
        sent_at=at or datetime.now(UTC),
        version=version,
        interval_s=2.0,
        count=60,
        latency_p50_ms=latency_ms,
        latency_p95_ms=latency_ms * 2,
        classes=classes if classes is not None else {"occupied": 40, "empty_or_cat": 20},
        histogram_low=config.drift_low_pa,
        histogram_high=config.drift_high_pa,
        chambers=[
            ChamberStats(name=name, mean=99_000.0, std=10.0, min=98_990.0, max=99_010.0, histogram=histogram)
            for name in CHAMBERS
        ],
    )


def incoming(message: Heartbeat | UpdateEvent | InferenceStats, at: datetime | None = None) -> Incoming:
    topic = telemetry_topic(message.device_id, Kind(message.kind))
    return Incoming(topic, encode(message), at or datetime.now(UTC) + timedelta(milliseconds=1))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn on a free 127.0.0.1 port in a background thread; yields its URL, stops it after."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="fleet-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the fleet service stopped while starting"
            assert time.monotonic() < deadline, "the fleet service did not start within 30 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
    assert not thread.is_alive(), "the fleet service did not stop within 15 s"
