"""Health-gated staged rollouts: widen a release step by step while its devices stay healthy; halt and roll back
the moment they are not.

The candidate is the channel's newest release (published for the first step's share of devices, or widened to
it here); the baseline is the newest release before it that was for every device. Each step is a signed release
(`publisher.widen`), so nothing unsigned can widen a rollout. During a step's bake the controller reads what the
step's devices reported (`/api/releases/<model>/health` of the fleet service) and compares it with the bounds
and with the baseline. It advances when the bake is over and at least `min_devices` devices reported; it halts
as soon as a bound is crossed, and then publishes a signed rollback to the baseline (`publisher.rollback`).

Its state is one JSON file per model and channel, written atomically before each action, so a restarted
controller carries on where it stopped and never takes a decision twice: a step whose release is already
published is adopted, not published again. Each write is also sent to the fleet service, whose dashboard shows it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from edgeops.errors import InputError
from edgeops.files import write_atomically
from edgeops.fleet.credentials import api_token
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import ReleaseError, newest_release, read_release, read_state, rollback, widen
from edgeops.settings import Settings
from edgeops.stack.s3 import s3_client

logger = logging.getLogger(__name__)


class Bounds(BaseModel):
    """When a step's devices are unhealthy (`docs/fleet.md`, rollouts)."""

    max_failure_rate: float = Field(0.1, ge=0, le=1, description="refusals and fall-backs per install attempt")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="inference errors per inference")
    max_latency_ratio: float = Field(2.0, gt=0, description="the candidate's p95 over the baseline's")
    max_class_share: float = Field(0.98, gt=0, le=1, description="one class's share of predictions (a collapse)")
    min_inferences: int = Field(200, ge=1, description="before latency and the class mix are judged")
    baseline_window_s: float = Field(600.0, gt=0, description="how far back the baseline's figures reach")


class Step(BaseModel):
    percent: int
    version: int | None = None  # the signed release of this step
    started_at: datetime | None = None
    decision: Literal["advance", "halt"] | None = None
    decided_at: datetime | None = None
    why: str = ""
    evidence: dict[str, Any] = {}


class Rollout(BaseModel):
    model: str
    channel: str
    candidate_sha256: str
    candidate_first_version: int
    baseline_version: int | None
    baseline_sha256: str | None
    bake_s: float
    min_devices: int
    step_timeout_s: float
    bounds: Bounds
    steps: list[Step]
    status: Literal["running", "completed", "halted"] = "running"
    started_at: datetime
    rollback_version: int | None = None
    rollback_live_at: datetime | None = None
    crossed_at: datetime | None = None  # when the controller first saw a bound crossed

    def versions(self) -> list[int]:
        return [self.candidate_first_version, *(s.version for s in self.steps if s.version is not None)]


def state_file(settings: Settings, model: str, channel: str) -> Path:
    return settings.state_dir.resolve() / "rollouts" / f"{model}-{channel}.json"


def load(settings: Settings, model: str, channel: str) -> Rollout | None:
    path = state_file(settings, model, channel)
    return Rollout.model_validate_json(path.read_text()) if path.is_file() else None


