"""The telemetry schema: what the fleet service accepts, and each way a message is refused."""

from __future__ import annotations

import json

import pytest

from edgeops.device.messages import Rejected, Rejection, encode, json_schema, parse, telemetry_topic
from edgeops.settings import FleetConfig
from tests.support.telemetry import heartbeat, stats

LIMIT = FleetConfig().max_message_bytes


def test_each_kind_round_trips_through_its_topic() -> None:
    config = FleetConfig()
    for message in (heartbeat("dev-1", 1), stats("dev-1", 2, config)):
        topic = telemetry_topic("dev-1", message.kind)
        assert parse(topic, encode(message), LIMIT) == message
    assert json.loads(encode(heartbeat("dev-1", 1)))["schema"] == "edgeops.telemetry/1"


def test_the_published_schema_names_every_kind() -> None:
    text = json.dumps(json_schema())
    assert all(name in text for name in ("Heartbeat", "UpdateEvent", "InferenceStats"))


def refusal(topic: str, payload: bytes) -> Rejection:
    with pytest.raises(Rejected) as refused:
        parse(topic, payload, LIMIT)
    return refused.value.reason


def test_each_malformed_input_is_refused_with_its_reason() -> None:
    good = encode(heartbeat("dev-1", 1))
    topic = telemetry_topic("dev-1", heartbeat("dev-1", 1).kind)
    document = json.loads(good)
    cases = {
        "bad JSON": (topic, b'{"schema": "edgeops.tel', Rejection.bad_json),
        "not UTF-8": (topic, b"\xff\xfe", Rejection.bad_json),
        "a JSON list": (topic, b"[1, 2]", Rejection.schema),
        "an unknown field": (topic, json.dumps(document | {"extra": 1}).encode(), Rejection.schema),
        "a missing field": (
            topic,
            json.dumps({k: v for k, v in document.items() if k != "seq"}).encode(),
            Rejection.schema,
        ),
        "a future schema version": (
            topic,
            json.dumps(document | {"schema": "edgeops.telemetry/2"}).encode(),
            Rejection.schema,
        ),
        "a negative counter": (topic, json.dumps(document | {"queued": -1}).encode(), Rejection.schema),
        "a naive timestamp": (
            topic,
            json.dumps(document | {"sent_at": "2026-12-01T00:00:00"}).encode(),
            Rejection.schema,
        ),
        "oversized": (topic, good + b" " * LIMIT, Rejection.oversized),
        "an unknown kind's topic": ("edgeops/devices/dev-1/telemetry/secrets", good, Rejection.topic),
        "outside the tree": ("edgeops/devices/dev-1/commands", good, Rejection.topic),
        "a heartbeat on the stats topic": ("edgeops/devices/dev-1/telemetry/stats", good, Rejection.topic),
        "another device's id": ("edgeops/devices/dev-2/telemetry/heartbeat", good, Rejection.impersonation),
    }
    found = {name: refusal(t, payload) for name, (t, payload, _) in cases.items()}
    assert found == {name: reason for name, (_, _, reason) in cases.items()}
