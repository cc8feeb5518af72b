"""A Helm release named anything but `edgeops` is wired as completely as the default one, offline.

The chart as `make deploy` installs it under release `other`, the wiring and Secret copies `make kfp-install`
and `make release-keys-secret` apply against a stand-in kubectl, and the compiled cluster pipeline together
form the cluster's objects: every Secret, ConfigMap, ServiceAccount and Service any of them names must be
among them, in the namespace it is named in. The wiring's CronJobs run the settings' component image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeops.settings import Settings
from tests.conftest import REPO
from tests.support.cluster import (
    CHART,
    NAMESPACE,
    WIRING,
    Recipe,
    by_kind,
    created_secrets,
    helm_template,
    pod_spec,
    read_secrets,
    run_recipe,
)

RELEASE = "other"  # contains no "edgeops": the chart names its objects other-edgeops-*
CLUSTER_SCOPED = {"Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
WORKLOADS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# An in-cluster Service address: <service>.<namespace>.svc.<domain>[:port]
SERVICE_ADDRESS = re.compile(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local(?::([0-9]+))?")

Key = tuple[str, str | None, str]  # (kind, namespace, name)


def key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    namespace = None if obj["kind"] in CLUSTER_SCOPED else meta.get("namespace", NAMESPACE)
    return obj["kind"], namespace, meta["name"]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def references(obj: dict[str, Any]) -> Iterator[tuple[Key, str]]:
    """Every object `obj` names by reference, and where."""
    namespace = key(obj)[1]
    what = f"{obj['kind']}/{obj['metadata']['name']} in {namespace}"
    if obj["kind"] == "ConfigMap":
        source = (obj["metadata"].get("annotations") or {}).get("edgeops.io/s3-identity-secret")
        if source:
            secret_namespace, _, name = source.partition("/")
            yield ("Secret", secret_namespace, name), f"{what}: the S3 identity it names"
    if obj["kind"] not in WORKLOADS:
        return
    spec = pod_spec(obj)
    if spec.get("serviceAccountName", "default") != "default":
        yield ("ServiceAccount", namespace, spec["serviceAccountName"]), f"{what}: serviceAccountName"
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            yield ("Secret", namespace, volume["secret"]["secretName"]), f"{what}: volume {volume['name']}"
        if "configMap" in volume:
            yield ("ConfigMap", namespace, volume["configMap"]["name"]), f"{what}: volume {volume['name']}"
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        where = f"{what}: container {container['name']}"
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if ref := source.get("secretKeyRef"):
                yield ("Secret", namespace, ref["name"]), f"{where}: env {env['name']}"
            if ref := source.get("configMapKeyRef"):
                yield ("ConfigMap", namespace, ref["name"]), f"{where}: env {env['name']}"
        for source in container.get("envFrom", []):
            if ref := source.get("secretRef"):
                yield ("Secret", namespace, ref["name"]), f"{where}: envFrom"
            if ref := source.get("configMapRef"):
                yield ("ConfigMap", namespace, ref["name"]), f"{where}: envFrom"


def service_addresses(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str, int | None, str]]:
    """(service, namespace, port) of every in-cluster address in a ConfigMap's data or a container's env and args."""
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            texts = list(strings(obj.get("data", {})))
        elif obj["kind"] in WORKLOADS:
            containers = [*pod_spec(obj).get("initContainers", []), *pod_spec(obj).get("containers", [])]
            texts = [text for c in containers for text in strings([c.get("env", []), c.get("args", [])])]
        else:
            continue
        for text in texts:
            for service, namespace, port in SERVICE_ADDRESS.findall(text):
                yield service, namespace, int(port) if port else None, f"{obj['kind']}/{obj['metadata']['name']}"


def compiled_references() -> Iterator[tuple[Key, str]]:
    """What the compiled cluster pipeline's tasks mount in the KFP namespace."""
    documents = [doc for doc in yaml.safe_load_all((REPO / "pipelines" / "edgeops_cluster.yaml").read_text()) if doc]
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    namespace = Settings().cluster.kfp_namespace
    for name, config in executors.items():
        for source in config.get("configMapAsEnv", []):
            yield ("ConfigMap", namespace, source["configMapName"]), f"pipeline task {name}"
        for source in config.get("secretAsEnv", []):
            yield ("Secret", namespace, source["secretName"]), f"pipeline task {name}"


