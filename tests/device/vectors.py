"""Shared test vectors: what the Python agent decodes and feeds its model, for the Android app's device-core to match.

The Python code is the truth: every expected value below comes from calling it (ble.decode, loop.FrameWindow,
loop.label_for). `python -m tests.device.vectors` rewrites the JSON files under VECTORS; the Kotlin tests read
them, and tests/device/test_shared_frame_vectors.py fails when they differ from what this module renders now.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch

from edgeops.device.ble import FrameError, decode
from edgeops.device.loop import FrameWindow, label_for
from edgeops.ota.release import cohort_position
from edgeops.settings import MatDataConfig

VECTORS = Path(__file__).resolve().parents[2] / "android" / "device-core" / "src" / "test" / "resources" / "vectors"
HEADER = b"\xa5"  # the header byte decode skips; any value will do
KPA_HINT = "looks like kPa"


def payload(*pressures: float) -> bytes:
    return HEADER + struct.pack("<4f", *pressures)


def frame_cases() -> list[tuple[str, bytes]]:
    nan, inf = math.nan, math.inf
    return [
        ("doc example (first frame of empty_or_cat.csv)", bytes.fromhex("a5c0d2bf47beb9bf47deb8bf4779babf47")),
        ("typical occupied frame", payload(98_750.25, 99_412.5, 101_003.0, 98_160.125)),
        (
            "extra bytes after offset 17 are ignored",
            payload(98_213.5, 98_163.5, 98_161.75, 98_164.95) + b"\x01\x02\x03",
        ),
        ("lower bound is plausible", payload(80_000.0, 80_000.0, 80_000.0, 80_000.0)),
        ("upper bound is plausible", payload(120_000.0, 120_000.0, 120_000.0, 120_000.0)),
        ("empty notification", b""),
        ("one byte short", payload(98_213.5, 98_163.5, 98_161.75, 98_164.95)[:-1]),
        ("header only", HEADER),
        ("NaN", payload(98_213.5, nan, 98_161.75, 98_164.95)),
        ("infinity", payload(98_213.5, 98_163.5, 98_161.75, inf)),
        ("negative infinity", payload(-inf, 98_163.5, 98_161.75, 98_164.95)),
        ("NaN before an out-of-range value: the first bad value decides", payload(nan, 5.0, 98_161.75, 98_164.95)),
        ("out-of-range value before a NaN: the first bad value decides", payload(5.0, nan, 98_161.75, 98_164.95)),
        ("kPa instead of Pa", payload(98.2135, 98.1635, 98.16175, 98.16495)),
        ("one chamber in kPa", payload(98_213.5, 98_163.5, 98.5, 98_164.95)),
        ("just below the lower bound", payload(79_999.99, 98_163.5, 98_161.75, 98_164.95)),
        ("just above the upper bound", payload(98_213.5, 120_000.01, 98_161.75, 98_164.95)),
        ("zero", payload(0.0, 0.0, 0.0, 0.0)),
        ("negative pressure", payload(-98_213.5, 98_163.5, 98_161.75, 98_164.95)),
        ("far too high, not a unit slip", payload(98_213.5, 98_163.5, 98_161.75, 1.0e9)),
    ]


def frame_vectors(config: MatDataConfig) -> dict[str, Any]:
    cases = []
    for name, data in frame_cases():
        case: dict[str, Any] = {"name": name, "payload_hex": data.hex()}
        try:
            case["pressures"] = list(decode(data, config))
        except FrameError as error:
            case["reason"] = error.reason
            case["looks_like_kpa"] = KPA_HINT in str(error)
        cases.append(case)
    return {"min_pa": config.min_pa, "max_pa": config.max_pa, "frames": cases}


def float32(value: float) -> float:
    """A float32 as decode yields it, so the Kotlin side holds exactly the same value."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def frames(count: int, start: int = 0) -> list[tuple[float, ...]]:
    return [tuple(float32(98_000.0 + 10.0 * n + chamber + 0.25) for chamber in range(4)) for n in range(start, count)]


def window_run(name: str, lengths: list[tuple[int, int]]) -> dict[str, Any]:
    """Frames fed through windows of each (length, frames) in turn; a new model's window starts with the frames
    its predecessor held, as loop.run hands them over (Predictor(agent, predictor.window.frames))."""
    steps: list[dict[str, Any]] = []
    window: FrameWindow | None = None
    fed = 0
    for length, count in lengths:
        window = FrameWindow(length, window.frames if window else ())
        steps.append({"model": {"window": length}})
        for pressures in frames(fed + count, start=fed):
            steps.append({"frame": list(pressures), "input": window.push(pressures)})
        fed += count
    return {"name": name, "steps": steps}


def window_vectors(config: MatDataConfig) -> dict[str, Any]:
    runs = [
        window_run("the dataset's window", [(config.window, config.window + 3)]),
        window_run("short window fills then slides", [(3, 6)]),
        window_run("a shorter model keeps the newest frames and classifies at once", [(4, 5), (2, 3)]),
        window_run("a longer model keeps every frame it can and waits for the rest", [(2, 4), (5, 5)]),
        window_run("a model change before the first window is full", [(4, 2), (3, 3)]),
    ]
    labels = list(config.labels)
    logits_cases: list[tuple[list[str], list[float]]] = [
        (labels, [0.1, 2.0]),
        (labels, [3.5, -1.25]),
        (labels, [-4.0, -2.5]),
        (labels, [1.5, 1.5]),  # a tie: the first label
        (["supine", "left", "right"], [0.5, 0.25, 0.75]),
        (["supine", "left", "right"], [0.0, 2.0, 2.0]),
    ]
    label_cases = [
        {"labels": names, "logits": logits, "label": label_for(torch.tensor(logits, dtype=torch.float32), names)}
        for names, logits in logits_cases
    ]
    return {"chambers": len(config.channel_columns), "runs": runs, "labels": label_cases}


def cohort_vectors() -> dict[str, Any]:
    """Staged rollouts: each device's place, as edgeops.ota.release.cohort_position gives it (OtaClient's Cohort.kt)."""
    devices = [f"device-{index}" for index in range(40)] + ["", "kitchen-mat", "ÿ-ünïcode", "x" * 300]
    models = ["mat-occupancy", "pmd-posture"]
    return {
        "cases": [
            {"device_id": device, "model": model, "position": cohort_position(device, model)}
            for device in devices
            for model in models
        ]
    }


def render(config: MatDataConfig | None = None) -> dict[str, str]:
    """File name → JSON text, as committed."""
    config = config or MatDataConfig()
    return {
        name: json.dumps(content, indent=1) + "\n"
        for name, content in (
            ("frames.json", frame_vectors(config)),
            ("windows.json", window_vectors(config)),
            ("cohorts.json", cohort_vectors()),
        )
    }


def main() -> None:
    VECTORS.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (VECTORS / name).write_text(text)
        print(f"wrote {VECTORS / name}")


if __name__ == "__main__":
    main()