def save(settings: Settings, rollout: Rollout) -> None:
    """On disk first (the controller resumes from it), then to the fleet service, which shows it on the dashboard
    wherever the controller runs; a service that does not take it delays no decision."""
    path = state_file(settings, rollout.model, rollout.channel)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = rollout.model_dump_json(indent=2).encode()
    write_atomically(path, body)
    model, channel = urllib.parse.quote(rollout.model), urllib.parse.quote(rollout.channel)
    request = urllib.request.Request(
        f"{settings.fleet_url}/api/rollouts/{model}/{channel}",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_token(settings)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except (urllib.error.URLError, OSError) as error:
        logger.warning("the fleet service did not take the rollout's state (%s); it is in %s", error, path)


def plan(
    settings: Settings,
    model: str,
    channel: str,
    steps: list[int],
    bake_s: float,
    min_devices: int,
    bounds: Bounds,
    step_timeout_s: float,
) -> Rollout:
    """A new rollout of the channel's newest release; refuses one while another of the same channel runs."""
    problems = []
    if not steps or steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] != 100:
        problems.append(f"steps {steps} must rise strictly from at least 1 and end at 100")
    existing = load(settings, model, channel)
    if existing is not None and existing.status == "running":
        problems.append(f"a rollout of {model} {channel} is running (`edgeops rollout status --model {model}`)")
    if problems:
        raise InputError(problems)
    keyring = Keyring.load(settings.release)
    s3 = s3_client(settings)
    state = read_state(s3, settings.ota_bucket, model, keyring)
    candidate = newest_release(s3, settings.ota_bucket, model, state, channel)
    if state is None or candidate is None:
        raise InputError([f"{model} has no {channel} release to roll out"])
    if candidate.rollout_percent > steps[0]:
        raise InputError(
            [
                f"{model} {channel} v{candidate.version} is already for {candidate.rollout_percent} % of devices, "
                f"more than the first step ({steps[0]} %): publish the candidate staged"
            ]
        )
    baseline = None
    for _version, path in reversed(state.releases(channel)[:-1]):
        earlier = read_release(s3, settings.ota_bucket, model, path)
        if earlier.rollout_percent == 100 and earlier.sha256 != candidate.sha256:
            baseline = earlier
            break
    return Rollout(
        model=model,
        channel=channel,
        candidate_sha256=candidate.sha256,
        candidate_first_version=candidate.version,
        baseline_version=baseline.version if baseline else None,
        baseline_sha256=baseline.sha256 if baseline else None,
        bake_s=bake_s,
        min_devices=min_devices,
        step_timeout_s=step_timeout_s,
        bounds=bounds,
        steps=[Step(percent=percent) for percent in steps],
        started_at=datetime.now(UTC),
    )


def fleet_health(settings: Settings, model: str, versions: list[int], since: datetime) -> dict[str, Any]:
    query = urllib.parse.urlencode({"versions": ",".join(map(str, versions)), "since": since.isoformat()})
    url = f"{settings.fleet_url}/api/releases/{urllib.parse.quote(model)}/health?{query}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(json.loads(response.read()))


def violations(health: dict[str, Any], baseline: dict[str, Any] | None, bounds: Bounds) -> list[str]:
    """Every bound the step's devices cross, in words an operator acts on."""
    found = []
    attempts = health["installed"] + health["refused"]
    failures = health["refused"] + health["fell_back"]
    if attempts and failures / attempts > bounds.max_failure_rate:
        reasons = ", ".join(f"{k} {v}" for k, v in health["refusal_reasons"].items()) or "fall-backs"
        found.append(
            f"{failures} of {attempts} installs failed ({failures / attempts:.0%} > {bounds.max_failure_rate:.0%}: "
            f"{reasons})"
        )
    if health["inferences"] and health["errors"] / health["inferences"] > bounds.max_error_rate:
        found.append(f"{health['errors']} inference errors in {health['inferences']}")
    if health["inferences"] < bounds.min_inferences:
        return found  # too few predictions yet to judge their speed or their mix
    base_p95 = baseline["latency_p95_ms"] if baseline else None
    if base_p95 and health["latency_p95_ms"] and health["latency_p95_ms"] / base_p95 > bounds.max_latency_ratio:
        found.append(
            f"latency p95 {health['latency_p95_ms']:.3f} ms is {health['latency_p95_ms'] / base_p95:.1f}x the "
            f"baseline's {base_p95:.3f} ms (bound {bounds.max_latency_ratio:g}x)"
        )
    share, label = _top_share(health["classes"])
    base_share, _ = _top_share(baseline["classes"]) if baseline else (0.0, "")
    if share >= bounds.max_class_share and base_share < bounds.max_class_share:
        found.append(
            f"predictions collapsed: {share:.1%} '{label}' (bound {bounds.max_class_share:.0%}; "
            f"baseline's top class {base_share:.1%})"
        )
    return found


def _top_share(classes: dict[str, int]) -> tuple[float, str]:
    total = sum(classes.values())
    if not total:
        return 0.0, ""
    label = max(classes, key=lambda name: classes[name])
    return classes[label] / total, label


Report = Callable[[str], None]


