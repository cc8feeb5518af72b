"""The fleet service's HTTP API under uvicorn: its documents, and its rate limit."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from edgeops.fleet.app import create_app
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
    settings = Settings(fleet=FleetConfig(rate_limit="5/minute"))
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
