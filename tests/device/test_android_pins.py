"""The Android app runs the programs our exporter writes: its ExecuTorch runtime is the exporter's version."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def locked_version(package: str) -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return next(entry["version"] for entry in lock["package"] if entry["name"] == package)


def test_the_apps_executorch_runtime_is_the_exporters_version() -> None:
    versions = tomllib.loads((REPO / "android" / "gradle" / "libs.versions.toml").read_text())["versions"]
    assert versions["executorch"] == locked_version("executorch"), (
        "android/gradle/libs.versions.toml pins org.pytorch:executorch-android "
        f"{versions['executorch']}, but uv.lock exports with executorch {locked_version('executorch')}: "
        "a runtime older than the exporter may refuse its programs"
    )
