"""The fleet service's HTTP API under uvicorn: its documents, and its rate limit."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from edgeops.fleet.app import create_app
from edgeops.fleet.credentials import API_TOKEN_FILE, api_token
from edgeops.fleet.rollout import Bounds, Rollout, Step
from edgeops.fleet.store import Store
from edgeops.settings import FleetConfig, Settings
from tests.support.telemetry import heartbeat, incoming, serving


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_api_serves_the_fleet_and_limits_each_client(tmp_path: Path) -> None:
    settings = Settings(fleet=FleetConfig(rate_limit="5/minute"), state_dir=tmp_path / "state")
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}", settings.fleet)
    store.ingest([incoming(heartbeat("api-1", 1))])
    try:
        with serving(create_app(settings, store)) as url:
            status, body = get(f"{url}/api/devices")
            assert status == 200 and [d["device_id"] for d in json.loads(body)] == ["api-1"]
            assert get(f"{url}/api/schema")[0] == 200
            statuses = [get(f"{url}/api/fleet")[0] for _ in range(6)]
            assert statuses == [200] * 5 + [429]  # 5 a minute, per client and route
            assert get(f"{url}/api/health")[0] == 200  # the probe is never limited
            status, page = get(f"{url}/")
            assert status == 200 and b"plotly.min.js" in page
            assert get(f"{url}/static/plotly.min.js")[0] == 200
    finally:
        store.close()


def put(url: str, body: bytes, token: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_rollouts_state_is_taken_only_with_the_api_token(tmp_path: Path) -> None:
    """The rollout controller reports its state here, wherever it runs; nobody else may."""
    settings = Settings(state_dir=tmp_path / "state")
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}", settings.fleet)
    rollout = Rollout(
        model="mat-occupancy", channel="stable", candidate_sha256="a" * 64, candidate_first_version=2,
        baseline_version=1, baseline_sha256="b" * 64, bake_s=30, min_devices=5, step_timeout_s=60,
        bounds=Bounds(), steps=[Step(percent=5, version=2), Step(percent=100)], started_at=datetime.now(UTC),
    )  # fmt: skip
    body = rollout.model_dump_json().encode()
    try:
        with serving(create_app(settings, store)) as url:
            where = f"{url}/api/rollouts/mat-occupancy/stable"
            assert put(where, body, None) == 401
            assert put(where, body, "not-the-token") == 401
            assert json.loads(get(f"{url}/api/fleet")[1])["rollouts"] == []
            token = api_token(settings)  # the one the service made, in its state dir (0600)
            assert (settings.state_dir / API_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
            assert put(f"{url}/api/rollouts/mat-occupancy/canary", body, token) == 422  # another rollout's URL
            assert put(where, b'{"model": "mat-occupancy"}', token) == 422
            assert put(where, body, token) == 200
            halted = rollout.model_copy(update={"status": "halted"}).model_dump_json().encode()
            assert put(where, halted, token) == 200  # the newest state replaces the last
            (shown,) = json.loads(get(f"{url}/api/fleet")[1])["rollouts"]
            assert shown["status"] == "halted" and [s["percent"] for s in shown["steps"]] == [5, 100]
    finally:
        store.close()
