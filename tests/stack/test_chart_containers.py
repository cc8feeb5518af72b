"""The chart's containers run as the chart declares them: rendered by `helm template`, run by Docker.

Every container in helm/ that runs an image we build is run here from its rendered spec (command, args,
env with Secrets and ConfigMaps resolved from the rendered objects, securityContext, volumes, resources;
tests/support/pods.py does the conversion and refuses what it cannot reproduce):

- the MLflow Deployment: its init container waits for the database, then the server must pass its startup
  probe within the probe's budget, pass its readiness and liveness probes, answer the UI and the API, keep
  its runs in the database and put an artifact logged through its proxy into the S3 bucket;
- the `helm test` Pod (the MLflow image): its checks against the running server and S3;
- the release heartbeat CronJob (the component image): with a throwaway keyring mounted as the
  release-keys Secret volume would be, it re-signs a published model's timestamp and exits 0;
- the release signer CronJob (the component image): it reads the keys and asks MLflow for requests.

The fleet service's Deployment (the component image: `edgeops fleet serve` and its wait-for-database) is not run
here yet: it is listed in NOT_RUN_YET, and checked offline until a test above runs it (its env resolves from the
rendered objects and sets only settings FleetConfig has, its probes name its port).

They run against stand-ins for the chart's third-party workloads, set up from the chart's own objects
(tests/support/stand_ins.py): MariaDB from Debian's packages (tests/images/mariadb) for MySQL, SeaweedFS for
MinIO and its bucket-setup Job. Everything shares the host's network (the engine here has no bridge): the
ports are chosen free and given to the chart as values (Service ports, MLflow's containerPort, and so the
wiring's ConfigMaps), the Services' names map to 127.0.0.1, and MLflow's extraArgs bind it to the loopback.
The MinIO, MySQL, mc and Mosquitto images cannot be pulled here (docs/kubernetes.md): their containers are
checked offline. Each run prints its seconds to ready against its budget (`pytest -s`).

Without a Docker daemon the container tests skip, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeops import images as names
from edgeops.settings import ClusterConfig, ReleaseConfig
from tests.conftest import REPO, free_ports, unavailable
from tests.support import cluster, pods, stand_ins

CLUSTER = ClusterConfig()
RELEASE, NAMESPACE = CLUSTER.helm_release, CLUSTER.helm_namespace
CHART = REPO / "helm" / "edgeops"
RELEASE_NAMESPACE = "edgeops-release"  # where `make release-keys-secret` puts the keys
OURS = f"{names.REGISTRY}/"
HELM_TEST_HOOK = "helm.sh/hook"
# The `helm test` check that only MinIO itself can pass: SeaweedFS has no MinIO health endpoint.
MINIO_ONLY_CHECKS = ("/minio/health/",)
FIGURES: list[str] = []


# The runs below, by the role of the container each covers.
RUN_HERE = {"mlflow init", "mlflow", "helm test", "heartbeat", "signer"}
# Containers of ours that no test here runs yet, and why; test_containers_not_run_yet_check_offline checks them
# without Docker meanwhile. A role moves to RUN_HERE with the test that runs it.
NOT_RUN_YET = {
    "fleet init": "the fleet service's wait-for-database: to run with the fleet Deployment's test",
    "fleet": "`edgeops fleet serve` (the fleet service): its container test is still to be written",
}


def role(workload: pods.Workload, container: dict[str, Any]) -> str | None:
    """Which run below covers a container of ours (or which NOT_RUN_YET entry); None for one nothing covers."""
    command = " ".join(str(part) for part in [*container.get("command", []), *container.get("args", [])])
    annotations = (workload.obj.get("metadata") or {}).get("annotations") or {}
    if workload.kind == "Deployment" and workload.name.endswith("-mlflow"):
        return {"wait-for-database": "mlflow init", "mlflow": "mlflow"}.get(container["name"])
    if workload.kind == "Deployment" and workload.name.endswith("-fleet"):
        return {"wait-for-database": "fleet init", "fleet": "fleet"}.get(container["name"])
    if workload.kind == "Pod" and annotations.get(HELM_TEST_HOOK) == "test":
        return "helm test"
    if workload.kind == "CronJob" and "release heartbeat" in command:
        return "heartbeat"
    if workload.kind == "CronJob" and "release sign-requests" in command:
        return "signer"
    return None


def workload_of(objects: pods.Objects, wanted: str) -> tuple[pods.Workload, dict[str, Any]]:
    found = [(w, c) for w in objects.workloads() for _, c in w.containers() if role(w, c) == wanted]
    assert len(found) == 1, f"expected one container for {wanted!r}, found {[str(w) for w, _ in found]}"
    return found[0]


# --- rendering ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    s3: int
    master: int
    volume: int
    filer: int
    mysql: int
    mlflow: int


@pytest.fixture(scope="module")
def ports() -> Ports:
    return Ports(*free_ports(6))


def chart_values(ports: Ports | None) -> dict[str, Any]:
    """Values for the test: the wiring on, and with `ports`, every Service on a port chosen free."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values: dict[str, Any] = {}
    if "enabled" in (defaults.get("wiring") or {}):
        values["wiring"] = {"enabled": True}
    if ports is not None:
        values |= {
            "minio": {"service": {"apiPort": ports.s3}},
            "mysql": {"service": {"port": ports.mysql}},
            # On the host's network the pod's port is a host port, and the Service port must match it; MLflow
            # listens on the loopback only (Click takes the last --host).
            "mlflow": {
                "containerPort": ports.mlflow,
                "service": {"port": ports.mlflow},
                "extraArgs": ["--host", "127.0.0.1"],
            },
        }
    return values


