"""The dashboard's one document: the fleet as of now, from the store and the training reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from edgeops.fleet.reference import bin_edges, psi
from edgeops.fleet.store import Store
from edgeops.settings import FleetConfig

DRIFT_WINDOW_BUCKETS = 10  # drift compares the last ten class-mix buckets' inputs (ten minutes by default)


def fleet_summary(store: Store, reference: dict[str, list[float]], config: FleetConfig) -> dict[str, Any]:
    now = datetime.now(UTC)
    online_since = now - timedelta(seconds=config.online_after_s)
    device_rows = []
    releases: dict[tuple[str, str, str, int | None], int] = {}
    for row in store.devices():
        last_seen = row["last_seen"].replace(tzinfo=UTC)
        device_rows.append(
            {
                "device_id": row["device_id"],
                "model": row["model"],
                "channel": row["channel"],
                "track": row["track"],
                "version": row["version"],
                "sha256": row["sha256"],
                "role": row["role"],
                "uptime_s": row["uptime_s"],
                "queued": row["queued"],
                "dropped": row["dropped"],
                "last_seen": last_seen.isoformat(),
                "online": last_seen >= online_since,
            }
        )
        key = (row["model"], row["channel"], row["track"], row["version"])
        releases[key] = releases.get(key, 0) + 1
    bucket = timedelta(seconds=config.class_mix_bucket_s)
    drift = drift_report(store, reference, config, now)
    return {
        "generated_at": now.isoformat(),
        "devices": device_rows,
        "releases": [
            {"model": model, "channel": channel, "track": track, "version": version, "devices": count}
            for (model, channel, track, version), count in sorted(releases.items(), key=lambda item: str(item[0]))
        ],
        "updates": store.update_outcomes(),
        "refusal_reasons": store.refusal_reasons(),
        "latency": store.latency(),
        "class_mix": store.class_mix(now - bucket * config.class_mix_buckets),
        "drift": drift,
        "drift_threshold": config.drift_threshold,
        "drift_min_samples": config.drift_min_samples,
        "counters": store.counters(),
        "rollouts": store.rollouts(),
        "retraining": store.retrain_triggers(),
    }


def drift_report(
    store: Store, reference: dict[str, list[float]], config: FleetConfig, now: datetime
) -> list[dict[str, Any]]:
    """Each chamber's recent inputs on the fleet against the training data's, with its PSI and whether it drifted."""
    bucket = timedelta(seconds=config.class_mix_bucket_s)
    fleet_inputs = store.input_histograms(now - bucket * DRIFT_WINDOW_BUCKETS)
    drift = []
    for chamber, training in reference.items():
        observed = fleet_inputs.get(chamber)
        total = sum(observed) if observed else 0
        drift.append(
            {
                "chamber": chamber,
                "edges": bin_edges(config),
                "training": training,
                "fleet": [count / total for count in observed] if observed and total else [0.0] * len(training),
                "psi": (value := round(psi(observed, training), 4) if observed and total else None),
                "samples": total,
                # Too few samples say more about which frames were seen than about the sensors.
                "flagged": value is not None and value > config.drift_threshold and total >= config.drift_min_samples,
            }
        )
    return drift