@pytest.fixture(scope="module")
def deployed() -> list[dict[str, Any]]:
    """The chart as `make deploy RELEASE=other` installs it (no values; the wiring is off)."""
    return helm_template(release=RELEASE)


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    return run_recipe("kfp-install", tmp_path_factory.mktemp("kfp-install"), f"RELEASE={RELEASE}")


@pytest.fixture(scope="module")
def keys_secret(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    directory = tmp_path_factory.mktemp("release-keys")
    keys = directory / "keys"
    keys.mkdir()
    for name in ("root.json", "targets.pem", "snapshot.pem", "timestamp.pem"):
        (keys / name).write_text("x")
    return run_recipe("release-keys-secret", directory, f"KEYS_DIR={keys}", f"RELEASE={RELEASE}")


def test_every_reference_resolves_under_another_release_name(
    deployed: list[dict[str, Any]], wired: Recipe, keys_secret: Recipe
) -> None:
    made = [("Secret", namespace, name) for namespace, name in created_secrets(wired.calls + keys_secret.calls)]
    cluster = {key(obj) for obj in deployed + wired.applied} | set(made)

    # kfp-install copies the identities from the Secrets the chart renders for this release, not from
    # `<release>-minio-<identity>`.
    chart_secrets = {(namespace, name) for kind, namespace, name in map(key, deployed) if kind == "Secret"}
    assert read_secrets(wired.calls) == {
        (NAMESPACE, f"{RELEASE}-edgeops-minio-pipeline"),
        (NAMESPACE, f"{RELEASE}-edgeops-minio-publisher"),
    }
    assert read_secrets(wired.calls) <= chart_secrets

    # The wiring was applied, and everything anything names is there.
    applied = {key(obj) for obj in wired.applied}
    for name in ("edgeops-release-signer", "edgeops-release-heartbeat"):
        assert ("CronJob", "edgeops-release", name) in applied
    assert ("ConfigMap", Settings().cluster.kfp_namespace, Settings().cluster.settings_config_map) in applied
    named = [ref for obj in deployed + wired.applied for ref in references(obj)] + list(compiled_references())
    assert len(named) > 20
    missing = sorted(
        {
            f"{where} names {kind} {namespace}/{name}"
            for (kind, namespace, name), where in named
            if (kind, namespace, name) not in cluster
        }
    )
    assert not missing, "\n".join(missing)

    # Every in-cluster address is a Service of this release, on a port it serves.
    services = by_kind([obj for obj in deployed if obj["metadata"].get("namespace") == NAMESPACE], "Service")
    addresses = list(service_addresses(deployed + wired.applied))
    assert {service for service, *_ in addresses} >= {f"{RELEASE}-edgeops-minio", f"{RELEASE}-edgeops-mlflow"}
    for service, namespace, port, where in addresses:
        assert namespace == NAMESPACE and service in services, f"{where} names Service {namespace}/{service}"
        served = {entry["port"] for entry in services[service]["spec"]["ports"]}
        assert port is None or port in served, f"{where}: {service} serves {served}, not {port}"


def test_wiring_runs_the_settings_component_image(wired: Recipe, tmp_path: Path) -> None:
    default = Settings.model_fields["component_image"].default
    assert yaml.safe_load((CHART / "values.yaml").read_text())["wiring"]["componentImage"] == default
    rendered = helm_template(sets=["wiring.enabled=true"], show_only=WIRING)
    images = {
        container["image"] for job in by_kind(rendered, "CronJob").values() for container in pod_spec(job)["containers"]
    }
    assert images == {default}, "the chart's default is the settings' component image"

    images = {
        container["image"]
        for job in by_kind(wired.applied, "CronJob").values()
        for container in pod_spec(job)["containers"]
    }
    assert images == {Settings().component_image}
    moved = "registry.example:5000/team/edgeops:1.2.3"
    recipe = run_recipe("kfp-install", tmp_path, env={"EDGEOPS_COMPONENT_IMAGE": moved})
    images = {
        container["image"]
        for job in by_kind(recipe.applied, "CronJob").values()
        for container in pod_spec(job)["containers"]
    }
    assert images == {moved}, "kfp-install passes EDGEOPS_COMPONENT_IMAGE, as the compiled pipeline takes it"
