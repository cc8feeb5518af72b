"""Local stand-ins for the chart's third-party workloads, set up from the chart's own rendered objects.

The official mysql, MinIO and mc images cannot be pulled here, so the container tests run our images
against:

- MariaDB from Debian's packages (tests/images/mariadb, built here on the local Python base) in place of the
  MySQL StatefulSet: given the env the StatefulSet would give the official mysql image (database, user,
  passwords from the rendered Secret), read-only root filesystem, tmpfs data, no capabilities, uid 999;
- SeaweedFS (the local stack's S3 server) in place of MinIO and its bucket-setup Job: the root user from the
  MinIO Secret, the buckets and the OTA bucket's anonymous access from the Job's env, and one identity per
  S3 identity Secret, limited by the policy the Job would attach (the policies ConfigMap), translated into
  SeaweedFS actions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from edgeops import images as names
from edgeops.settings import Settings
from edgeops.stack import supervisor
from tests.support import pods

MARIADB_CONTEXT = Path(__file__).resolve().parents[1] / "images" / "mariadb"
MARIADB_REPOSITORY = "edgeops/test-mariadb"
MARIADB_UID = 999  # the image's `mysql` user, as the chart's mysql containers run


# --- MariaDB ------------------------------------------------------------------------------------------------


def mariadb_image(client: Any) -> str:
    """The MariaDB test image, built from tests/images/mariadb when this version of it is missing."""
    from docker.errors import BuildError, ImageNotFound

    digest = hashlib.sha256()
    for path in sorted(MARIADB_CONTEXT.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    tag = f"{MARIADB_REPOSITORY}:{digest.hexdigest()[:12]}"
    try:
        client.images.get(tag)
        return tag
    except ImageNotFound:
        pass
    base = next(
        (
            image
            for image in (names.LOCAL_PYTHON_IMAGE, names.PUBLIC_PYTHON_IMAGE)
            if any(image in i.tags for i in client.images.list(name=image.split(":")[0]))
        ),
        None,
    )
    if base is None:
        raise RuntimeError(
            f"neither {names.LOCAL_PYTHON_IMAGE} nor {names.PUBLIC_PYTHON_IMAGE} is on the Docker engine: "
            "run `make base-image` (or `make images`)"
        )
    try:
        client.images.build(
            path=str(MARIADB_CONTEXT),
            tag=tag,
            buildargs={"BASE_IMAGE": base},
            network_mode="host",  # apt reaches Debian's mirror over the host's network
            rm=True,
            forcerm=True,
            pull=False,
        )
    except BuildError as error:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in error.build_log)
        raise RuntimeError(f"building {tag} failed:\n{log[-3000:]}") from None
    return tag


@dataclass
class MariaDB:
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    seconds_to_ready: float = 0.0

    def connect(self) -> Any:
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            connect_timeout=5,
        )


@contextlib.contextmanager
def mariadb(
    client: Any, image: str, mysql_env: Mapping[str, str], port: int, timeout_s: float = 120
) -> Iterator[MariaDB]:
    """MariaDB on 127.0.0.1:`port`, set up from the MYSQL_* env of the chart's MySQL container."""
    env = {key: value for key, value in mysql_env.items() if key.startswith("MYSQL_")}
    env["MYSQL_TCP_PORT"] = str(port)
    owner = f"uid={MARIADB_UID},gid={MARIADB_UID}"
    kwargs = {
        "image": image,
        "name": f"edgeops-test-mariadb-{port}",
        "network_mode": "host",
        "detach": True,
        "environment": env,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "tmpfs": {
            "/var/lib/mysql": f"rw,exec,{owner}",
            "/run/mysqld": f"rw,{owner}",
            "/tmp": f"rw,{owner}",
        },
        "labels": {pods.TEST_LABEL: "mariadb stand-in for the chart's MySQL"},
    }
    server = MariaDB(port, env["MYSQL_DATABASE"], env["MYSQL_USER"], env["MYSQL_PASSWORD"])
    started = time.monotonic()
    container = client.containers.run(**kwargs)
    try:
        last: Exception | None = None
        while time.monotonic() - started < timeout_s:
            container.reload()
            if container.status not in ("created", "running"):
                raise RuntimeError(f"MariaDB exited during start-up:\n{pods.logs(container)}")
            try:
                server.connect().close()
                break
            except Exception as error:  # not up yet
                last = error
                time.sleep(0.5)
        else:
            raise RuntimeError(f"MariaDB not ready in {timeout_s:.0f} s ({last}):\n{pods.logs(container)}")
        server.seconds_to_ready = time.monotonic() - started
        yield server
    finally:
        container.remove(force=True)


# --- SeaweedFS as MinIO plus the bucket-setup Job -----------------------------------------------------------

# MinIO policy actions -> the SeaweedFS action that grants them (SeaweedFS has no finer grain).
S3_ACTIONS = {
    "s3:GetObject": "Read",
    "s3:PutObject": "Write",
    "s3:DeleteObject": "Write",
    "s3:AbortMultipartUpload": "Write",
    "s3:ListMultipartUploadParts": "Write",
    "s3:ListBucket": "List",
    "s3:ListBucketMultipartUploads": "List",
    "s3:GetBucketLocation": "List",
}


