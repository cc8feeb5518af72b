"""The fleet's database through SQLAlchemy: SQLite here, MariaDB like the chart's MySQL; the same verdicts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgeops.device.messages import encode
from edgeops.fleet.reference import psi
from edgeops.fleet.store import Incoming, Store
from edgeops.fleet.summary import fleet_summary
from edgeops.settings import FleetConfig
from scripts import mariadb
from tests.conftest import free_ports, unavailable
from tests.support.telemetry import event, heartbeat, incoming, stats

CONFIG = FleetConfig()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        found = Store(f"sqlite:///{tmp_path / 'fleet.db'}", CONFIG)
        yield found
        found.close()
        return
    if not mariadb.installed():
        unavailable("MariaDB is not installed (no mariadbd/mysqld); run `make mysql-server`")
    (port,) = free_ports(1)
    server = mariadb.start(tmp_path / "mariadb", port)
    try:
        found = Store(server.uri, CONFIG)
        yield found
        found.close()
    finally:
        mariadb.stop(server)


def test_a_fleet_is_stored_and_summarised(store: Store) -> None:
    batch = []
    for index in range(3):
        device = f"dev-{index}"
        batch += [
            incoming(heartbeat(device, 1, version=2)),
            incoming(event(device, 2, "smoke-test", version=2, passed=True)),
            incoming(event(device, 3, "installed", version=2, sha256="ab" * 32)),
            incoming(stats(device, 4, CONFIG, version=2, latency_ms=0.1 * (index + 1))),
        ]
    batch.append(incoming(event("dev-0", 5, "refused", version=3, reason="smoke-test")))
    assert store.ingest(batch) == [None] * len(batch)
    summary = fleet_summary(store, {"Float1": [1.0 / CONFIG.drift_bins] * CONFIG.drift_bins}, CONFIG)
    assert [d["device_id"] for d in summary["devices"]] == ["dev-0", "dev-1", "dev-2"]
    assert all(d["online"] and d["version"] == 2 for d in summary["devices"])
    assert summary["releases"] == [
        {"model": "mat-occupancy", "channel": "stable", "track": "mat", "version": 2, "devices": 3}
    ]
    by_version = {row["version"]: row for row in summary["updates"]}
    assert by_version[2]["installed"] == 3 and by_version[2]["smoke_passed"] == 3
    assert by_version[3]["refused"] == 1
    assert summary["refusal_reasons"] == {"smoke-test": 1}
    (latency,) = summary["latency"]
    assert latency["version"] == 2 and latency["inferences"] == 180
    assert latency["p50_ms"] == pytest.approx(0.2) and latency["p95_ms"] == pytest.approx(0.4)
    assert summary["class_mix"]["labels"] == ["empty_or_cat", "occupied"]
    assert sum(point["counts"]["occupied"] for point in summary["class_mix"]["series"]) == 120
    (drift,) = summary["drift"]
    assert drift["samples"] == 180 and drift["fleet"][10] == 1.0
    assert drift["psi"] > CONFIG.drift_threshold  # every input in one bin vs a flat training distribution
    assert not drift["flagged"]  # but 180 samples are too few to call it drift
    shifted = fleet_summary(store, {"Float1": drift["training"]}, CONFIG.model_copy(update={"drift_min_samples": 100}))
    assert shifted["drift"][0]["flagged"]
    assert summary["counters"]["stored"] == len(batch)
    health = store.release_health("mat-occupancy", [2, 3], datetime.now(UTC) - timedelta(minutes=5))
    assert (health["devices_running"], health["devices_reporting"]) == (3, 3)
    assert (health["installed"], health["refused"], health["refusal_reasons"]) == (3, 1, {"smoke-test": 1})
    assert health["inferences"] == 180 and health["classes"] == {"occupied": 120, "empty_or_cat": 60}
    assert health["latency_p95_ms"] == pytest.approx(0.4)
    assert store.release_health("another-model", [2, 3], datetime.now(UTC) - timedelta(minutes=5))["installed"] == 0


def test_duplicates_replays_and_bad_messages_are_counted_never_stored(store: Store) -> None:
    first, third = heartbeat("dev-1", 1), heartbeat("dev-1", 3)
    store.ingest([incoming(first)])
    later = datetime.now(UTC) + timedelta(seconds=1)
    outcomes = store.ingest(
        [
            incoming(first),  # a QoS 1 redelivery: the same bytes again
            incoming(heartbeat("dev-1", 1, uptime_s=99.0)),  # seq 1 again, other content
            incoming(heartbeat("dev-1", 2, sent_at=later + timedelta(hours=1))),  # from the future
            Incoming("edgeops/devices/dev-1/telemetry/heartbeat", b"{not json", later),
            Incoming("edgeops/devices/dev-2/telemetry/heartbeat", encode(heartbeat("dev-1", 3)), later),
            incoming(third),
            incoming(third),  # a duplicate inside one batch
        ]
    )
    assert outcomes == ["duplicate", "replayed", "clock", "bad-json", "impersonation", None, "duplicate"]
    counters = store.counters()
    assert counters["stored"] == 2 and counters["duplicates"] == 2 and counters["received"] == 8
    assert {k: v for k, v in counters["rejected"].items() if v} == {
        "replayed": 1,
        "clock": 1,
        "bad-json": 1,
        "impersonation": 1,
    }
    assert store.stored_per_device() == {"dev-1": (2, 3)}


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    base = [0.1, 0.2, 0.4, 0.2, 0.1]
    assert psi(base, base) == pytest.approx(0.0)
    assert 0 < psi([0.1, 0.25, 0.35, 0.2, 0.1], base) < psi([0.0, 0.0, 0.1, 0.3, 0.6], base)
