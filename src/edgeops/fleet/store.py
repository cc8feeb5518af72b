"""What the fleet reported, in a real database through SQLAlchemy: SQLite on one machine, MySQL on a cluster.

`ingest` takes raw MQTT messages in batches: each is parsed against the message schema (`edgeops.device.messages`),
refused and counted if it is malformed, oversized, on a wrong topic, sent as another device or from the future,
and dropped and counted if its (device, seq) is already stored (a QoS 1 redelivery or a replay). What is kept:
one row per device (its latest heartbeat), every update event, every interval's inference statistics, and
per-minute class counts and input histograms, aggregated as they arrive so the dashboard never rescans history.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
    tuple_,
)
from sqlalchemy.engine import Connection, Engine

from edgeops.device.messages import Heartbeat, InferenceStats, Rejected, Rejection, UpdateEvent, parse
from edgeops.settings import FleetConfig

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(63), primary_key=True),
    Column("model", String(63)),
    Column("channel", String(63)),
    Column("track", String(63)),
    Column("version", Integer, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("role", String(16), nullable=True),
    Column("uptime_s", Float),
    Column("queued", Integer),
    Column("dropped", Integer),
    Column("first_seen", DateTime),
    Column("last_seen", DateTime),
)
received = Table(  # every stored message's identity: duplicates are found here
    "received",
    metadata,
    Column("device_id", String(63), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16)),
    Column("digest", String(64)),
    Column("sent_at", DateTime),
    Column("received_at", DateTime),
)
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("device_id", String(63), index=True),
    Column("seq", BigInteger),
    Column("at", DateTime, index=True),
    Column("event", String(16)),
    Column("version", Integer, nullable=True, index=True),
    Column("sha256", String(64), nullable=True),
    Column("reason", String(63), nullable=True),
    Column("passed", Boolean, nullable=True),
    Column("detail", String(1000)),
)
stats = Table(
    "stats",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("device_id", String(63), index=True),
    Column("seq", BigInteger),
    Column("at", DateTime, index=True),
    Column("version", Integer, nullable=True, index=True),
    Column("interval_s", Float),
    Column("count", Integer),
    Column("errors", Integer),
    Column("latency_p50_ms", Float, nullable=True),
    Column("latency_p95_ms", Float, nullable=True),
    Column("classes", JSON),
)
class_counts = Table(
    "class_counts",
    metadata,
    Column("bucket", DateTime, primary_key=True),
    Column("label", String(63), primary_key=True),
    Column("count", BigInteger),
)
input_histograms = Table(
    "input_histograms",
    metadata,
    Column("bucket", DateTime, primary_key=True),
    Column("chamber", String(63), primary_key=True),
    Column("bin", Integer, primary_key=True, autoincrement=False),
    Column("count", BigInteger),
)
retrain_triggers = Table(  # drift that started a training run (fleet/retrain.py)
    "retrain_triggers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime, index=True),
    Column("chambers", JSON),  # chamber -> PSI, of those that drifted
    Column("session", String(1000)),  # what the run trains on
    Column("status", String(1000)),
    Column("log", String(1000)),  # the local run's log file, or the Kubeflow Pipelines run's URL
    Column("mlflow_run", String(1000), nullable=True),  # the run's MLflow page, once ingest has opened it
)
rollouts = Table(  # each staged rollout's state, as its controller last reported it (fleet/rollout.py)
    "rollouts",
    metadata,
    Column("model", String(63), primary_key=True),
    Column("channel", String(63), primary_key=True),
    Column("started_at", DateTime, index=True),
    Column("updated_at", DateTime),
    Column("state", JSON),
)
counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger),
)

COUNTER_NAMES = ("received", "stored", "duplicates", *(f"rejected:{reason}" for reason in Rejection))


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    received_at: datetime


def naive_utc(at: datetime) -> datetime:
    """Timestamps are stored as naive UTC: MySQL's DATETIME keeps no zone."""
    return at.astimezone(UTC).replace(tzinfo=None)


