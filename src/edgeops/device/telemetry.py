"""The agent's reports to the fleet: heartbeats, update events and inference statistics over MQTT (QoS 1).

Every message goes to the on-disk outbox first; a sender thread publishes the oldest ones while the broker is
connected and removes each when the broker acknowledges it. A broker restart, a lost network or a killed agent
lose nothing: the unacknowledged messages are sent again (the fleet service counts the duplicates).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, SecretStr

from edgeops.device.agent import Agent
from edgeops.device.messages import (
    ChamberStats,
    Heartbeat,
    InferenceStats,
    Kind,
    UpdateEvent,
    encode,
    telemetry_topic,
)
from edgeops.device.outbox import Outbox
from edgeops.device.updater import AgentError, refusal_reason
from edgeops.errors import InputError
from edgeops.settings import FleetConfig

logger = logging.getLogger(__name__)
OUTBOX_FILE = "telemetry-outbox.sqlite"


class BrokerCredentials(BaseModel):
    """A device's broker identity, as `edgeops fleet add-device` writes it (a 0600 file)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    username: str
    password: SecretStr
    host: str
    port: int

    @classmethod
    def load(cls, path: Path) -> BrokerCredentials:
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise InputError(
                [f"no broker credentials at {path}: issue them with `edgeops fleet add-device <id>`"]
            ) from None
        except ValueError as error:
            raise InputError([f"{path} is not a credentials file of `edgeops fleet add-device`: {error}"]) from None

    def save(self, path: Path) -> None:
        """Written 0600 from the start: the password is never world-readable, not even for a moment."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        document = self.model_dump(mode="json") | {"password": self.password.get_secret_value()}
        path.write_text(json.dumps(document, indent=2))


class IntervalStats:
    """Inference statistics over one reporting interval."""

    def __init__(self, chambers: Sequence[str], config: FleetConfig) -> None:
        self.chambers = list(chambers)
        self.edges = np.linspace(config.drift_low_pa, config.drift_high_pa, config.drift_bins + 1)
        self.low, self.high = float(self.edges[0]), float(self.edges[-1])
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.latencies_ms: list[float] = []
        self.classes: Counter[str] = Counter()
        self.inputs: list[Sequence[float]] = []
        self.errors = 0

    def observe(self, pressures: Sequence[float], label: str | None, latency_s: float | None) -> None:
        if self.chambers:  # a pressure image (PMD) has no chambers to watch for drift
            self.inputs.append(pressures)
        if label is not None:
            self.classes[label] += 1
        if latency_s is not None:
            self.latencies_ms.append(latency_s * 1000)

    def message(self, device_id: str, seq: int, version: int | None) -> InferenceStats:
        latencies = np.asarray(self.latencies_ms)
        chambers = []
        if self.inputs:
            values = np.asarray(self.inputs, dtype=np.float64)
            for index, name in enumerate(self.chambers[: values.shape[1]]):
                column = values[:, index]
                counts, _ = np.histogram(np.clip(column, self.low, self.high), bins=self.edges)
                chambers.append(
                    ChamberStats(
                        name=name,
                        mean=float(column.mean()),
                        std=float(column.std()),
                        min=float(column.min()),
                        max=float(column.max()),
                        histogram=[int(c) for c in counts],
                    )
                )
        return InferenceStats(
            device_id=device_id,
            seq=seq,
            sent_at=datetime.now(UTC),
            version=version,
            interval_s=max(time.monotonic() - self.started, 1e-3),
            count=len(self.latencies_ms),
            errors=self.errors,
            latency_p50_ms=float(np.percentile(latencies, 50)) if latencies.size else None,
            latency_p95_ms=float(np.percentile(latencies, 95)) if latencies.size else None,
            classes=dict(self.classes),
            histogram_low=self.low,
            histogram_high=self.high,
            chambers=chambers,
        )


class Telemetry:
    """One device's reporter: the outbox, the MQTT client and the sender thread."""

    def __init__(self, credentials: BrokerCredentials, state_dir: Path, config: FleetConfig) -> None:
        self.device_id = credentials.device_id
        self.config = config
        self.started = time.monotonic()
        self.outbox = Outbox(state_dir / OUTBOX_FILE, config.queue_limit)
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # MQTT message id -> outbox seq
        self._early_acks: set[int] = set()  # acknowledged before the sender recorded them
        self._cursor = 0  # highest seq handed to the client since the last (re)connect
        self.published = 0  # broker acknowledgements, this process

        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edgeops-device-{self.device_id}", clean_session=True
        )
        self.client.username_pw_set(credentials.username, credentials.password.get_secret_value())
        self.client.max_inflight_messages_set(config.in_flight)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(credentials.host, credentials.port, keepalive=config.keepalive_s)
        self._sender = threading.Thread(target=self._send_forever, name=f"telemetry-{self.device_id}", daemon=True)

    def start(self) -> Telemetry:
        self.client.loop_start()
        self._sender.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # What the agent reports --------------------------------------------------------------------------------

    def heartbeat(
        self, model: str, channel: str, track: str, running: tuple[int, str, Literal["current", "previous"]] | None
    ) -> None:
        queued, dropped, _ = self.outbox.counts()
        version, sha256, role = running if running else (None, None, None)

        def build(seq: int) -> Heartbeat:
            return Heartbeat(
                device_id=self.device_id,
                seq=seq,
                sent_at=datetime.now(UTC),
                model=model,
                channel=channel,
                track=track,
                version=version,
                sha256=sha256,
                role=role,
                uptime_s=round(time.monotonic() - self.started, 3),
                queued=queued,
                dropped=dropped,
            )

        self._queue(Kind.heartbeat, build)

    def event(self, event: str, **fields: Any) -> None:
        self._queue(
            Kind.event,
            lambda seq: UpdateEvent.model_validate(
                {"device_id": self.device_id, "seq": seq, "sent_at": datetime.now(UTC), "event": event, **fields}
            ),
        )

    def stats(self, interval: IntervalStats, version: int | None) -> None:
        self._queue(Kind.stats, lambda seq: interval.message(self.device_id, seq, version))
        interval.reset()

    def _queue(self, kind: Kind, build: Any) -> None:
        topic = telemetry_topic(self.device_id, kind)
        dropped = self.outbox.append(lambda seq: (topic, encode(build(seq))))
        if dropped:
            logger.warning("telemetry outbox full: dropped the %d oldest message(s)", dropped)
        self._wake.set()

    # Sending ------------------------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.warning("broker refused %s: %s", self.device_id, reason)
            return
        with self._lock:  # whatever was in flight is sent again: the broker may not have it
            self._in_flight.clear()
            self._early_acks.clear()
            self._cursor = 0
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            seq = self._in_flight.pop(mid, None)
            if seq is None:
                self._early_acks.add(mid)
        if seq is not None:
            self._acknowledged(seq)

    def _send_forever(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._connected.is_set():
                continue
            with self._lock:
                room = self.config.in_flight - len(self._in_flight)
                cursor = self._cursor
            if room <= 0:
                continue
            for queued in self.outbox.oldest(room, after=cursor):
                info = self.client.publish(queued.topic, queued.payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # disconnected meanwhile: on_connect starts again from the oldest
                with self._lock:
                    self._cursor = max(self._cursor, queued.seq)
                    early = info.mid in self._early_acks
                    if early:
                        self._early_acks.discard(info.mid)
                    else:
                        self._in_flight[info.mid] = queued.seq
                if early:
                    self._acknowledged(queued.seq)

    def _acknowledged(self, seq: int) -> None:
        self.outbox.remove(seq)
        self.published += 1
        self._wake.set()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox.counts()[0] == 0:
                return True
            self._wake.set()
            time.sleep(0.1)
        return self.outbox.counts()[0] == 0

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()
        self.outbox.close()


class AgentReporter:
    """What one agent reports: update outcomes after each poll, and a heartbeat and statistics every interval."""

    def __init__(self, agent: Agent, telemetry: Telemetry, chambers: Sequence[str]) -> None:
        self.agent = agent
        self.telemetry = telemetry
        self.interval = IntervalStats(chambers, telemetry.config)
        self._lock = threading.Lock()
        self._running: tuple[int, str] | None = None
        self._version: int | None = None  # the release whose predictions the current interval holds

    def poll(self) -> None:
        """One poll of the agent, with its outcome reported; raises what the poll raises."""
        before = self.agent.state.installed().current
        try:
            self.agent.poll()
        except AgentError as error:
            reason = refusal_reason(error)
            version = _refused_version(error)
            if reason == "smoke-test":
                self.telemetry.event("smoke-test", version=version, passed=False, detail=str(error)[:1000])
            self.telemetry.event("refused", version=version, reason=reason, detail=str(error)[:1000])
            raise
        after = self.agent.state.installed().current
        if after is not None and after != before:
            self.telemetry.event("smoke-test", version=after.version, sha256=after.sha256, passed=True)
            self.telemetry.event("installed", version=after.version, sha256=after.sha256)

    def observe(
        self, pressures: Sequence[float], label: str | None, latency_s: float | None, version: int | None = None
    ) -> None:
        """One frame, and what the model running `version` made of it (None: nothing ran on it)."""
        with self._lock:
            if version is not None and self._version is not None and version != self._version:
                self.telemetry.stats(self.interval, self._version)  # statistics belong to one release each
            if version is not None:
                self._version = version
            self.interval.observe(pressures, label, latency_s)

    def report(self) -> None:
        """The heartbeat and the interval's statistics; a switch to the last-known-good model is an event."""
        running = self.agent.state.running_model()
        now_running = (running[0].version, running[1]) if running else None
        if running is not None and running[1] == "previous" and now_running != self._running:
            self.telemetry.event(
                "fell-back",
                version=running[0].version,
                sha256=running[0].sha256,
                detail="the current model failed its integrity check; running the last-known-good one",
            )
        self._running = now_running
        self.telemetry.heartbeat(
            self.agent.model_name,
            self.agent.channel,
            str(self.agent.track),
            (running[0].version, running[0].sha256, running[1]) if running else None,
        )
        with self._lock:
            self.telemetry.stats(self.interval, self._version or (running[0].version if running else None))


def _refused_version(error: BaseException) -> int | None:
    """The release a poll refused, if the agent knew it: poll() wraps the refusal, so look down the chain."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, AgentError) and cause.version is not None:
            return cause.version
        cause = cause.__cause__
    return None