def run(settings: Settings, rollout: Rollout, report: Report, poll_s: float = 1.0) -> Rollout:
    """Drive `rollout` to completed or halted; resumable from its state file at any point."""
    keyring = Keyring.load(settings.release)
    s3 = s3_client(settings)
    save(settings, rollout)
    for index, step in enumerate(rollout.steps):
        if rollout.status != "running":
            break
        if step.decision is not None:
            continue  # decided before a restart: never again
        if step.version is None:
            step.version = _publish_step(settings, s3, keyring, rollout, step.percent)
            step.started_at = datetime.now(UTC)
            save(settings, rollout)
            report(f"step {index + 1}/{len(rollout.steps)}: v{step.version} for {step.percent} % of devices")
        _bake(settings, rollout, step, report, poll_s)
        save(settings, rollout)
        if step.decision == "halt":
            rollout.status = "halted"
            save(settings, rollout)  # the decision is on disk before the rollback is published
            _roll_back(settings, s3, keyring, rollout, report)
    if rollout.status == "running":
        rollout.status = "completed"
        save(settings, rollout)
        report(f"{rollout.model} {rollout.channel}: the candidate reached every device")
    return rollout


def _publish_step(settings: Settings, s3: Any, keyring: Keyring, rollout: Rollout, percent: int) -> int:
    """The step's signed release: adopted when it is live already (a restart after publishing), else widened."""
    state = read_state(s3, settings.ota_bucket, rollout.model, keyring)
    newest = newest_release(s3, settings.ota_bucket, rollout.model, state, rollout.channel)
    if newest is None or newest.sha256 != rollout.candidate_sha256:
        raise ReleaseError(
            f"the newest {rollout.model} {rollout.channel} release is no longer the candidate "
            f"({rollout.candidate_sha256[:12]}): someone else published; the rollout stops here"
        )
    if newest.rollout_percent == percent:
        return newest.version
    return widen(s3, settings.ota_bucket, rollout.model, rollout.channel, keyring, settings.release, percent).version


def _bake(settings: Settings, rollout: Rollout, step: Step, report: Report, poll_s: float) -> None:
    assert step.started_at is not None
    since = rollout.started_at - timedelta(seconds=rollout.bounds.baseline_window_s)
    baseline = (
        fleet_health(settings, rollout.model, [rollout.baseline_version], since)
        if rollout.baseline_version is not None
        else None
    )
    while True:
        health = fleet_health(settings, rollout.model, rollout.versions(), rollout.started_at)
        crossed = violations(health, baseline, rollout.bounds)
        elapsed = (datetime.now(UTC) - step.started_at).total_seconds()
        if crossed:
            rollout.crossed_at = rollout.crossed_at or datetime.now(UTC)
            _decide(step, "halt", "; ".join(crossed), health, baseline)
            report(f"halt at {step.percent} %: {step.why}")
            return
        enough = health["devices_reporting"] >= rollout.min_devices
        if elapsed >= rollout.bake_s and enough:
            _decide(
                step, "advance", f"{health['devices_reporting']} devices healthy for {elapsed:.0f} s", health, baseline
            )
            report(f"advance from {step.percent} %: {step.why}")
            return
        if elapsed >= rollout.bake_s + rollout.step_timeout_s:
            _decide(
                step,
                "halt",
                f"only {health['devices_reporting']} of the {rollout.min_devices} devices needed reported "
                f"within {elapsed:.0f} s",
                health,
                baseline,
            )
            report(f"halt at {step.percent} %: {step.why}")
            return
        time.sleep(poll_s)


def _decide(
    step: Step, decision: Literal["advance", "halt"], why: str, health: dict[str, Any], baseline: dict[str, Any] | None
) -> None:
    step.decision, step.why, step.decided_at = decision, why, datetime.now(UTC)
    step.evidence = {"candidate": health, "baseline": baseline}


def _roll_back(settings: Settings, s3: Any, keyring: Keyring, rollout: Rollout, report: Report) -> None:
    if rollout.rollback_version is not None:
        return  # published before a restart
    if rollout.baseline_version is None:
        report("no earlier release for every device to roll back to: the candidate stays at its step")
        return
    released = rollback(
        s3, settings.ota_bucket, rollout.model, rollout.channel, keyring, settings.release, rollout.baseline_version
    )
    rollout.rollback_version, rollout.rollback_live_at = released.version, datetime.now(UTC)
    save(settings, rollout)
    report(f"rolled back: v{released.version} brings every device back to v{rollout.baseline_version}'s model")
