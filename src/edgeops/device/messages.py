"""What a device tells the fleet: versioned JSON messages on its own MQTT topics.

Every message carries the schema version, the sender's id, a sequence number that only grows (kept on the
device's disk, so it survives restarts) and the device's clock. The fleet service parses with `parse`, which
refuses anything that is not exactly one of these shapes, arrives on the wrong topic, or names another device.
`json_schema()` is the published schema (docs/fleet.md).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from edgeops.settings import NAME_PATTERN

SCHEMA: Final = "edgeops.telemetry/1"
TOPIC_ROOT = "edgeops/devices"
DeviceId = Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Kind(StrEnum):
    heartbeat = "heartbeat"
    event = "event"
    stats = "stats"


KINDS = frozenset(kind.value for kind in Kind)


class Rejection(StrEnum):
    """Why the fleet service refused a message; each is counted."""

    bad_json = "bad-json"
    schema = "schema"
    oversized = "oversized"
    topic = "topic"
    impersonation = "impersonation"
    replayed = "replayed"
    clock = "clock"  # sent from further in the future than the allowed clock skew


class Rejected(Exception):
    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["edgeops.telemetry/1"] = Field(SCHEMA, alias="schema")
    device_id: DeviceId
    seq: int = Field(ge=1, description="per device, strictly increasing across restarts")
    sent_at: AwareDatetime


class Heartbeat(Envelope):
    """What the device runs, and how its outbox is doing."""

    kind: Literal[Kind.heartbeat] = Kind.heartbeat
    model: Name
    channel: Name
    track: Name
    version: int | None = Field(None, ge=1)
    sha256: Sha256 | None = None
    role: Literal["current", "previous"] | None = None  # previous: running the last-known-good model
    uptime_s: float = Field(ge=0)
    queued: int = Field(ge=0, description="messages waiting in the outbox")
    dropped: int = Field(ge=0, description="messages the outbox dropped, oldest first, since it was created")


class UpdateEvent(Envelope):
    """One outcome of the update path."""

    kind: Literal[Kind.event] = Kind.event
    event: Literal["installed", "refused", "fell-back", "smoke-test"]
    version: int | None = Field(None, ge=1)
    sha256: Sha256 | None = None
    reason: Name | None = None  # refused: the agent's refusal word (edgeops.device.updater.REFUSAL_REASONS)
    passed: bool | None = None  # smoke-test: did the candidate reproduce its reference outputs
    detail: str = Field("", max_length=1000)


class ChamberStats(BaseModel):
    """One input channel over an interval: moments and a histogram over the fleet's fixed bins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    mean: float
    std: float = Field(ge=0)
    min: float
    max: float
    histogram: list[Annotated[int, Field(ge=0)]] = Field(min_length=2, max_length=256)


class InferenceStats(Envelope):
    """What the installed model did over one reporting interval."""

    kind: Literal[Kind.stats] = Kind.stats
    version: int | None = Field(None, ge=1)
    interval_s: float = Field(gt=0)
    count: int = Field(ge=0)
    errors: int = Field(0, ge=0)
    latency_p50_ms: float | None = Field(None, ge=0)
    latency_p95_ms: float | None = Field(None, ge=0)
    classes: dict[Name, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=64)
    histogram_low: float
    histogram_high: float
    chambers: list[ChamberStats] = Field(default_factory=list, max_length=64)


Message = Annotated[Heartbeat | UpdateEvent | InferenceStats, Field(discriminator="kind")]
_MESSAGE: TypeAdapter[Heartbeat | UpdateEvent | InferenceStats] = TypeAdapter(Message)


def telemetry_topic(device_id: str, kind: Kind) -> str:
    return f"{TOPIC_ROOT}/{device_id}/telemetry/{kind}"


def command_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/commands"


def encode(message: Heartbeat | UpdateEvent | InferenceStats) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def parse(topic: str, payload: bytes, max_bytes: int) -> Heartbeat | UpdateEvent | InferenceStats:
    """The message, if it is well-formed and its sender is the device whose topic it came on; else Rejected."""
    if len(payload) > max_bytes:
        raise Rejected(Rejection.oversized, f"{len(payload)} bytes (limit {max_bytes})")
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[3] != "telemetry" or parts[4] not in KINDS:
        raise Rejected(Rejection.topic, f"{topic!r} is not {TOPIC_ROOT}/<device>/telemetry/<kind>")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Rejected(Rejection.bad_json, str(error)) from None
    if not isinstance(document, dict):
        raise Rejected(Rejection.schema, "not a JSON object")
    try:
        message = _MESSAGE.validate_python(document)
    except ValidationError as error:
        raise Rejected(Rejection.schema, _first_problem(error)) from None
    if message.device_id != parts[2]:
        raise Rejected(Rejection.impersonation, f"{parts[2]!r} sent a message as {message.device_id!r}")
    if message.kind != parts[4]:
        raise Rejected(Rejection.topic, f"a {message.kind} message on the {parts[4]} topic")
    return message


def json_schema() -> dict[str, object]:
    return _MESSAGE.json_schema(by_alias=True)


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{where}: {first['msg']} ({error.error_count()} problem(s))"