def render(values: dict[str, Any], scratch: Path) -> pods.Objects:
    """The chart as `helm template` renders it with `values` (nested, as in a values file) on its defaults."""
    scratch.mkdir(parents=True, exist_ok=True)
    values_file = scratch / f"values-{uuid.uuid4().hex[:8]}.yaml"
    values_file.write_text(yaml.safe_dump(values, sort_keys=False))
    return pods.Objects(cluster.helm_template(values_file, release=RELEASE), "helm/edgeops", NAMESPACE)


@pytest.fixture(scope="module")
def chart(ports: Ports, tmp_path_factory: pytest.TempPathFactory) -> pods.Objects:
    return render(chart_values(ports), tmp_path_factory.mktemp("render"))


def every_rendering(scratch: Path) -> list[pods.Objects]:
    """The chart with default ports (wiring and `helm test` on), and every local kustomization under manifests/."""
    renderings = [render(chart_values(None), scratch)]
    for kustomization in sorted((REPO / "manifests").rglob("kustomization.yaml")):
        resources = (yaml.safe_load(kustomization.read_text()) or {}).get("resources") or []
        if any("://" in str(resource) for resource in resources):
            continue  # upstream bases (Kubeflow Pipelines): not ours, and not renderable offline
        source = str(kustomization.parent.relative_to(REPO))
        renderings.append(pods.Objects(cluster.kustomize(kustomization.parent), source, "default"))
    return renderings


