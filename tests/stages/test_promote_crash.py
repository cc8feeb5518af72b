"""`kill -9` of promote before and after every write it makes; one promote or reconcile then leaves
the registry alias on the live release, and `latest.json` equal to the signed one.

Each run forks a child that promotes with a hook armed on every S3 PUT (botocore's before-call and
after-call events) and every registry write (the MLflow client's create/alias calls); at write
point N the child sends itself SIGKILL. The parent then looks at what is live and recovers.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import read_release, read_state
from edgeops.ota.release import LATEST, manifest_key
from edgeops.settings import Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import get_if_present, s3_client
from edgeops.stages import promote as promote_stage
from tests.support.releases import unique_model_name
from tests.support.verified import verified_dir

REGISTRY_WRITES = (
    "create_registered_model",
    "create_model_version",
    "set_registered_model_alias",
    "delete_registered_model_alias",
)
COUNTED = "counted"  # the child's exit code when it ran to the end: how many write points it passed


class Tripwire:
    """Counts write points in this process and kills it at point `kill_at` (0: never)."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at, self.passed = kill_at, 0

    def point(self) -> None:
        self.passed += 1
        if self.passed == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def around(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def armed(*args: Any, **kwargs: Any) -> Any:
            self.point()
            result = call(*args, **kwargs)
            self.point()
            return result

        return armed


def promote_in_child(settings: Settings, verified: Path, out: Path, kill_at: int) -> int:
    """Fork, promote with the tripwire armed; -9 if killed, else the number of write points passed."""
    pid = os.fork()
    if pid == 0:  # the child: nothing it does returns to pytest
        code = 1
        try:
            from mlflow.utils import request_utils

            request_utils._cached_get_request_session.cache_clear()  # no HTTP connection shared with the parent
            wire = Tripwire(kill_at)
            make_s3, make_client = s3_client, tracking.client

            def armed_s3(s: Settings) -> Any:
                client = make_s3(s)
                client.meta.events.register("before-call.s3.PutObject", lambda **_: wire.point())
                client.meta.events.register("after-call.s3.PutObject", lambda **_: wire.point())
                return client

            def armed_client(s: Settings) -> Any:
                client = make_client(s)
                for method in REGISTRY_WRITES:
                    setattr(client, method, wire.around(getattr(client, method)))
                return client

            promote_stage.s3_client = armed_s3  # type: ignore[assignment]
            tracking.client = armed_client  # type: ignore[assignment]
            promote_stage.promote(verified, out, settings)
            code = 100 + wire.passed
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    assert code >= 100, f"the promote child failed (exit {code}) instead of finishing or being killed"
    return code - 100


def disagreement(settings: Settings, name: str) -> str:
    """'' when the alias names the live stable release and latest.json is the signed one, else what differs."""
    s3, keyring = s3_client(settings), Keyring.load(settings.release)
    state = read_state(s3, settings.ota_bucket, name, keyring)
    releases = state.releases(settings.release.channel) if state else []
    live = read_release(s3, settings.ota_bucket, name, releases[-1][1]).registry_version if releases else None
    try:
        alias: int | None = int(
            MlflowClient(settings.tracking_uri).get_model_version_by_alias(name, settings.registry_alias).version
        )
    except MlflowException:
        alias = None
    if alias != live:
        return f"alias on {alias}, live release carries registry version {live}"
    if state is not None:
        signed = state.targets.signed.targets[LATEST].hashes["sha256"]
        found = get_if_present(s3, settings.ota_bucket, manifest_key(name))
        if found is None or sha256_bytes(found[0]) != signed:
            return "latest.json is not the signed one"
    return ""


@pytest.mark.parametrize("history", ["first promote", "later promote"])
def test_kill_9_at_every_write_point_never_leaves_alias_and_live_release_apart(
    stack_settings: Settings, tmp_path: Path, history: str
) -> None:
    name = unique_model_name("crash")
    verified = verified_dir(stack_settings, tmp_path / "verified", name)
    if history == "later promote":
        assert promote_in_child(stack_settings, verified, tmp_path / "out", kill_at=0) > 0
    points = promote_in_child(stack_settings, verified, tmp_path / "out", kill_at=0)
    assert points >= 10  # every PUT and registry write, before and after

    # A first promote is replayed on a fresh name each time; a later one on top of whatever the crash left.
    inconsistent, recoveries = [], {"promote": 0, "reconcile": 0}
    for kill_at in range(1, points + 1):
        if history == "first promote":
            name = unique_model_name("crash")
            verified = verified_dir(stack_settings, tmp_path / f"verified-{kill_at}", name)
        assert promote_in_child(stack_settings, verified, tmp_path / "out", kill_at) == -signal.SIGKILL
        recovery = "reconcile" if kill_at % 2 else "promote"
        recoveries[recovery] += 1
        if recovery == "reconcile":
            promote_stage.reconcile(stack_settings, name, Keyring.load(stack_settings.release))
        else:
            promote_stage.promote(verified, tmp_path / "out", stack_settings)
        problem = disagreement(stack_settings, name)
        if problem:
            inconsistent.append(f"killed at point {kill_at}, recovered by {recovery}: {problem}")
    print(f"{history}: {points} kill points, recoveries {recoveries}, inconsistent {len(inconsistent)}")
    assert inconsistent == []