class Store:
    def __init__(self, url: str, config: FleetConfig) -> None:
        self.config = config
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine)
        with self.engine.begin() as db:
            present = set(db.scalars(select(counters.c.name)))
            missing = [{"name": name, "value": 0} for name in COUNTER_NAMES if name not in present]
            if missing:
                db.execute(counters.insert(), missing)

    def ingest(self, batch: Sequence[Incoming]) -> list[str | None]:
        """Store a batch in one transaction; for each message, None if stored, else why it was not."""
        parsed: list[tuple[Incoming, Heartbeat | UpdateEvent | InferenceStats, str]] = []
        outcomes: list[str | None] = []
        tally: Counter[str] = Counter(received=len(batch))
        future_limit = timedelta(seconds=self.config.max_clock_skew_s)
        for item in batch:
            try:
                message = parse(item.topic, item.payload, self.config.max_message_bytes)
                if message.sent_at - item.received_at > future_limit:
                    raise Rejected(Rejection.clock, f"sent at {message.sent_at.isoformat()}, in the future")
            except Rejected as refusal:
                tally[f"rejected:{refusal.reason}"] += 1
                outcomes.append(str(refusal.reason))
                continue
            parsed.append((item, message, hashlib.sha256(item.payload).hexdigest()))
            outcomes.append(None)
        with self.engine.begin() as db:
            seen = self._already_stored(db, [(m.device_id, m.seq) for _, m, _ in parsed])
            fresh = []
            index = iter(i for i, outcome in enumerate(outcomes) if outcome is None)
            for (item, message, digest), position in zip(parsed, index, strict=True):
                key = (message.device_id, message.seq)
                if key in seen:
                    duplicate = seen[key] == digest
                    tally["duplicates" if duplicate else f"rejected:{Rejection.replayed}"] += 1
                    outcomes[position] = "duplicate" if duplicate else str(Rejection.replayed)
                    continue
                seen[key] = digest
                fresh.append((item, message, digest))
            self._store(db, fresh)
            tally["stored"] += len(fresh)
            self._count(db, tally)
        return outcomes

    def _already_stored(self, db: Connection, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        found: dict[tuple[str, int], str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = db.execute(
                select(received.c.device_id, received.c.seq, received.c.digest).where(
                    tuple_(received.c.device_id, received.c.seq).in_(chunk)
                )
            )
            found.update({(row.device_id, row.seq): row.digest for row in rows})
        return found

    def _store(self, db: Connection, fresh: list[tuple[Incoming, Any, str]]) -> None:
        if not fresh:
            return
        db.execute(
            received.insert(),
            [
                {
                    "device_id": m.device_id,
                    "seq": m.seq,
                    "kind": str(m.kind),
                    "digest": digest,
                    "sent_at": naive_utc(m.sent_at),
                    "received_at": naive_utc(item.received_at),
                }
                for item, m, digest in fresh
            ],
        )
        heartbeats: dict[str, tuple[Heartbeat, datetime]] = {}
        event_rows, stats_rows = [], []
        classes: Counter[tuple[datetime, str]] = Counter()
        histograms: Counter[tuple[datetime, str, int]] = Counter()
        last_seen: dict[str, datetime] = {}
        for item, message, _ in fresh:
            last_seen[message.device_id] = max(item.received_at, last_seen.get(message.device_id, item.received_at))
            if isinstance(message, Heartbeat):
                newest = heartbeats.get(message.device_id)
                if newest is None or newest[0].seq < message.seq:
                    heartbeats[message.device_id] = (message, item.received_at)
            elif isinstance(message, UpdateEvent):
                event_rows.append(
                    message.model_dump(include={"device_id", "seq", "event", "version", "sha256", "reason", "passed"})
                    | {"at": naive_utc(message.sent_at), "detail": message.detail}
                )
            else:
                stats_rows.append(
                    message.model_dump(
                        include={"device_id", "seq", "version", "interval_s", "count", "errors", "classes"}
                    )
                    | {
                        "at": naive_utc(message.sent_at),
                        "latency_p50_ms": message.latency_p50_ms,
                        "latency_p95_ms": message.latency_p95_ms,
                    }
                )
                bucket = self._bucket(message.sent_at)
                for label, count in message.classes.items():
                    classes[(bucket, label)] += count
                if self._same_bins(message):
                    for chamber in message.chambers:
                        for index, count in enumerate(chamber.histogram):
                            if count:
                                histograms[(bucket, chamber.name, index)] += count
        if event_rows:
            db.execute(events.insert(), event_rows)
        if stats_rows:
            db.execute(stats.insert(), stats_rows)
        self._add(db, class_counts, ("bucket", "label"), classes)
        self._add(db, input_histograms, ("bucket", "chamber", "bin"), histograms)
        self._upsert_devices(db, heartbeats, last_seen)

    def _same_bins(self, message: InferenceStats) -> bool:
        """Histograms binned as the service bins them (an agent with other settings is left out of drift)."""
        config = self.config
        return (
            message.histogram_low == config.drift_low_pa
            and message.histogram_high == config.drift_high_pa
            and all(len(chamber.histogram) == config.drift_bins for chamber in message.chambers)
        )

    def _bucket(self, at: datetime) -> datetime:
        seconds = self.config.class_mix_bucket_s
        moment = naive_utc(at)
        epoch = int((moment - datetime(1970, 1, 1)).total_seconds())
        return datetime(1970, 1, 1) + timedelta(seconds=epoch - epoch % seconds)

    @staticmethod
    def _add(db: Connection, table: Table, key: tuple[str, ...], increments: Counter[Any]) -> None:
        """Add counts to existing rows, insert the rest (one writer, inside the batch's transaction)."""
        if not increments:
            return
        columns = [table.c[name] for name in key]
        keys = list(increments)
        existing: set[tuple[Any, ...]] = set()
        for start in range(0, len(keys), 500):
            rows = db.execute(select(*columns).where(tuple_(*columns).in_(keys[start : start + 500])))
            existing.update(tuple(row) for row in rows)
        for values in existing:
            condition = [column == value for column, value in zip(columns, values, strict=True)]
            db.execute(table.update().where(*condition).values(count=table.c.count + increments[values]))
        inserts = [dict(zip(key, values, strict=True)) | {"count": n} for values, n in increments.items()]
        inserts = [row for row, values in zip(inserts, increments, strict=True) if values not in existing]
        if inserts:
            db.execute(table.insert(), inserts)

    @staticmethod
    def _upsert_devices(
        db: Connection, heartbeats: dict[str, tuple[Heartbeat, datetime]], last_seen: dict[str, datetime]
    ) -> None:
        if not last_seen:
            return
        known = set(db.scalars(select(devices.c.device_id).where(devices.c.device_id.in_(list(last_seen)))))
        for device_id, seen_at in last_seen.items():
            row: dict[str, Any] = {"last_seen": naive_utc(seen_at)}
            if device_id in heartbeats:
                beat = heartbeats[device_id][0]
                row |= beat.model_dump(
                    include={"model", "channel", "track", "version", "sha256", "role", "uptime_s", "queued", "dropped"}
                )
            if device_id in known:
                db.execute(devices.update().where(devices.c.device_id == device_id).values(**row))
            else:
                defaults = {"model": "", "channel": "", "track": "", "uptime_s": 0.0, "queued": 0, "dropped": 0}
                db.execute(
                    devices.insert().values(**(defaults | row), device_id=device_id, first_seen=naive_utc(seen_at))
                )

    @staticmethod
    def _count(db: Connection, tally: Counter[str]) -> None:
        for name, increment in tally.items():
            if increment:
                db.execute(counters.update().where(counters.c.name == name).values(value=counters.c.value + increment))

    # Reading ------------------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        with self.engine.connect() as db:
            values = {row.name: int(row.value) for row in db.execute(select(counters))}
        return {
            "received": values.get("received", 0),
            "stored": values.get("stored", 0),
            "duplicates": values.get("duplicates", 0),
            "rejected": {str(reason): values.get(f"rejected:{reason}", 0) for reason in Rejection},
        }

    def stored_per_device(self) -> dict[str, tuple[int, int]]:
        """Per device: (messages stored, highest seq stored)."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(received.c.device_id, func.count(), func.max(received.c.seq)).group_by(received.c.device_id)
            )
            return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def devices(self) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(select(devices).order_by(devices.c.device_id))]

    def update_outcomes(self) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(events.c.version, events.c.event, events.c.passed, func.count()).group_by(
                    events.c.version, events.c.event, events.c.passed
                )
            )
            per_version: dict[int | None, Counter[str]] = defaultdict(Counter)
            for version, event, passed, count in rows:
                name = {"fell-back": "fell_back"}.get(event, event)
                if event == "smoke-test":
                    name = "smoke_passed" if passed else "smoke_failed"
                per_version[version][name] += int(count)
        names = ("installed", "refused", "fell_back", "smoke_passed", "smoke_failed")
        return [
            {"version": version} | {name: counts[name] for name in names}
            for version, counts in sorted(per_version.items(), key=lambda item: (item[0] is None, item[0] or 0))
        ]

    def refusal_reasons(self) -> dict[str, int]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(events.c.reason, func.count()).where(events.c.event == "refused").group_by(events.c.reason)
            )
            return {str(reason or "unknown"): int(count) for reason, count in rows}

    def latency(self) -> list[dict[str, Any]]:
        """Per release version: count-weighted means of the intervals' p50 and p95."""
        weight = stats.c.count
        with self.engine.connect() as db:
            rows = db.execute(
                select(
                    stats.c.version,
                    func.sum(weight),
                    func.sum(stats.c.latency_p50_ms * weight),
                    func.sum(stats.c.latency_p95_ms * weight),
                )
                .where(stats.c.count > 0, stats.c.latency_p50_ms.is_not(None))
                .group_by(stats.c.version)
                .order_by(stats.c.version)
            )
            return [  # MySQL sums to DECIMAL
                {
                    "version": version,
                    "inferences": int(total),
                    "p50_ms": round(float(p50) / float(total), 4),
                    "p95_ms": round(float(p95) / float(total), 4),
                }
                for version, total, p50, p95 in rows
                if total
            ]

    def class_mix(self, since: datetime) -> dict[str, Any]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(class_counts).where(class_counts.c.bucket >= naive_utc(since)).order_by(class_counts.c.bucket)
            ).all()
        labels = sorted({row.label for row in rows})
        series: dict[datetime, dict[str, int]] = defaultdict(dict)
        for row in rows:
            series[row.bucket][row.label] = int(row._mapping["count"])
        return {
            "labels": labels,
            "series": [
                {
                    "at": bucket.replace(tzinfo=UTC).isoformat(),
                    "counts": {label: counts.get(label, 0) for label in labels},
                }
                for bucket, counts in sorted(series.items())
            ],
        }

    def input_histograms(self, since: datetime) -> dict[str, list[int]]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(input_histograms.c.chamber, input_histograms.c.bin, func.sum(input_histograms.c.count))
                .where(input_histograms.c.bucket >= naive_utc(since))
                .group_by(input_histograms.c.chamber, input_histograms.c.bin)
            )
            found: dict[str, list[int]] = defaultdict(lambda: [0] * self.config.drift_bins)
            for chamber, index, count in rows:
                if 0 <= index < self.config.drift_bins:
                    found[chamber][index] = int(count)
        return dict(found)

    def release_health(self, model: str, versions: list[int], since: datetime) -> dict[str, Any]:
        """What the devices of `model` reported about these release versions since `since`: the evidence a staged
        rollout advances or halts on."""
        of_model = select(devices.c.device_id).where(devices.c.model == model)
        moment = naive_utc(since)
        with self.engine.connect() as db:
            running = db.scalar(
                select(func.count())
                .select_from(devices)
                .where(devices.c.model == model, devices.c.version.in_(versions))
            )
            outcomes: Counter[str] = Counter()
            reasons: Counter[str] = Counter()
            rows = db.execute(
                select(events.c.event, events.c.passed, events.c.reason, events.c.device_id).where(
                    events.c.version.in_(versions), events.c.at >= moment, events.c.device_id.in_(of_model)
                )
            ).all()
            reached: set[str] = set()
            for event, passed, reason, device_id in rows:
                reached.add(device_id)
                outcomes["smoke_failed" if event == "smoke-test" and passed is False else event] += 1
                if event == "refused":
                    reasons[str(reason)] += 1
            interval_rows = db.execute(
                select(
                    stats.c.count.label("n"),
                    stats.c.errors,
                    stats.c.latency_p50_ms,
                    stats.c.latency_p95_ms,
                    stats.c.classes,
                ).where(stats.c.version.in_(versions), stats.c.at >= moment, stats.c.device_id.in_(of_model))
            ).all()
        inferences = sum(row.n for row in interval_rows)
        timed = [row for row in interval_rows if row.n and row.latency_p95_ms is not None]
        weight = sum(row.n for row in timed)
        classes: Counter[str] = Counter()
        for row in interval_rows:
            classes.update({str(k): int(v) for k, v in (row.classes or {}).items()})
        return {
            "devices_running": int(running or 0),
            "devices_reporting": len(reached),
            "installed": outcomes["installed"],
            "refused": outcomes["refused"],
            "fell_back": outcomes["fell-back"],
            "smoke_failed": outcomes["smoke_failed"],
            "refusal_reasons": dict(reasons),
            "inferences": inferences,
            "errors": sum(row.errors for row in interval_rows),
            "latency_p50_ms": sum(row.latency_p50_ms * row.n for row in timed) / weight if weight else None,
            "latency_p95_ms": sum(row.latency_p95_ms * row.n for row in timed) / weight if weight else None,
            "classes": dict(classes),
        }

    def last_retrain(self) -> datetime | None:
        with self.engine.connect() as db:
            at = db.scalar(select(func.max(retrain_triggers.c.at)))
        return at.replace(tzinfo=UTC) if at else None

    def record_retrain(self, at: datetime, chambers: dict[str, float], session: str, status: str, log: str) -> int:
        with self.engine.begin() as db:
            row = {"at": naive_utc(at), "chambers": chambers, "session": session, "status": status, "log": log}
            key = db.execute(retrain_triggers.insert().values(**row)).inserted_primary_key
            assert key is not None
            return int(key[0])

    def update_retrain(
        self, trigger: int, status: str | None = None, log: str | None = None, mlflow_run: str | None = None
    ) -> None:
        """Set what is given of a trigger's status, its run's log (or KFP run) and its MLflow run."""
        values = {"status": status, "log": log, "mlflow_run": mlflow_run}
        with self.engine.begin() as db:
            db.execute(
                retrain_triggers.update()
                .where(retrain_triggers.c.id == trigger)
                .values({k: v[:1000] for k, v in values.items() if v is not None})
            )

    def save_rollout(self, state: dict[str, Any], started_at: datetime, at: datetime) -> None:
        """Keep the newest state of the rollout of (`state["model"]`, `state["channel"]`)."""
        key = {"model": state["model"], "channel": state["channel"]}
        row = {"started_at": naive_utc(started_at), "updated_at": naive_utc(at), "state": state}
        with self.engine.begin() as db:
            found = db.execute(
                rollouts.update()
                .where(rollouts.c.model == key["model"], rollouts.c.channel == key["channel"])
                .values(**row)
            ).rowcount
            if not found:
                db.execute(rollouts.insert().values(**key, **row))

    def rollouts(self) -> list[dict[str, Any]]:
        """The states of the newest rollouts, newest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(rollouts.c.state).order_by(rollouts.c.started_at.desc()).limit(20))
            return [dict(row.state) for row in rows]

    def retrain_triggers(self) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(select(retrain_triggers).order_by(retrain_triggers.c.at.desc()).limit(20))
            return [dict(row._mapping) | {"at": row.at.replace(tzinfo=UTC).isoformat()} for row in rows]

    def close(self) -> None:
        self.engine.dispose()