def service_hosts(objects: pods.Objects) -> list[str]:
    """Every DNS name of every rendered Service, each of which must resolve to 127.0.0.1 here."""
    domain = yaml.safe_load((CHART / "values.yaml").read_text()).get("clusterDomain", "cluster.local")
    hosts = []
    for service in objects.of_kind("Service"):
        name, namespace = service["metadata"]["name"], service["metadata"].get("namespace", NAMESPACE)
        hosts += [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{domain}"]
    return hosts


# --- Docker and the backing services ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        unavailable("the docker Python package is not installed")
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        unavailable(f"no Docker daemon answers ({error}); run the tests with `make pytest`")
    yield client
    leftovers = client.containers.list(all=True, filters={"label": pods.TEST_LABEL})
    for container in leftovers:
        container.remove(force=True)
    assert not leftovers, f"containers left running: {[c.name for c in leftovers]}"


def image_present(client: Any, image: str) -> None:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        pytest.fail(f"{image} is not built: run `make images`")


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if FIGURES:
        print("\n\nchart containers, seconds to ready against their budget:\n  " + "\n  ".join(FIGURES))


def record(line: str) -> None:
    FIGURES.append(line)
    print(f"\n{line}")


@dataclass
class Backing:
    db: stand_ins.MariaDB
    s3: stand_ins.S3StandIn


@pytest.fixture(scope="module")
def backing(
    docker_client: Any, chart: pods.Objects, ports: Ports, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backing]:
    mysql = chart.workload("StatefulSet", f"{RELEASE}-mysql")
    container = mysql.container("mysql")
    mysql_env, _ = pods.resolve_env(chart, mysql, container, str(mysql), mysql.pod_name)
    image = stand_ins.mariadb_image(docker_client)
    s3_ports = {"s3": ports.s3, "master": ports.master, "volume": ports.volume, "filer": ports.filer}
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(stand_ins.mariadb(docker_client, image, mysql_env, ports.mysql))
        s3 = stack.enter_context(
            stand_ins.seaweed_for_chart(chart, NAMESPACE, tmp_path_factory.mktemp("seaweedfs"), s3_ports)
        )
        record(f"backing: MariaDB ({image}) accepted the chart's MLflow user after {db.seconds_to_ready:.1f} s")
        yield Backing(db, s3)


# --- the MLflow Deployment ----------------------------------------------------------------------------------


@dataclass
class MlflowServer:
    run: pods.ContainerRun
    container: Any
    url: str
    started: pods.Started


@pytest.fixture(scope="module")
def mlflow_server(
    docker_client: Any, chart: pods.Objects, backing: Backing, ports: Ports, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """The Deployment's pod: init containers to completion, then the server until its startup probe passes."""
    deployment, _ = workload_of(chart, "mlflow")
    scratch = tmp_path_factory.mktemp("mlflow-pod")
    hosts = service_hosts(chart)
    for role_name, container in deployment.containers():
        image_present(docker_client, container["image"])
        if role_name != "init":
            continue
        run = pods.container_run(docker_client, chart, deployment, container["name"], scratch=scratch, hosts=hosts)
        done = pods.run_to_completion(docker_client, run, timeout_s=120)
        assert done.exit_code == 0, f"{run.where} exited {done.exit_code}:\n{done.output}"
        record(f"{run.where}: exited 0 after {done.seconds:.1f} s")
    run = pods.container_run(docker_client, chart, deployment, "mlflow", scratch=scratch, hosts=hosts)
    print(f"\n{run.describe()}")
    assert set(run.probes) == {"startup", "readiness", "liveness"}, run.probes
    started_at = time.monotonic()
    with pods.running(docker_client, run) as container:
        started = pods.wait_started(run.probes["startup"], run, container, started_at)
        record(started.report(run.where))
        # Ready once the readiness probe passes too; the kubelet starts it when the startup probe has passed.
        ready = pods.wait_started(run.probes["readiness"], run, container, time.monotonic())
        record(f"{run.where}: ready {started.seconds + ready.seconds:.1f} s after it started")
        yield MlflowServer(run, container, f"http://127.0.0.1:{ports.mlflow}", started)


@pytest.mark.slow
def test_mlflow_deployment_starts_within_its_probe_budget(mlflow_server: MlflowServer) -> None:
    run, container, started = mlflow_server.run, mlflow_server.container, mlflow_server.started
    assert started.seconds <= started.probe.budget_s
    # Once started, the kubelet's readiness and liveness probes pass too.
    for kind in ("readiness", "liveness"):
        ok, seen = pods.probe_once(run.probes[kind], run, container)
        assert ok, f"{run.probes[kind].describe()}: {seen}"
    # The engine applied what the chart declares.
    host_config, config = container.attrs["HostConfig"], container.attrs["Config"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    assert config["User"] == "1000:1000"
    assert host_config["Memory"] == 1024**3
    assert container.exec_run(["id", "-u"]).output.decode().strip() == "1000"
    assert container.exec_run(["touch", "/opt/venv/written"]).exit_code != 0  # read-only root filesystem
    assert container.exec_run(["touch", "/tmp/written", "/home/mlflow/written"]).exit_code == 0  # emptyDirs


@pytest.mark.slow
def test_mlflow_serves_ui_api_and_proxies_artifacts_to_s3(
    mlflow_server: MlflowServer, backing: Backing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    url = mlflow_server.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    with urllib.request.urlopen(f"{url}/", timeout=10) as response:
        assert response.status == 200
        assert b"MLflow" in response.read()
    with urllib.request.urlopen(f"{url}/version", timeout=10) as response:
        assert response.read().decode().strip() == names.MLFLOW_VERSION

    client = MlflowClient(tracking_uri=url)
    experiment = f"chart-containers-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "image", mlflow_server.run.image)
    client.log_metric(run.info.run_id, "seconds_to_start", mlflow_server.started.seconds)
    artifact = tmp_path / "proof.txt"
    body = f"logged through the chart's MLflow at {time.time()}\n".encode()
    artifact.write_bytes(body)
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)

    # The artifact went through the server's proxy into the staging bucket, written with MLflow's own identity.
    bucket = backing.s3.buckets["STAGING_BUCKET"]
    keys = [o["Key"] for o in backing.s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    landed = [key for key in keys if key.endswith(f"{run.info.run_id}/artifacts/proof.txt")]
    assert landed, f"no proof.txt of run {run.info.run_id} in s3://{bucket}/: {keys}"
    assert backing.s3.client("mlflow").get_object(Bucket=bucket, Key=landed[0])["Body"].read() == body
    # Downloads: MLflow 3 clients ask the server for a presigned URL on its own S3 endpoint (the chart's MinIO
    # Service name, so only clients inside the cluster can follow it) unless told to stay on the proxy.
    # The tracking URI is explicit: an earlier test's mlflow.set_tracking_uri() outranks MLFLOW_TRACKING_URI.
    repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=url)
    presigned = repository._get_presigned_download_url("proof.txt")
    s3_endpoint = urllib.parse.urlsplit(mlflow_server.run.env["MLFLOW_S3_ENDPOINT_URL"])
    link = urllib.parse.urlsplit(presigned.url)
    assert link.netloc == s3_endpoint.netloc, presigned.url
    in_cluster = urllib.request.Request(
        link._replace(netloc=f"127.0.0.1:{s3_endpoint.port}").geturl(),
        headers={**presigned.headers, "Host": link.netloc},  # as a pod resolving the Service name would send it
    )
    with urllib.request.urlopen(in_cluster, timeout=10) as response:
        assert response.read() == body
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    downloaded = client.download_artifacts(run.info.run_id, "proof.txt", str(tmp_path / "back"))
    assert Path(downloaded).read_bytes() == body

    # The run is in the MariaDB database the chart's Secret points at.
    with contextlib.closing(backing.db.connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM experiments WHERE experiment_id = %s", (int(experiment_id),))
        assert cursor.fetchone() == (experiment,)
        cursor.execute("SELECT value FROM params WHERE run_uuid = %s AND `key` = 'image'", (run.info.run_id,))
        assert cursor.fetchone() == (mlflow_server.run.image,)
    # Still up, within its memory limit.
    container = mlflow_server.container
    container.reload()
    assert container.status == "running", pods.logs(container)
    memory = container.stats(stream=False)["memory_stats"]
    peak, limit = memory.get("max_usage", memory.get("usage", 0)), container.attrs["HostConfig"]["Memory"]
    record(
        f"MLflow: UI and API answer; run {run.info.run_id[:8]} in MariaDB, its artifact at s3://{bucket}/{landed[0]}; "
        f"peak memory {peak / 2**20:.0f} MiB of its {limit / 2**20:.0f} MiB limit"
    )


@pytest.mark.slow
def test_helm_test_pod_passes_against_the_running_release(
    docker_client: Any, chart: pods.Objects, mlflow_server: MlflowServer, backing: Backing, tmp_path: Path
) -> None:
    """`helm test`'s checks: MLflow /health, anonymous access to the buckets, each identity's reach."""
    pod, container = workload_of(chart, "helm test")
    run = pods.container_run(docker_client, chart, pod, container["name"], scratch=tmp_path, hosts=service_hosts(chart))
    done = pods.run_to_completion(docker_client, run, timeout_s=120)
    lines = [line for line in done.output.splitlines() if line.startswith(("ok ", "BAD"))]
    failed = [line for line in lines if line.startswith("BAD")]
    minio_only = [line for line in failed if any(path in line for path in MINIO_ONLY_CHECKS)]
    assert lines, done.output
    assert failed == minio_only, f"{run.where}:\n{done.output}"
    assert done.exit_code == (1 if minio_only else 0), done.output
    record(
        f"{run.where}: {len(lines) - len(failed)} of {len(lines)} checks pass after {done.seconds:.1f} s"
        + (f" (MinIO's own health endpoint not served by the S3 stand-in: {minio_only})" if minio_only else "")
    )


# --- the release CronJobs -----------------------------------------------------------------------------------


@dataclass
class Wiring:
    objects: pods.Objects  # the chart and the Secrets `make kfp-install` and `make release-keys-secret` add
    keys_dir: Path
    release: ReleaseConfig


def made_by_make(chart: pods.Objects, keys_dir: Path) -> list[dict[str, Any]]:
    """The Secrets the Makefile makes beside the wiring (never rendered by the chart): `make kfp-install`
    copies each identity a settings ConfigMap names (label edgeops.io/s3-identity, annotation
    edgeops.io/s3-identity-secret) as edgeops-s3-<identity> with keys access_key/secret_key into that
    ConfigMap's namespace; `make release-keys-secret` puts the online keys and the root metadata in
    edgeops-release-keys."""
    made = []
    for config_map in chart.of_kind("ConfigMap"):
        meta = config_map["metadata"]
        identity = (meta.get("labels") or {}).get("edgeops.io/s3-identity")
        if not identity:
            continue
        namespace, name = (meta.get("annotations") or {})["edgeops.io/s3-identity-secret"].split("/")
        source = chart.secret_data(namespace, name)
        assert source is not None, f"ConfigMap {meta['name']} names Secret {namespace}/{name}, which is not rendered"
        copy = {"access_key": source["access-key"], "secret_key": source["secret-key"]}
        made.append(pods.secret(meta["namespace"], f"edgeops-s3-{identity}", copy))
    patterns = ("root.json", "[0-9]*.root.json", "targets*.pem", "snapshot*.pem", "timestamp*.pem")
    files = {path.name: path.read_bytes() for pattern in patterns for path in sorted(keys_dir.glob(pattern))}
    made.append(pods.secret(RELEASE_NAMESPACE, CLUSTER.release_keys_secret, files))
    return made


@pytest.fixture(scope="module")
def wiring(chart: pods.Objects, tmp_path_factory: pytest.TempPathFactory) -> Wiring:
    """A throwaway keyring (`edgeops keys init`) and the Secrets the Makefile would make from it."""
    from edgeops.ota.keys import init_keys

    root = tmp_path_factory.mktemp("release-keys")
    release = ReleaseConfig(keys_dir=root / "keys", root_key_dir=root / "root-key")
    init_keys(release)
    objects = pods.Objects(list(chart.items), chart.source, chart.default_namespace)
    objects.add(*made_by_make(chart, release.keys_dir))
    assert not any(path.name.startswith("root-") for path in release.keys_dir.iterdir())  # the root key stays out
    return Wiring(objects, release.keys_dir, release)


def run_cronjob(
    client: Any, wiring: Wiring, chart: pods.Objects, which: str, component_image: str, scratch: Path
) -> tuple[pods.ContainerRun, pods.Completed, int]:
    cronjob, container = workload_of(wiring.objects, which)
    assert container["image"] == component_image, f"{cronjob} runs {container['image']}, not the component image"
    deadline = int(cronjob.job_spec.get("activeDeadlineSeconds", 600))
    run = pods.container_run(
        client, wiring.objects, cronjob, container["name"], scratch=scratch, hosts=service_hosts(chart)
    )
    print(f"\n{run.describe()}")
    return run, pods.run_to_completion(client, run, timeout_s=deadline), deadline


@pytest.mark.slow
def test_release_heartbeat_cronjob_resigns_the_timestamp(
    docker_client: Any, component_image: str, chart: pods.Objects, backing: Backing, wiring: Wiring, tmp_path: Path
) -> None:
    from edgeops.ota.keys import Keyring
    from edgeops.ota.publisher import publish, read_state
    from tests.support.releases import draft, tiny_model, unique_model_name

    # A model published with the same keys, as the signer would have published it.
    s3, bucket = backing.s3.client("publisher"), backing.s3.buckets["OTA_BUCKET"]
    keyring = Keyring.load(wiring.release)
    name, model = unique_model_name("heartbeat"), tiny_model(7)
    publish(s3, bucket, keyring, wiring.release, draft(name, model), model.data)
    before = read_state(s3, bucket, name, keyring)
    assert before is not None

    run, done, deadline = run_cronjob(docker_client, wiring, chart, "heartbeat", component_image, tmp_path)
    assert done.exit_code == 0, f"{run.where} exited {done.exit_code}:\n{done.output}"
    assert f"{name}: re-signed" in done.output and "timestamp" in done.output, done.output
    after = read_state(s3, bucket, name, keyring)
    assert after is not None
    assert after.timestamp.signed.version == before.timestamp.signed.version + 1
    assert after.timestamp.signed.expires > before.timestamp.signed.expires
    record(
        f"{run.where}: exited 0 after {done.seconds:.1f} s (activeDeadlineSeconds {deadline}); timestamp of "
        f"{name} v{before.timestamp.signed.version} -> v{after.timestamp.signed.version}"
    )


@pytest.mark.slow
def test_release_signer_cronjob_reads_its_keys_and_mlflow(
    docker_client: Any,
    component_image: str,
    chart: pods.Objects,
    mlflow_server: MlflowServer,
    wiring: Wiring,
    tmp_path: Path,
) -> None:
    """No request is pending: the signer loads the keys from the Secret volume, asks the chart's MLflow
    (through the wiring's ConfigMap address) and exits 0."""
    run, done, deadline = run_cronjob(docker_client, wiring, chart, "signer", component_image, tmp_path)
    assert done.exit_code == 0, f"{run.where} exited {done.exit_code}:\n{done.output}"
    assert "no release requests" in done.output, done.output
    record(f"{run.where}: exited 0 after {done.seconds:.1f} s (activeDeadlineSeconds {deadline}), nothing pending")


# --- what is and is not run ---------------------------------------------------------------------------------


def test_every_container_of_ours_is_run_here(tmp_path: Path) -> None:
    """A workload added with one of our images fails here until a test above runs it."""
    seen: dict[str, list[str]] = {}
    for objects in every_rendering(tmp_path):
        for workload in objects.workloads():
            for _, container in workload.containers():
                if not str(container["image"]).startswith(OURS):
                    continue
                covered = role(workload, container)
                assert covered, (
                    f"{workload} container {container['name']} runs {container['image']}, but no test here runs it"
                )
                seen.setdefault(covered, []).append(f"{workload} {container['name']}")
    assert set(seen) == RUN_HERE | set(NOT_RUN_YET), seen
    assert not RUN_HERE & set(NOT_RUN_YET)
    pending = [f"{role_name}: {NOT_RUN_YET[role_name]} ({', '.join(seen[role_name])})" for role_name in NOT_RUN_YET]
    print("\nnot run here yet, checked offline:\n  " + "\n  ".join(pending))


def test_containers_not_run_yet_check_offline(tmp_path: Path) -> None:
    """What can be checked of the NOT_RUN_YET containers without running them: their env resolves from the
    rendered objects (Secrets, `$(VAR)`), every EDGEOPS_FLEET__* variable is a FleetConfig setting, an inline
    Python program compiles, and the probes name a declared port."""
    from edgeops.settings import FleetConfig

    objects = render(chart_values(None), tmp_path)
    checked = []
    for workload in objects.workloads():
        for _, container in workload.containers():
            covered = role(workload, container)
            if covered not in NOT_RUN_YET:
                continue
            where = f"{workload} container {container['name']}"
            env, _ = pods.resolve_env(objects, workload, container, where, workload.pod_name)
            unknown = sorted(
                name
                for name in env
                if name.startswith("EDGEOPS_FLEET__")
                and name.removeprefix("EDGEOPS_FLEET__").lower() not in FleetConfig.model_fields
            )
            assert not unknown, f"{where}: {unknown} are not settings of edgeops.settings.FleetConfig"
            argv = [str(part) for part in [*container.get("command", []), *container.get("args", [])]]
            if argv[:2] == ["python", "-c"]:
                compile(argv[2], where, "exec")
            ports = {port["name"] for port in container.get("ports") or []}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                handler = (container.get(kind) or {}).get("httpGet") or (container.get(kind) or {}).get("tcpSocket")
                if handler:
                    assert handler["port"] in ports, f"{where}: {kind} names port {handler['port']}, not one of {ports}"
            checked.append(f"{where} ({covered}): env resolves ({len(env)} variables)")
    assert len(checked) == len(NOT_RUN_YET), checked
    fleet = next(
        (workload, container)
        for workload in objects.workloads()
        for _, container in workload.containers()
        if role(workload, container) == "fleet"
    )
    env, _ = pods.resolve_env(objects, fleet[0], fleet[1], "fleet", fleet[0].pod_name)
    assert fleet[1]["command"] == ["edgeops", "fleet", "serve"]
    assert env["EDGEOPS_FLEET__DATABASE_URL"].startswith("mysql+pymysql://fleet:")
    assert "$(" not in env["EDGEOPS_FLEET__DATABASE_URL"], "the kubelet expands the password reference"
    assert env["EDGEOPS_FLEET__HTTP_HOST"] == "0.0.0.0"
    assert {probe["httpGet"]["path"] for probe in (fleet[1]["readinessProbe"], fleet[1]["livenessProbe"])} == {
        "/api/health"
    }
    print("\n" + "\n".join(checked))


def test_fleet_retrains_on_a_cluster_only_when_asked(tmp_path: Path) -> None:
    """By default the service only flags drift; `fleet.retrain.runner: cluster` gives it what submitting the cluster
    pipeline needs (the KFP API, the raw bucket as the pipeline identity, MLflow), and settings read it so."""
    from edgeops.settings import Settings

    def fleet_env(values: dict[str, Any]) -> dict[str, str]:
        objects = render(values, tmp_path)
        workload, container = next(
            (w, c) for w in objects.workloads() for _, c in w.containers() if role(w, c) == "fleet"
        )
        return pods.resolve_env(objects, workload, container, "fleet", workload.pod_name)[0]

    assert fleet_env(chart_values(None))["EDGEOPS_FLEET__RETRAIN_ON_DRIFT"] == "false"
    env = fleet_env(chart_values(None) | {"fleet": {"retrain": {"runner": "cluster"}}})
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        configured = Settings()
    assert configured.fleet.retrain_on_drift and configured.fleet.retrain_runner == "cluster"
    assert configured.cluster.kfp_host == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert configured.s3_access_key is not None and configured.s3_access_key.get_secret_value() == "edgeops-pipeline"
    assert configured.mlflow_tracking_uri.startswith("http://") and configured.s3_endpoint.startswith("http://")
    refused = subprocess.run(
        [cluster.helm_bin(), "template", RELEASE, str(cluster.CHART), "--set", "fleet.retrain.runner=local"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "/fleet/retrain/runner" in refused.stderr, refused.stderr


def test_third_party_containers_are_documented_and_check_offline(tmp_path: Path) -> None:
    """MinIO, MySQL, mc and Mosquitto cannot be pulled here: each image is named in docs/kubernetes.md, every shell
    script they run (commands, args, exec probes) parses with `sh -n`, and their env resolves from the rendered
    objects."""
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    checked: list[str] = []
    for objects in every_rendering(tmp_path):
        for workload in objects.workloads():
            for _, container in workload.containers():
                image = str(container["image"])
                if image.startswith(OURS):
                    continue
                where = f"{workload} container {container['name']}"
                repository = image.rsplit(":", 1)[0]
                assert f"`{repository}`" in docs, f"{where}: {repository} is not named in docs/kubernetes.md"
                pods.resolve_env(objects, workload, container, where, workload.pod_name)
                scripts = shell_scripts(container)
                for script in scripts:
                    done = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, check=False)
                    assert done.returncode == 0, f"{where}: `sh -n` refuses a script:\n{done.stderr}\n{script}"
                checked.append(f"{where} ({image}): env resolves, {len(scripts)} shell script(s) parse")
    assert checked
    print("\n" + "\n".join(checked))


def shell_scripts(container: dict[str, Any]) -> list[str]:
    """The scripts of `sh -c SCRIPT`-style argument lists in a container's command, args and exec probes."""
    argvs = [[*container.get("command", []), *container.get("args", [])]]
    argvs += [
        container[p]["exec"]["command"]
        for p in ("startupProbe", "readinessProbe", "livenessProbe")
        if "exec" in container.get(p, {})
    ]
    scripts = []
    for argv in argvs:
        if (
            len(argv) >= 3
            and str(argv[0]).rsplit("/", 1)[-1] in ("sh", "bash")
            and str(argv[1]).startswith("-")
            and "c" in str(argv[1])
        ):
            scripts.append(str(argv[2]))
    return scripts
