"""Rendered Kubernetes pods, run with Docker as a kubelet would run them, as far as one host allows.

`tests.support.cluster` renders objects; `Objects` indexes them (and Secrets a test adds, such as
the ones `make kfp-install` would copy); `Objects.workloads()` lists every pod template with its containers.
`container_run` turns one container of a workload into `ContainerRun.kwargs` for docker-py's
`containers.run`, resolving what the kubelet would:

- command/args -> entrypoint/command, with `$(VAR)` expanded from the container's env;
- env and envFrom: values, `$(VAR)` references to earlier variables, `secretKeyRef`/`configMapKeyRef` and
  `configMapRef`/`secretRef` resolved from the rendered objects (a missing, non-optional one is a
  `PodSpecError`: the kubelet would not start the container either), `fieldRef` to the pod's name/namespace;
- securityContext (container over pod): runAsUser/runAsGroup -> user, fsGroup/supplementalGroups ->
  group_add, readOnlyRootFilesystem -> read_only, capabilities -> cap_drop/cap_add,
  allowPrivilegeEscalation false -> no-new-privileges, seccomp RuntimeDefault -> the engine's default
  profile; runAsNonRoot is checked against the user the container would run as;
- volumes: emptyDir -> a tmpfs at the mountPath (sizeLimit -> size; exec allowed as on a node's disk; owned by
  the container's user, because Docker gives a tmpfs over an image directory that directory's mode and
  root ownership, where an emptyDir is writable by every user of the pod); secret/configMap -> the
  kubelet's layout (`..data` symlinked to a timestamped directory, one symlink per key; defaultMode/items;
  group fsGroup with the read bits it adds) in a scratch directory, bind-mounted read-only;
- resources: limits -> memory and CPU limits, requests.cpu -> CPU shares;
- networking: the host's (`network_mode=host`; the engine here has no bridge), service names mapped to
  127.0.0.1 with `extra_hosts`, so every port in the rendered objects must be one the test chose free.

Probes (`Probe`) are evaluated from outside the container as the kubelet does: httpGet to 127.0.0.1 with the
Host header a kubelet sends (the pod's address and the port), tcpSocket, or exec inside the container, after
initialDelaySeconds, every periodSeconds, each within timeoutSeconds, failing after failureThreshold
failures in a row. `wait_started` returns the seconds to success against the budget
initialDelaySeconds + failureThreshold x periodSeconds.

Anything this module cannot reproduce raises `UnsupportedField`, naming the field, rather than being
skipped: a test passes only for what it actually ran.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import os
import re
import shlex
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
# Where the kubelet's address for a pod would be: the Host header of an httpGet probe names it.
POD_IP = "10.244.0.10"
TEST_LABEL = "io.edgeops.test"  # on every container this module starts, to find leftovers


class UnsupportedField(Exception):
    """A field of a rendered pod that this harness cannot reproduce with Docker on one host."""

    def __init__(self, where: str, path: str, why: str = "") -> None:
        reason = f": {why}" if why else ""
        super().__init__(f"{where}: {path} is not supported by tests/support/pods.py{reason}")


class PodSpecError(Exception):
    """The pod would not start on a cluster either (a missing Secret key, a root user with runAsNonRoot, ...)."""


# --- rendering ----------------------------------------------------------------------------------------------


# --- the rendered objects -----------------------------------------------------------------------------------


def _namespace(obj: Mapping[str, Any], default: str) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or default)


@dataclass(frozen=True)
class Workload:
    """One pod template: a Pod, or the template of a Deployment, StatefulSet, DaemonSet, Job or CronJob."""

    obj: dict[str, Any]
    source: str  # what rendered it, e.g. "helm/edgeops" or "manifests/edgeops-wiring"
    default_namespace: str

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return _namespace(self.obj, self.default_namespace)

    @property
    def job_spec(self) -> dict[str, Any]:
        """The Job spec (activeDeadlineSeconds, backoffLimit, ...) of a Job or CronJob; empty otherwise."""
        if self.kind == "CronJob":
            return dict(self.obj["spec"]["jobTemplate"]["spec"])
        return dict(self.obj["spec"]) if self.kind == "Job" else {}

    @property
    def template(self) -> dict[str, Any]:
        if self.kind == "Pod":
            return self.obj
        spec = self.job_spec if self.kind == "CronJob" else self.obj["spec"]
        return dict(spec["template"])

    @property
    def pod_spec(self) -> dict[str, Any]:
        return dict(self.template["spec"])

    @property
    def pod_name(self) -> str:
        """A name a controller could give the pod."""
        return self.name if self.kind == "Pod" else f"{self.name}-{uuid.uuid4().hex[:5]}"

    def containers(self) -> list[tuple[str, dict[str, Any]]]:
        """("init" | "main", container) in the order the kubelet starts them."""
        spec = self.pod_spec
        return [("init", c) for c in spec.get("initContainers") or []] + [
            ("main", c) for c in spec.get("containers") or []
        ]

    def container(self, name: str) -> dict[str, Any]:
        for _, container in self.containers():
            if container["name"] == name:
                return container
        raise KeyError(f"{self}: no container {name!r}")

    def __str__(self) -> str:
        return f"{self.source}: {self.kind} {self.namespace}/{self.name}"


@dataclass
class Objects:
    """Rendered objects, by kind, namespace and name (objects without a namespace are in `default_namespace`)."""

    items: list[dict[str, Any]]
    source: str
    default_namespace: str

    def add(self, *objs: dict[str, Any]) -> None:
        self.items.extend(objs)

    def find(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        for obj in self.items:
            meta = obj.get("metadata") or {}
            if (
                obj.get("kind") == kind
                and meta.get("name") == name
                and _namespace(obj, self.default_namespace) == namespace
            ):
                return obj
        return None

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.items if obj.get("kind") == kind]

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        secret = self.find("Secret", namespace, name)
        if secret is None:
            return None
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        data |= {key: str(value).encode() for key, value in (secret.get("stringData") or {}).items()}
        return data

    def config_map_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        config_map = self.find("ConfigMap", namespace, name)
        if config_map is None:
            return None
        data = {key: str(value).encode() for key, value in (config_map.get("data") or {}).items()}
        data |= {key: base64.b64decode(value) for key, value in (config_map.get("binaryData") or {}).items()}
        return data

    def workloads(self) -> list[Workload]:
        return [
            Workload(obj, self.source, self.default_namespace)
            for obj in self.items
            if obj.get("kind") in (*POD_TEMPLATE_KINDS, "CronJob", "Pod")
        ]

    def workload(self, kind: str, name: str) -> Workload:
        for workload in self.workloads():
            if workload.kind == kind and workload.name == name:
                return workload
        found = ", ".join(f"{w.kind}/{w.name}" for w in self.workloads())
        raise KeyError(f"{self.source}: no {kind} {name!r} (rendered: {found})")


def secret(namespace: str, name: str, data: Mapping[str, str | bytes]) -> dict[str, Any]:
    """A Secret object, as `kubectl create secret generic` would make it."""
    encoded = {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace},
        "data": encoded,
    }


# --- quantities, env ----------------------------------------------------------------------------------------

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def quantity(value: object) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1Gi", "2", "1e3") as a number."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = match.groups()
    return Decimal(number) * Decimal(_SUFFIXES[suffix] if suffix else 1)


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: known variables are replaced, `$$` is a literal `$`, the rest stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, text)


# --- converting a container ---------------------------------------------------------------------------------

POD_HANDLED = {
    "containers",
    "initContainers",
    "volumes",
    "securityContext",
    "restartPolicy",
    "hostAliases",
    "terminationGracePeriodSeconds",
    "enableServiceLinks",
    "automountServiceAccountToken",
    "hostNetwork",  # either way: every container here shares the host's network
}
# Scheduling and identity towards the API server: no effect on how the container runs on its node.
POD_IGNORED = {
    "serviceAccountName",
    "serviceAccount",
    "nodeSelector",
    "tolerations",
    "affinity",
    "imagePullSecrets",
    "priorityClassName",
    "schedulerName",
    "topologySpreadConstraints",
}
POD_SECURITY_HANDLED = {
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroups",
    "seccompProfile",
}
CONTAINER_HANDLED = {
    "name",
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "workingDir",
    "ports",
    "volumeMounts",
    "securityContext",
    "resources",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
}
# Images are never pulled here (they must be present); termination messages do not change the run.
CONTAINER_IGNORED = {"imagePullPolicy", "terminationMessagePath", "terminationMessagePolicy"}
CONTAINER_SECURITY_HANDLED = {
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "capabilities",
    "seccompProfile",
    "privileged",
    "procMount",
}
PROBE_FIELDS = {"initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold"}
PROBE_HANDLERS = {"httpGet", "tcpSocket", "exec"}


def _check_fields(where: str, path: str, given: Mapping[str, Any], handled: set[str], ignored: set[str]) -> None:
    for key in given:
        if key not in handled and key not in ignored:
            raise UnsupportedField(where, f"{path}.{key}" if path else key)


@dataclass(frozen=True)
class Probe:
    kind: str  # startup | readiness | liveness
    handler: str  # httpGet | tcpSocket | exec
    spec: dict[str, Any]
    initial_delay_s: int
    period_s: int
    timeout_s: int
    success_threshold: int
    failure_threshold: int

    @property
    def budget_s(self) -> int:
        """How long the kubelet waits for success before it gives up on the container."""
        return self.initial_delay_s + self.failure_threshold * self.period_s

    def describe(self) -> str:
        what = {
            "httpGet": lambda: f"GET {self.spec.get('path', '/')} on port {self.spec['port']}",
            "tcpSocket": lambda: f"TCP port {self.spec['port']}",
            "exec": lambda: f"exec {shlex.join(self.spec['command'])}",
        }[self.handler]()
        return (
            f"{self.kind} probe {what}: budget {self.budget_s} s "
            f"({self.initial_delay_s} + {self.failure_threshold} x {self.period_s} s)"
        )


def _probe(kind: str, spec: Mapping[str, Any], where: str) -> Probe:
    path = f"{kind}Probe"
    handlers = [key for key in spec if key not in PROBE_FIELDS]
    for key in handlers:
        if key not in PROBE_HANDLERS:
            raise UnsupportedField(where, f"{path}.{key}")
    if len(handlers) != 1:
        raise PodSpecError(f"{where}: {path} needs exactly one handler, has {handlers}")
    handler = handlers[0]
    body = dict(spec[handler])
    allowed = {
        "httpGet": {"path", "port", "host", "scheme", "httpHeaders"},
        "tcpSocket": {"port", "host"},
        "exec": {"command"},
    }[handler]
    _check_fields(where, f"{path}.{handler}", body, allowed, set())
    if handler == "httpGet" and body.get("scheme", "HTTP") not in ("HTTP", "HTTPS"):
        raise UnsupportedField(where, f"{path}.httpGet.scheme={body['scheme']}")
    return Probe(
        kind=kind,
        handler=handler,
        spec=body,
        initial_delay_s=int(spec.get("initialDelaySeconds", 0)),
        period_s=int(spec.get("periodSeconds", 10)),
        timeout_s=int(spec.get("timeoutSeconds", 1)),
        success_threshold=int(spec.get("successThreshold", 1)),
        failure_threshold=int(spec.get("failureThreshold", 3)),
    )


@dataclass
class ContainerRun:
    """One container as docker-py runs it: `client.containers.run(**run.kwargs)`."""

    where: str  # "<source>: <Kind> <namespace>/<name> container <name>"
    role: str  # init | main
    image: str
    kwargs: dict[str, Any]
    env: dict[str, str] = field(repr=False)  # resolved; holds Secret values: never print it
    ports: dict[str, int]  # named container ports
    probes: dict[str, Probe]
    user: str  # what the process runs as, uid[:gid]
    secret_env: set[str] = field(default_factory=set)  # names whose value came from a Secret

    def port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        if port not in self.ports:
            raise PodSpecError(f"{self.where}: probe names port {port!r}, which no containerPort declares")
        return self.ports[str(port)]

    def describe(self) -> str:
        """The equivalent `docker run` command line, Secret values left out."""
        kw = self.kwargs
        parts = ["docker run", f"--network {kw['network_mode']}"]
        parts += [f"--add-host {name}:{ip}" for name, ip in (kw.get("extra_hosts") or {}).items()]
        if kw.get("user"):
            parts.append(f"--user {kw['user']}")
        parts += [f"--group-add {group}" for group in kw.get("group_add") or []]
        if kw.get("read_only"):
            parts.append("--read-only")
        parts += [f"--cap-drop {cap}" for cap in kw.get("cap_drop") or []]
        parts += [f"--cap-add {cap}" for cap in kw.get("cap_add") or []]
        parts += [f"--security-opt {opt}" for opt in kw.get("security_opt") or []]
        parts += [f"--tmpfs {path}:{options}" for path, options in (kw.get("tmpfs") or {}).items()]
        parts += [f"-v {host}:{bind['bind']}:{bind['mode']}" for host, bind in (kw.get("volumes") or {}).items()]
        if kw.get("mem_limit"):
            parts.append(f"--memory {kw['mem_limit']}")
        if kw.get("nano_cpus"):
            parts.append(f"--cpus {kw['nano_cpus'] / 1e9:g}")
        parts += [f"-e {name}" + ("=<secret>" if name in self.secret_env else "") for name in self.env]
        if kw.get("entrypoint"):
            parts.append(f"--entrypoint {shlex.quote(kw['entrypoint'][0])}")
        parts.append(self.image)
        command = [*(kw.get("entrypoint") or [])[1:], *(kw.get("command") or [])]
        if command:
            text = shlex.join(command)
            parts.append(text if len(text) < 200 else text[:200] + "…")
        return " ".join(parts)


def _resolve_ref(
    objects: Objects, namespace: str, kind: str, ref: Mapping[str, Any], where: str, path: str
) -> str | None:
    name, key, optional = ref.get("name"), ref.get("key"), bool(ref.get("optional", False))
    data = (
        objects.secret_data(namespace, str(name)) if kind == "Secret" else objects.config_map_data(namespace, str(name))
    )
    if data is None or key not in data:
        if optional:
            return None
        missing = f"{kind} {namespace}/{name}" + ("" if data is None else f" has no key {key!r}")
        raise PodSpecError(f"{where}: {path}: {missing} (the kubelet would refuse: CreateContainerConfigError)")
    return data[str(key)].decode()


def resolve_env(
    objects: Objects, workload: Workload, container: Mapping[str, Any], where: str, pod_name: str
) -> tuple[dict[str, str], set[str]]:
    """The container's environment as the kubelet builds it (envFrom first, then env, in order), and the names
    whose value came from a Secret."""
    namespace = workload.namespace
    env: dict[str, str] = {}
    from_secrets: set[str] = set()
    for index, source in enumerate(container.get("envFrom") or []):
        path = f"envFrom[{index}]"
        _check_fields(where, path, source, {"configMapRef", "secretRef", "prefix"}, set())
        prefix = str(source.get("prefix", ""))
        refs = [key for key in ("configMapRef", "secretRef") if key in source]
        if len(refs) != 1:
            raise PodSpecError(f"{where}: {path} needs exactly one of configMapRef and secretRef")
        kind, ref = ("ConfigMap" if refs[0] == "configMapRef" else "Secret"), source[refs[0]]
        _check_fields(where, f"{path}.{refs[0]}", ref, {"name", "optional"}, set())
        data = (
            objects.secret_data(namespace, ref["name"])
            if kind == "Secret"
            else objects.config_map_data(namespace, ref["name"])
        )
        if data is None:
            if ref.get("optional"):
                continue
            raise PodSpecError(f"{where}: {path}: {kind} {namespace}/{ref['name']} not found")
        for key, raw in data.items():
            env[prefix + key] = raw.decode()
            if kind == "Secret":
                from_secrets.add(prefix + key)
    for index, variable in enumerate(container.get("env") or []):
        path = f"env[{index}] {variable.get('name')}"
        _check_fields(where, path, variable, {"name", "value", "valueFrom"}, set())
        name = str(variable["name"])
        if "valueFrom" not in variable:
            env[name] = expand(str(variable.get("value", "")), env)
            if any(reference in from_secrets for reference in _REFERENCE.findall(str(variable.get("value", "")))):
                from_secrets.add(name)
            continue
        source = variable["valueFrom"]
        _check_fields(where, f"{path}.valueFrom", source, {"secretKeyRef", "configMapKeyRef", "fieldRef"}, set())
        if "secretKeyRef" in source:
            value = _resolve_ref(objects, namespace, "Secret", source["secretKeyRef"], where, path)
            if value is not None:
                from_secrets.add(name)
        elif "configMapKeyRef" in source:
            value = _resolve_ref(objects, namespace, "ConfigMap", source["configMapKeyRef"], where, path)
        else:
            field_path = source["fieldRef"].get("fieldPath")
            fields = {"metadata.name": pod_name, "metadata.namespace": namespace, "status.podIP": POD_IP}
            if field_path not in fields:
                raise UnsupportedField(where, f"{path}.valueFrom.fieldRef.fieldPath={field_path}")
            value = fields[field_path]
        if value is not None:
            env[name] = value
    return env, from_secrets


def _image_user(client: Any, image: str, where: str) -> str:
    from docker.errors import ImageNotFound

    try:
        return str(client.images.get(image).attrs["Config"].get("User") or "")
    except ImageNotFound:
        raise PodSpecError(f"{where}: image {image} is not on this Docker engine (nothing is pulled here)") from None


def _materialise(
    directory: Path, files: Mapping[str, bytes], modes: Mapping[str, int], group: int | None, where: str
) -> None:
    """The kubelet's atomic-writer layout of a Secret or ConfigMap volume: `..data` -> a timestamped
    directory, one symlink per top-level entry; files and directories group-owned by fsGroup."""
    if group is not None and os.geteuid() != 0:
        raise UnsupportedField(where, "securityContext.fsGroup", "giving volume files to fsGroup needs root here")
    directory.mkdir(parents=True)
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + f"{time.time_ns() % 10**9:09d}"
    payload = directory / stamp
    payload.mkdir()
    for relative, content in files.items():
        target = payload / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        mode = modes[relative] | (0o440 if group is not None else 0)
        os.chmod(target, mode)
    (directory / "..data").symlink_to(stamp)
    for top in sorted({relative.split("/")[0] for relative in files}):
        (directory / top).symlink_to(f"..data/{top}")
    for path in [directory, *directory.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755 | (0o2000 if group is not None else 0))
        if group is not None:
            os.lchown(path, 0, group)


def _volume_files(
    objects: Objects, namespace: str, volume: Mapping[str, Any], where: str
) -> tuple[dict[str, bytes], dict[str, int]] | None:
    kind = "secret" if "secret" in volume else "configMap"
    spec = volume[kind]
    path = f"volumes[{volume['name']}].{kind}"
    _check_fields(
        where, path, spec, {"secretName" if kind == "secret" else "name", "items", "defaultMode", "optional"}, set()
    )
    name = spec["secretName"] if kind == "secret" else spec["name"]
    data = objects.secret_data(namespace, name) if kind == "secret" else objects.config_map_data(namespace, name)
    if data is None:
        if spec.get("optional"):
            return {}, {}
        title = "Secret" if kind == "secret" else "ConfigMap"
        raise PodSpecError(f"{where}: {path}: {title} {namespace}/{name} not found (the pod would stay pending)")
    default_mode = int(spec.get("defaultMode", 0o644))
    if "items" not in spec:
        return dict(data), {key: default_mode for key in data}
    files, modes = {}, {}
    for item in spec["items"]:
        _check_fields(where, f"{path}.items", item, {"key", "path", "mode"}, set())
        if item["key"] not in data:
            if spec.get("optional"):
                continue
            raise PodSpecError(f"{where}: {path}: {name} has no key {item['key']!r}")
        files[item["path"]] = data[item["key"]]
        modes[item["path"]] = int(item.get("mode", default_mode))
    return files, modes


def container_run(
    client: Any,
    objects: Objects,
    workload: Workload,
    container_name: str,
    *,
    scratch: Path,
    hosts: Sequence[str] = (),
) -> ContainerRun:
    """docker-py arguments for one container of `workload`; `hosts` are names mapped to 127.0.0.1."""
    pod = workload.pod_spec
    container = workload.container(container_name)
    role = next(r for r, c in workload.containers() if c is container)
    where = f"{workload} container {container_name}"
    _check_fields(where, "spec", pod, POD_HANDLED, POD_IGNORED)
    _check_fields(where, "containers[]", container, CONTAINER_HANDLED, CONTAINER_IGNORED)
    pod_security = dict(pod.get("securityContext") or {})
    security = dict(container.get("securityContext") or {})
    _check_fields(where, "spec.securityContext", pod_security, POD_SECURITY_HANDLED, set())
    _check_fields(where, "securityContext", security, CONTAINER_SECURITY_HANDLED, set())
    if pod.get("enableServiceLinks", True) is not False:
        raise UnsupportedField(where, "spec.enableServiceLinks", "Service environment variables are not emulated")
    if pod.get("automountServiceAccountToken", True) is not False:
        raise UnsupportedField(where, "spec.automountServiceAccountToken", "no API server token to mount here")
    pod_name = workload.pod_name
    kwargs: dict[str, Any] = {
        "image": container["image"],
        "network_mode": "host",
        "detach": True,
        "labels": {TEST_LABEL: where},
        "name": f"edgeops-test-{re.sub(r'[^a-z0-9-]', '-', container_name.lower())}-{uuid.uuid4().hex[:8]}",
    }

    # Security context: the container's settings over the pod's.
    def setting(key: str) -> Any:
        return security[key] if key in security else pod_security.get(key)

    if security.get("privileged"):
        raise UnsupportedField(where, "securityContext.privileged", "the engine refuses privileged containers")
    if security.get("procMount", "Default") != "Default":
        raise UnsupportedField(where, "securityContext.procMount")
    seccomp = setting("seccompProfile") or {}
    if seccomp.get("type") == "Unconfined":
        kwargs["security_opt"] = ["seccomp=unconfined"]
    elif seccomp and seccomp.get("type") != "RuntimeDefault":
        raise UnsupportedField(where, f"seccompProfile.type={seccomp.get('type')}")
    run_as_user, run_as_group = setting("runAsUser"), setting("runAsGroup")
    image_user = _image_user(client, container["image"], where)
    uid = str(run_as_user) if run_as_user is not None else image_user.split(":")[0]
    if run_as_user is not None:
        kwargs["user"] = f"{run_as_user}:{run_as_group}" if run_as_group is not None else str(run_as_user)
    elif run_as_group is not None:
        if not uid.isdigit():
            raise UnsupportedField(where, "runAsGroup", f"with the image's non-numeric user {image_user!r}")
        kwargs["user"] = f"{uid}:{run_as_group}"
    if setting("runAsNonRoot"):
        if not uid.isdigit():
            raise PodSpecError(f"{where}: runAsNonRoot, but the image's user {image_user!r} is not numeric")
        if int(uid) == 0:
            raise PodSpecError(f"{where}: runAsNonRoot, but the container would run as root")
    fs_group = pod_security.get("fsGroup")
    groups = [*([fs_group] if fs_group is not None else []), *(pod_security.get("supplementalGroups") or [])]
    if groups:
        kwargs["group_add"] = [str(group) for group in groups]
    if security.get("readOnlyRootFilesystem"):
        kwargs["read_only"] = True
    capabilities = dict(security.get("capabilities") or {})
    _check_fields(where, "securityContext.capabilities", capabilities, {"add", "drop"}, set())
    if capabilities.get("drop"):
        kwargs["cap_drop"] = list(capabilities["drop"])
    if capabilities.get("add"):
        kwargs["cap_add"] = list(capabilities["add"])
    if security.get("allowPrivilegeEscalation") is False:
        kwargs["security_opt"] = [*kwargs.get("security_opt", []), "no-new-privileges:true"]

    # Environment, then command and args with $(VAR) expanded from it.
    env, from_secrets = resolve_env(objects, workload, container, where, pod_name)
    kwargs["environment"] = dict(env)
    if "command" in container:
        kwargs["entrypoint"] = [expand(str(part), env) for part in container["command"]]
    if "args" in container:
        kwargs["command"] = [expand(str(part), env) for part in container["args"]]
    if container.get("workingDir"):
        kwargs["working_dir"] = container["workingDir"]

    # Networking: the host's, with the Services' names on 127.0.0.1.
    extra_hosts = {name: "127.0.0.1" for name in hosts}
    for index, alias in enumerate(pod.get("hostAliases") or []):
        _check_fields(where, f"spec.hostAliases[{index}]", alias, {"ip", "hostnames"}, set())
        extra_hosts |= {name: alias["ip"] for name in alias.get("hostnames") or []}
    if extra_hosts:
        kwargs["extra_hosts"] = extra_hosts
    ports = {}
    for index, port in enumerate(container.get("ports") or []):
        _check_fields(where, f"ports[{index}]", port, {"name", "containerPort", "protocol"}, set())
        if port.get("protocol", "TCP") != "TCP":
            raise UnsupportedField(where, f"ports[{index}].protocol={port['protocol']}")
        if port.get("name"):
            ports[str(port["name"])] = int(port["containerPort"])

    # Resources: limits as the kubelet sets them; requests only as CPU shares.
    resources = dict(container.get("resources") or {})
    _check_fields(where, "resources", resources, {"limits", "requests"}, set())
    for part in ("limits", "requests"):
        for name in resources.get(part) or {}:
            if name not in ("cpu", "memory"):
                raise UnsupportedField(where, f"resources.{part}.{name}")
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "memory" in limits:
        kwargs["mem_limit"] = int(quantity(limits["memory"]))
    if "cpu" in limits:
        kwargs["nano_cpus"] = int(quantity(limits["cpu"]) * 10**9)
    if "cpu" in requests:
        kwargs["cpu_shares"] = max(2, int(quantity(requests["cpu"]) * 1024))

    # Volumes.
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    tmpfs: dict[str, str] = {}
    binds: dict[str, dict[str, str]] = {}
    mounted_by: dict[str, set[str]] = {}
    for _, other in workload.containers():
        for mount in other.get("volumeMounts") or []:
            mounted_by.setdefault(mount["name"], set()).add(other["name"])
    owner = kwargs.get("user", image_user) or "0"
    owner_uid, _, owner_gid = owner.partition(":")
    for index, mount in enumerate(container.get("volumeMounts") or []):
        path = f"volumeMounts[{index}] {mount.get('name')}"
        _check_fields(where, path, mount, {"name", "mountPath", "readOnly"}, set())
        volume = volumes.get(mount["name"])
        if volume is None:
            raise UnsupportedField(where, path, "no pod volume of that name (volumeClaimTemplates are not emulated)")
        kinds = [key for key in volume if key != "name"]
        if kinds == ["emptyDir"]:
            if len(mounted_by[mount["name"]]) > 1:
                raise UnsupportedField(where, f"volumes[{mount['name']}]", "an emptyDir shared between containers")
            spec = dict(volume["emptyDir"] or {})
            _check_fields(where, f"volumes[{mount['name']}].emptyDir", spec, {"sizeLimit", "medium"}, set())
            if spec.get("medium", "") not in ("", "Memory"):
                raise UnsupportedField(where, f"volumes[{mount['name']}].emptyDir.medium={spec['medium']}")
            options = ["rw", "exec", "nosuid", "nodev", "mode=1777"]
            if owner_uid.isdigit():
                options.append(f"uid={owner_uid}")
                gid = fs_group if fs_group is not None else (owner_gid if owner_gid.isdigit() else None)
                if gid is not None:
                    options.append(f"gid={gid}")
            if "sizeLimit" in spec:
                options.append(f"size={int(quantity(spec['sizeLimit']))}")
            if mount.get("readOnly"):
                options[0] = "ro"
            tmpfs[str(mount["mountPath"])] = ",".join(options)
        elif kinds in (["secret"], ["configMap"]):
            materialised = _volume_files(objects, workload.namespace, volume, where)
            assert materialised is not None
            files, modes = materialised
            host = scratch / f"{kwargs['name']}-{mount['name']}"
            _materialise(host, files, modes, fs_group, where)
            # Secret and ConfigMap volumes are always mounted read-only.
            binds[str(host)] = {"bind": str(mount["mountPath"]), "mode": "ro"}
        else:
            raise UnsupportedField(where, f"volumes[{mount['name']}].{kinds[0] if kinds else '?'}")
    if tmpfs:
        kwargs["tmpfs"] = tmpfs
    if binds:
        kwargs["volumes"] = binds

    probes = {}
    for kind in ("startup", "readiness", "liveness"):
        if f"{kind}Probe" in container:
            if role == "init":
                raise PodSpecError(f"{where}: init containers take no {kind}Probe")
            probes[kind] = _probe(kind, container[f"{kind}Probe"], where)
    return ContainerRun(
        where=where,
        role=role,
        image=str(container["image"]),
        kwargs=kwargs,
        env=env,
        ports=ports,
        probes=probes,
        user=owner,
        secret_env=from_secrets,
    )


# --- running ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(client: Any, run: ContainerRun) -> Iterator[Any]:
    """Start the container; stop and remove it on exit, whatever happened."""
    container = client.containers.run(**run.kwargs)
    try:
        yield container
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def logs(container: Any, tail: int = 40) -> str:
    try:
        return bytes(container.logs(tail=tail)).decode(errors="replace")
    except Exception as error:  # the container may be gone already
        return f"(no logs: {error})"


@dataclass
class Completed:
    exit_code: int
    seconds: float
    output: str


def run_to_completion(client: Any, run: ContainerRun, timeout_s: float) -> Completed:
    """Run the container until it exits (a Job's activeDeadlineSeconds, an init container's patience)."""
    started = time.monotonic()
    with running(client, run) as container:
        try:
            result = container.wait(timeout=timeout_s)
        except Exception as error:  # requests' ReadTimeout, or the engine went away
            raise AssertionError(
                f"{run.where} still running after {timeout_s:.0f} s ({error}):\n{logs(container)}"
            ) from None
        output = bytes(container.logs()).decode(errors="replace")
    return Completed(int(result["StatusCode"]), time.monotonic() - started, output)


def probe_once(probe: Probe, run: ContainerRun, container: Any) -> tuple[bool, str]:
    """One probe attempt, as the kubelet makes it: (success, what was seen)."""
    spec = probe.spec
    if probe.handler == "exec":
        api = container.client.api
        command = [str(part) for part in spec["command"]]

        def attempt() -> tuple[int, str]:
            exec_id = api.exec_create(container.id, command)["Id"]
            output = api.exec_start(exec_id)
            return int(api.exec_inspect(exec_id)["ExitCode"]), bytes(output).decode(errors="replace")

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            code, output = pool.submit(attempt).result(timeout=probe.timeout_s)
        except concurrent.futures.TimeoutError:
            return False, f"timed out after {probe.timeout_s} s"
        finally:
            pool.shutdown(wait=False)
        return code == 0, f"exit {code} {output.strip()[:200]}"
    port = run.port(spec["port"])
    host = str(spec.get("host") or "")
    if host and host not in (run.kwargs.get("extra_hosts") or {}) and host != "127.0.0.1":
        raise UnsupportedField(run.where, f"{probe.kind}Probe.{probe.handler}.host={host}")
    if probe.handler == "tcpSocket":
        try:
            socket.create_connection(("127.0.0.1", port), timeout=probe.timeout_s).close()
        except OSError as error:
            return False, str(error)
        return True, "connected"
    scheme = str(spec.get("scheme", "HTTP")).lower()
    headers = {"User-Agent": "kube-probe/1.33", "Accept": "*/*", "Host": f"{host or POD_IP}:{port}"}
    headers |= {str(h["name"]): str(h["value"]) for h in spec.get("httpHeaders") or []}
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{spec.get('path', '/')}", headers=headers)
    context = None
    if scheme == "https":
        import ssl

        context = ssl._create_unverified_context()  # the kubelet does not verify probe certificates
    try:
        with urllib.request.urlopen(request, timeout=probe.timeout_s, context=context) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        return False, str(getattr(error, "reason", error))
    return 200 <= status < 400, f"HTTP {status}"


@dataclass
class Started:
    probe: Probe
    seconds: float  # from the container's start to the probe's success
    attempts: int

    def report(self, what: str) -> str:
        return (
            f"{what}: {self.probe.kind} probe passed after {self.seconds:.1f} s, attempt {self.attempts} "
            f"(budget {self.probe.budget_s} s = {self.probe.initial_delay_s} + "
            f"{self.probe.failure_threshold} x {self.probe.period_s} s)"
        )


def wait_started(probe: Probe, run: ContainerRun, container: Any, started_at: float) -> Started:
    """Probe like the kubelet until `successThreshold` successes; fail after `failureThreshold` failures in a row."""
    time.sleep(max(0.0, started_at + probe.initial_delay_s - time.monotonic()))
    failures = successes = attempts = 0
    last = ""
    while True:
        attempt_at = time.monotonic()
        container.reload()
        if container.status not in ("created", "running"):
            state = container.attrs.get("State") or {}
            raise AssertionError(
                f"{run.where} exited (code {state.get('ExitCode')}, OOM-killed {state.get('OOMKilled')}) "
                f"before its {probe.kind} probe passed:\n{logs(container, tail=80)}"
            )
        attempts += 1
        ok, last = probe_once(probe, run, container)
        if ok:
            successes += 1
            if successes >= probe.success_threshold:
                return Started(probe, time.monotonic() - started_at, attempts)
        else:
            successes = 0
            failures += 1
            if failures >= probe.failure_threshold:
                raise AssertionError(
                    f"{run.where}: {probe.describe()} failed {failures} times in a row after "
                    f"{time.monotonic() - started_at:.0f} s (last: {last}):\n{logs(container)}"
                )
        time.sleep(max(0.0, attempt_at + probe.period_s - time.monotonic()))
