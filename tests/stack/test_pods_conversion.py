"""tests/support/pods.py on its own: a rendered container becomes the docker-py arguments the kubelet's
behaviour implies, and every field it cannot reproduce is refused by name (no Docker engine needed)."""

from __future__ import annotations

import copy
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support import pods

IMAGE = "ghcr.io/edgeops/edgeops:0.1.0"


class FakeImages:
    def __init__(self, user: str) -> None:
        self.user = user

    def get(self, image: str) -> Any:
        return type("Image", (), {"attrs": {"Config": {"User": self.user}}})()


class FakeClient:
    def __init__(self, user: str = "10001:10001") -> None:
        self.images = FakeImages(user)


def cronjob(**container_changes: Any) -> dict[str, Any]:
    container = {
        "name": "job",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["edgeops", "release", "heartbeat"],
        "args": ["--url", "$(ENDPOINT)/x", "$$(ENDPOINT)"],
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "env": [
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "access_key"}}},
            {"name": "URI", "value": "s3://$(KEY)@$(ENDPOINT)/$(UNDEFINED)"},
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "keys", "mountPath": "/var/run/keys", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        **container_changes,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "heartbeat", "namespace": "release"},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {
                "spec": {
                    "activeDeadlineSeconds": 60,
                    "template": {
                        "spec": {
                            "restartPolicy": "OnFailure",
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                            "containers": [container],
                            "volumes": [
                                {"name": "keys", "secret": {"secretName": "keys", "defaultMode": 0o440}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                            ],
                        }
                    },
                }
            },
        },
    }


def objects(*workloads: dict[str, Any]) -> pods.Objects:
    settings = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "release"},
        "data": {"ENDPOINT": "http://minio:9000"},
    }
    return pods.Objects(
        [
            settings,
            pods.secret("release", "creds", {"access_key": "edgeops-publisher"}),
            pods.secret("release", "keys", {"root.json": "{}", "timestamp-ab.pem": "KEY"}),
            *workloads,
        ],
        source="test",
        default_namespace="default",
    )


def convert(obj: dict[str, Any], tmp_path: Path, user: str = "10001:10001") -> pods.ContainerRun:
    rendered = objects(obj)
    workload = rendered.workloads()[0]
    name = workload.containers()[0][1]["name"]
    return pods.container_run(FakeClient(user), rendered, workload, name, scratch=tmp_path, hosts=["minio"])


def test_quantities_and_kubelet_expansion() -> None:
    assert pods.quantity("500m") == Decimal("0.5")
    assert pods.quantity("1Gi") == 2**30
    assert pods.quantity("64Mi") == 64 * 2**20
    assert pods.quantity("2") == 2
    assert pods.expand("$(A)-$$(A)-$(B)", {"A": "1"}) == "1-$(A)-$(B)"


@pytest.mark.skipif(os.geteuid() != 0, reason="fsGroup ownership of volume files needs root")
def test_a_container_becomes_docker_arguments(tmp_path: Path) -> None:
    run = convert(cronjob(), tmp_path)
    kwargs = run.kwargs
    assert kwargs["entrypoint"] == ["edgeops", "release", "heartbeat"]
    assert kwargs["command"] == ["--url", "http://minio:9000/x", "$(ENDPOINT)"]
    assert kwargs["environment"] == {
        "ENDPOINT": "http://minio:9000",
        "KEY": "edgeops-publisher",
        "URI": "s3://edgeops-publisher@http://minio:9000/$(UNDEFINED)",
        "NAMESPACE": "release",
    }
    assert run.secret_env == {"KEY", "URI"}
    assert "edgeops-publisher" not in run.describe()
    assert kwargs["user"] == "10001"
    assert kwargs["group_add"] == ["10001"]
    assert kwargs["read_only"] is True
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["network_mode"] == "host"
    assert kwargs["extra_hosts"] == {"minio": "127.0.0.1"}
    assert kwargs["mem_limit"] == 512 * 2**20
    assert kwargs["nano_cpus"] == 5 * 10**8
    assert kwargs["tmpfs"] == {"/tmp": f"rw,exec,nosuid,nodev,mode=1777,uid=10001,gid=10001,size={64 * 2**20}"}
    # The Secret volume as the kubelet writes it: ..data -> a timestamped directory, a symlink per key,
    # files group-owned by fsGroup with defaultMode, mounted read-only.
    ((host, bind),) = kwargs["volumes"].items()
    assert bind == {"bind": "/var/run/keys", "mode": "ro"}
    volume = Path(host)
    assert os.readlink(volume / "..data").startswith("..")
    assert os.readlink(volume / "timestamp-ab.pem") == "..data/timestamp-ab.pem"
    stat = (volume / "timestamp-ab.pem").stat()
    assert (stat.st_mode & 0o777, stat.st_gid) == (0o440, 10001)
    assert (volume / "root.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c, p: c.update(lifecycle={"preStop": {"exec": {"command": ["true"]}}}), "lifecycle"),
        (lambda c, p: c.update(tty=True), "tty"),
        (lambda c, p: c["volumeMounts"][1].update(subPath="x"), "subPath"),
        (
            lambda c, p: (
                p["volumes"].append({"name": "tmp2", "hostPath": {"path": "/"}})
                or c["volumeMounts"].append({"name": "tmp2", "mountPath": "/host"})
            ),
            "hostPath",
        ),
        (lambda c, p: c["volumeMounts"].append({"name": "data", "mountPath": "/data"}), "volumeClaimTemplates"),
        (lambda c, p: c["securityContext"].update(privileged=True), "privileged"),
        (lambda c, p: c["securityContext"].update(seLinuxOptions={}), "seLinuxOptions"),
        (lambda c, p: c.update(readinessProbe={"grpc": {"port": 1}}), "grpc"),
        (lambda c, p: c["resources"]["limits"].update({"nvidia.com/gpu": 1}), "nvidia.com/gpu"),
        (lambda c, p: c["env"].append({"name": "X", "valueFrom": {"resourceFieldRef": {}}}), "resourceFieldRef"),
        (lambda c, p: p.pop("enableServiceLinks"), "enableServiceLinks"),
        (lambda c, p: p.update(automountServiceAccountToken=True), "automountServiceAccountToken"),
        (lambda c, p: p.update(shareProcessNamespace=True), "shareProcessNamespace"),
    ],
)
def test_fields_it_cannot_reproduce_are_refused_by_name(change: Any, field: str, tmp_path: Path) -> None:
    obj = copy.deepcopy(cronjob())
    pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    change(pod["containers"][0], pod)
    with pytest.raises(pods.UnsupportedField, match=r"is not supported by tests/support/pods\.py") as refused:
        convert(obj, tmp_path)
    assert field in str(refused.value)


def test_what_a_kubelet_would_refuse_is_refused(tmp_path: Path) -> None:
    missing_key = cronjob()
    missing_key["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"][
        "secretKeyRef"
    ]["key"] = "secret_key"
    with pytest.raises(pods.PodSpecError, match="Secret release/creds has no key 'secret_key'"):
        convert(missing_key, tmp_path)
    as_root = cronjob()
    del as_root["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    with pytest.raises(pods.PodSpecError, match="runAsNonRoot, but the container would run as root"):
        convert(as_root, tmp_path, user="0")
    with pytest.raises(pods.PodSpecError, match="is not numeric"):
        convert(as_root, tmp_path, user="edgeops")
