"""The Android app's device-core is tested on vectors the Python agent's own code produced; they must stay current."""

from __future__ import annotations

import json

from edgeops.device.ble import NON_FINITE, OUT_OF_RANGE, SHORT
from tests.device.vectors import VECTORS, render


def test_committed_vectors_are_what_the_python_code_produces_now() -> None:
    for name, text in render().items():
        committed = VECTORS / name
        assert committed.is_file(), f"{committed} is missing; run `python -m tests.device.vectors`"
        assert committed.read_text() == text, (
            f"{committed} differs from what the Python code produces now; if the change is intended, "
            "run `python -m tests.device.vectors` and check that the Kotlin tests (make android-test) still pass"
        )


def test_vectors_cover_every_refusal_and_the_kpa_hint() -> None:
    frames = json.loads(render()["frames.json"])["frames"]
    reasons = {case.get("reason") for case in frames}
    assert {SHORT, NON_FINITE, OUT_OF_RANGE, None} <= reasons
    assert any(case.get("looks_like_kpa") for case in frames)
    assert any(case.get("reason") == OUT_OF_RANGE and not case["looks_like_kpa"] for case in frames)
    doc = frames[0]
    assert doc["pressures"][0] == 98213.5  # docs/ble-protocol.md's example frame