def seaweed_actions(policy: Mapping[str, Any], where: str) -> list[str]:
    """SeaweedFS `Action:bucket` grants for a MinIO policy of Allow statements on bucket ARNs."""
    grants: set[str] = set()
    for statement in policy["Statement"]:
        if statement.get("Effect") != "Allow" or set(statement) - {"Effect", "Action", "Resource"}:
            raise pods.UnsupportedField(where, f"policy statement {statement}", "only plain Allow statements")
        for resource in statement["Resource"]:
            if not resource.startswith("arn:aws:s3:::"):
                raise pods.UnsupportedField(where, f"policy resource {resource}")
            bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
            for action in statement["Action"]:
                if action not in S3_ACTIONS:
                    raise pods.UnsupportedField(where, f"policy action {action}", "no SeaweedFS equivalent known")
                grants.add(f"{S3_ACTIONS[action]}:{bucket}")
    return sorted(grants)


@dataclass
class S3StandIn:
    settings: Settings  # the admin (MinIO root) view, for the test's own reads
    buckets: dict[str, str]  # RAW_BUCKET / STAGING_BUCKET / OTA_BUCKET -> name
    identities: dict[str, tuple[str, str]] = field(repr=False)  # identity -> (access key, secret key)

    @property
    def port(self) -> int:
        return int(self.settings.s3_port)

    def client(self, identity: str | None = None) -> Any:
        """boto3 S3 client as the root user, or as one of the chart's identities."""
        from edgeops.stack.s3 import s3_client

        if identity is None:
            return s3_client(self.settings)
        access, secret_key = self.identities[identity]
        as_identity = self.settings.model_copy(
            update={"s3_access_key": SecretStr(access), "s3_secret_key": SecretStr(secret_key)}
        )
        return s3_client(as_identity)


def bucket_setup(objects: pods.Objects, namespace: str) -> tuple[pods.Workload, dict[str, str]]:
    """The chart's bucket-setup Job and the env its container would get."""
    jobs = [w for w in objects.workloads() if w.kind == "Job" and any("mc" in c["image"] for _, c in w.containers())]
    if len(jobs) != 1:
        raise AssertionError(f"expected one bucket-setup Job (an mc container), found {[str(j) for j in jobs]}")
    job = jobs[0]
    _, container = job.containers()[0]
    env, _ = pods.resolve_env(objects, job, container, f"{job} container {container['name']}", job.name)
    return job, env


@contextlib.contextmanager
def seaweed_for_chart(
    objects: pods.Objects, namespace: str, state_dir: Path, ports: Mapping[str, int]
) -> Iterator[S3StandIn]:
    """SeaweedFS on 127.0.0.1:ports["s3"], provisioned as the chart's bucket-setup Job provisions MinIO."""
    job, env = bucket_setup(objects, namespace)
    where = str(job)
    if supervisor.s3_backend() != "seaweedfs":
        raise RuntimeError("the chart's S3 stand-in is SeaweedFS; a `minio` binary on PATH would take its place")
    # The MinIO root user is SeaweedFS's admin.
    settings = Settings(
        state_dir=state_dir,
        host="127.0.0.1",
        s3_endpoint="",
        s3_port=ports["s3"],
        s3_access_key=SecretStr(env["MINIO_ROOT_USER"]),
        s3_secret_key=SecretStr(env["MINIO_ROOT_PASSWORD"]),
        seaweed_master_port=ports["master"],
        seaweed_volume_port=ports["volume"],
        seaweed_filer_port=ports["filer"],
        stop_timeout_s=5,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    service = supervisor.s3_service(settings)
    config_path = Path(next(arg for arg in service.command if arg.startswith("-s3.config=")).split("=", 1)[1])

    buckets = {key: env[key] for key in ("RAW_BUCKET", "STAGING_BUCKET", "OTA_BUCKET")}
    anonymous = {"getObject": ["Read"], "download": ["Read", "List"]}.get(env["OTA_ANONYMOUS_ACCESS"])
    if anonymous is None:
        raise pods.UnsupportedField(where, f"OTA_ANONYMOUS_ACCESS={env['OTA_ANONYMOUS_ACCESS']}")
    identities_config = [
        {
            "name": "admin",
            "credentials": [{"accessKey": env["MINIO_ROOT_USER"], "secretKey": env["MINIO_ROOT_PASSWORD"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        {"name": "anonymous", "actions": [f"{action}:{buckets['OTA_BUCKET']}" for action in anonymous]},
    ]
    # The Job attaches /policies/<identity>.json (its policies ConfigMap) to the user <IDENTITY>_ACCESS_KEY.
    volume = next(v for v in job.pod_spec.get("volumes") or [] if "configMap" in v)
    policies = objects.config_map_data(job.namespace, volume["configMap"]["name"])
    assert policies is not None, f"{where}: policies ConfigMap {volume['configMap']['name']} not rendered"
    identities: dict[str, tuple[str, str]] = {}
    for file_name, body in sorted(policies.items()):
        identity = file_name.removesuffix(".json")
        access, secret_key = env[f"{identity.upper()}_ACCESS_KEY"], env[f"{identity.upper()}_SECRET_KEY"]
        identities[identity] = (access, secret_key)
        identities_config.append(
            {
                "name": identity,
                "credentials": [{"accessKey": access, "secretKey": secret_key}],
                "actions": seaweed_actions(json.loads(body), f"{where} policy {file_name}"),
            }
        )
    config_path.touch(mode=0o600)
    config_path.write_text(json.dumps({"identities": identities_config}))
    try:
        supervisor.start_service(settings, service)
        admin = S3StandIn(settings, buckets, identities).client()
        for bucket in buckets.values():
            admin.create_bucket(Bucket=bucket)
        yield S3StandIn(settings, buckets, identities)
    finally:
        supervisor.stop(settings)
