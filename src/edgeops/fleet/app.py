"""The fleet service's HTTP side: a small JSON API with rate limits, and the dashboard that reads it."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

from edgeops.device.messages import json_schema
from edgeops.fleet.credentials import api_token
from edgeops.fleet.rollout import Rollout
from edgeops.fleet.store import Store
from edgeops.fleet.summary import fleet_summary
from edgeops.settings import Settings

DASHBOARD = Path(__file__).parent / "dashboard"


@cache
def plotly_js() -> str:
    """Plotly's own bundle from its Python package: the dashboard needs no network."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def create_app(settings: Settings, store: Store, reference: dict[str, list[float]] | None = None) -> FastAPI:
    limit = settings.fleet.rate_limit
    limiter = Limiter(key_func=get_remote_address, default_limits=[limit])
    app = FastAPI(title="edgeops fleet", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    training = reference or {}

    @app.get("/api/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/fleet")
    @limiter.limit(limit)
    def fleet(request: Request) -> JSONResponse:
        return JSONResponse(fleet_summary(store, training, settings.fleet))

    @app.get("/api/devices")
    @limiter.limit(limit)
    def devices(request: Request) -> list[dict[str, Any]]:
        return store.devices()

    @app.get("/api/counters")
    @limiter.limit(limit)
    def counters(request: Request) -> dict[str, Any]:
        stored = store.stored_per_device()
        return store.counters() | {
            "devices": {device: {"stored": n, "max_seq": top} for device, (n, top) in stored.items()}
        }

    @app.get("/api/releases/{model}/health")
    @limiter.limit(limit)
    def release_health(request: Request, model: str, versions: str, since: datetime) -> dict[str, Any]:
        """The evidence a staged rollout decides on: `versions` comma-separated, `since` ISO 8601 with a zone."""
        try:
            wanted = [int(v) for v in versions.split(",") if v]
        except ValueError:
            raise HTTPException(422, f"versions must be comma-separated integers, not {versions!r}") from None
        if since.tzinfo is None:
            raise HTTPException(422, "since needs a time zone (e.g. 2026-12-01T03:00:00+00:00)")
        return store.release_health(model, wanted, since)

    token = cache(lambda: api_token(settings))  # made on first use: a service nobody writes to writes no token

    @app.put("/api/rollouts/{model}/{channel}")
    @limiter.limit(limit)
    def report_rollout(
        request: Request, model: str, channel: str, rollout: Rollout, authorization: str = Header("")
    ) -> dict[str, bool]:
        """A rollout controller's newest state (`edgeops rollout`), for the dashboard; needs the API token."""
        if not secrets.compare_digest(authorization.encode(), f"Bearer {token()}".encode()):
            raise HTTPException(401, "a rollout's state needs the fleet API token (Authorization: Bearer …)")
        if (rollout.model, rollout.channel) != (model, channel):
            raise HTTPException(422, f"the state is of {rollout.model} {rollout.channel}, not {model} {channel}")
        store.save_rollout(rollout.model_dump(mode="json"), rollout.started_at, datetime.now(UTC))
        return {"ok": True}

    @app.get("/api/schema")
    def schema() -> dict[str, object]:
        return json_schema()

    @app.get("/static/plotly.min.js")
    def plotly() -> Response:
        return Response(plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=DASHBOARD), name="static")

    @app.get("/")
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html")

    return app
