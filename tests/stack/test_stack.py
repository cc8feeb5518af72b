"""The local stack: health, access rules on the buckets, idempotence, and a clear port clash."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgeops.settings import Settings
from edgeops.stack import supervisor
from edgeops.stack.s3 import put_if_absent, s3_client
from tests.conftest import free_ports


def http_status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, data=data), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_buckets_and_access_rules(stack_settings: Settings) -> None:
    s3 = s3_client(stack_settings)
    names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    assert {"raw", "mlflow", "ota"} <= names
    s3.put_object(Bucket="ota", Key="probe/visible.txt", Body=b"ota")
    s3.put_object(Bucket="raw", Key="probe/hidden.txt", Body=b"raw")
    base = stack_settings.s3_url
    assert http_status(f"{base}/ota/probe/visible.txt") == 200  # devices read anonymously
    assert http_status(f"{base}/raw/probe/hidden.txt") == 403
    assert http_status(f"{base}/mlflow/") == 403
    assert http_status(f"{base}/ota/probe/new.txt", "PUT", b"x") == 403  # nobody writes anonymously
    assert http_status(f"{base}/ota/probe/visible.txt", "DELETE") == 403
    assert s3.get_object(Bucket="ota", Key="probe/visible.txt")["Body"].read() == b"ota"


def test_conditional_write_refuses_an_existing_key(stack_settings: Settings) -> None:
    s3 = s3_client(stack_settings)
    assert put_if_absent(s3, "ota", "probe/once.txt", b"first", "text/plain")
    assert not put_if_absent(s3, "ota", "probe/once.txt", b"second", "text/plain")
    assert s3.get_object(Bucket="ota", Key="probe/once.txt")["Body"].read() == b"first"


def test_start_is_idempotent(stack_settings: Settings) -> None:
    before = {state.name: state.pid for state in supervisor.status(stack_settings)}
    supervisor.start(stack_settings)
    after = {state.name: state.pid for state in supervisor.status(stack_settings)}
    assert before == after
    assert all(state.healthy for state in supervisor.status(stack_settings))


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        settings = Settings(state_dir=tmp_path, s3_port=port)
        with pytest.raises(supervisor.StackError) as error:
            supervisor.start(settings)
    assert str(error.value).startswith(f"port {port} on 127.0.0.1 is already in use (seaweedfs needs it for s3_port)")
    assert "EDGEOPS_S3_PORT" in str(error.value)
    assert supervisor.status(settings)[0].pid is None  # nothing was started


def test_stop_never_kills_a_process_that_reused_a_stale_pid(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        settings = Settings(state_dir=tmp_path)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "mlflow.pid").write_text(str(stranger.pid))
        supervisor.stop(settings)
        assert stranger.poll() is None  # still alive
        assert not (tmp_path / "run" / "mlflow.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_service_that_dies_while_starting_is_named_with_its_log(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    dying = supervisor.Service(
        name="dying",
        command=[sys.executable, "-c", "import sys; print('cannot start: no config'); sys.exit(3)"],
        ports={"dying_port": port},
        health_url=f"http://127.0.0.1:{port}/",
    )
    with pytest.raises(supervisor.StackError, match="dying exited during start-up") as error:
        supervisor.start_service(Settings(state_dir=tmp_path), dying)
    assert "cannot start: no config" in str(error.value)


def test_stop_stops_the_broker_and_the_fleet_service(tmp_path: Path) -> None:
    """Their pids are recognised as ours (the fleet service is `python -m edgeops fleet serve`), so stop ends them."""
    mqtt, http = free_ports(2)
    settings = Settings(state_dir=tmp_path, fleet={"mqtt_port": mqtt, "http_port": http})  # type: ignore[arg-type]
    try:
        supervisor.start_service(settings, supervisor.broker_service(settings))
        supervisor.start_service(settings, supervisor.fleet_service(settings))
        pids = [supervisor.running_pid(settings, name) for name in ("mosquitto", "fleet")]
        assert all(pids), pids
        assert http_status(f"{settings.fleet_url}/api/health") == 200
    finally:
        supervisor.stop(settings)
    assert [supervisor.running_pid(settings, name) for name in ("mosquitto", "fleet")] == [None, None]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
