"""Lint, render and validate every Helm chart under helm/ offline: no cluster needed.

For each chart (a directory under helm/ holding Chart.yaml, not inside another
chart's charts/) and each of its value sets:

- the chart's defaults (values.yaml),
- every helm/values-*.yaml (e.g. helm/values-production.yaml),
- every <chart>/ci/*-values.yaml (chart-testing convention),

it runs `helm lint --strict`, `helm template` and a client-side dry-run install
(which renders NOTES.txt), all as release `edgeops` in namespace `edgeops`. Every
rendered object is validated against the Kubernetes OpenAPI schema of
KUBERNETES_VERSION with kubernetes-validate in strict mode (unknown fields fail),
and checked against the project's rules:

- no password-like literal: none in the values files, none in any env `value:`
  or `*password*:` field of a rendered object; secrets arrive via secretKeyRef
  or generated Secret data;
- app.kubernetes.io/{name,instance,managed-by} labels on every object and pod;
- every container: image pinned by tag or digest (never latest), resources,
  non-root, no privilege escalation, ALL capabilities dropped, read-only root
  filesystem, seccomp RuntimeDefault.

Helm is $HELM, else `helm` on PATH, else .tools/bin/helm. Run with the project
venv (it has PyYAML and kubernetes-validate):

    .venv/bin/python scripts/validate_charts.py

Exits 1 and lists every problem if anything fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.exit("kubernetes-validate is not installed: run with the project venv (.venv/bin/python)")

REPO = Path(__file__).resolve().parent.parent
HELM_DIR = REPO / "helm"
KUBERNETES_VERSION = "1.33.0"
RELEASE = "edgeops"
NAMESPACE = "edgeops"
HELM_TIMEOUT_S = 60

# Keys in values files that would hold a credential literal.
SECRET_VALUE_KEY = re.compile(r"(?i)(password|passwd|secret[_-]?key|access[_-]?key|token|credentials?)$")
# Env var names that carry credentials: their value must come from a Secret.
SECRET_ENV_NAME = re.compile(r"(?i)(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY)")
# A field of a rendered object that names a password (not a reference to one).
PASSWORD_FIELD = re.compile(r"(?i)password(?!(key|ref|file|secret|secretname)$)")
# user:password@ inside a URI; the password must be a $(VAR) expanded by the kubelet.
URI_USERINFO = re.compile(r"[a-z0-9+.-]+://[^/\s:@]+:([^@\s/]+)@", re.IGNORECASE)
ENV_REFERENCE = re.compile(r"^\$\([A-Za-z_][A-Za-z0-9_]*\)$")
REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by")
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


@dataclass
class Result:
    charts: int = 0
    values_files: int = 0
    objects: int = 0
    helm_errors: list[str] = field(default_factory=list)
    schema_errors: list[str] = field(default_factory=list)
    policy_errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.helm_errors or self.schema_errors or self.policy_errors)


def find_helm() -> str:
    if chosen := os.environ.get("HELM"):
        if Path(chosen).is_file() and os.access(chosen, os.X_OK):
            return chosen
        sys.exit(f"HELM={chosen} is not an executable file")
    for candidate in (shutil.which("helm"), str(REPO / ".tools" / "bin" / "helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("helm not found: set HELM, put helm on PATH, or install it into .tools/bin (scripts/fetch_helm.py)")


def find_charts() -> list[Path]:
    charts = []
    for chart_yaml in sorted(HELM_DIR.rglob("Chart.yaml")):
        chart = chart_yaml.parent
        # Subcharts are rendered through their parent.
        if "charts" in chart.relative_to(HELM_DIR).parts:
            continue
        charts.append(chart)
    return charts


def value_sets(chart: Path) -> list[tuple[str, Path | None]]:
    sets: list[tuple[str, Path | None]] = [("defaults", None)]
    sets += [(str(path.relative_to(REPO)), path) for path in sorted(HELM_DIR.glob("values-*.yaml"))]
    sets += [(str(path.relative_to(REPO)), path) for path in sorted((chart / "ci").glob("*-values.yaml"))]
    return sets


def helm(helm_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_NO_PLUGINS": "1"}
    return subprocess.run(
        [helm_bin, *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, env=env, check=False
    )


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) of mappings, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, key, value
            yield from walk(value, child)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from walk(item, f"{path}[{index}]")


def values_literals(chart: Path, values_file: Path | None, errors: list[str], where: str) -> set[str]:
    """Credential-like literals in the chart's values.yaml and the extra values file (each is an error)."""
    literals: set[str] = set()
    for source in filter(None, [chart / "values.yaml", values_file]):
        data = yaml.safe_load(source.read_text()) or {}
        for path, key, value in walk(data):
            if SECRET_VALUE_KEY.search(str(key)) and isinstance(value, (str, int)) and str(value):
                errors.append(f"{where}: {source.relative_to(REPO)}: {path} holds a credential literal")
                literals.add(str(value))
    return literals


def object_name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(pod metadata, pod spec) of a Pod or of a workload's pod template."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("metadata") or {}, obj.get("spec") or {}
    if kind in POD_TEMPLATE_KINDS:
        template = (obj.get("spec") or {}).get("template") or {}
        return template.get("metadata") or {}, template.get("spec") or {}
    if kind == "CronJob":
        template = ((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template") or {}
        return template.get("metadata") or {}, template.get("spec") or {}
    return None, None


def check_labels(labels: dict[str, Any] | None, what: str, errors: list[str]) -> None:
    missing = [label for label in REQUIRED_LABELS if not (labels or {}).get(label)]
    if missing:
        errors.append(f"{what}: missing labels {', '.join(missing)}")


def check_pod(meta: dict[str, Any], spec: dict[str, Any], what: str, errors: list[str]) -> None:
    check_labels(meta.get("labels"), f"{what} pod template", errors)
    pod_security = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        where = f"{what} container {container.get('name')}"
        image = str(container.get("image", ""))
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
            errors.append(f"{where}: image {image!r} is not pinned by tag or digest")
        resources = container.get("resources") or {}
        if not resources.get("requests") or not resources.get("limits"):
            errors.append(f"{where}: resources need requests and limits")
        security = container.get("securityContext") or {}
        if security.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            errors.append(f"{where}: capabilities must drop ALL")
        if security.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem must be true")
        if security.get("privileged"):
            errors.append(f"{where}: must not be privileged")
        if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
            errors.append(f"{where}: runAsNonRoot must be true (container or pod)")
        seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            errors.append(f"{where}: seccompProfile must be RuntimeDefault (container or pod)")
        for env in container.get("env") or []:
            check_env(env, where, errors)


def check_env(env: dict[str, Any], where: str, errors: list[str]) -> None:
    name, value = str(env.get("name", "")), env.get("value")
    if value is None:
        return
    text = str(value)
    if SECRET_ENV_NAME.search(name) and text and not ENV_REFERENCE.match(text):
        errors.append(f"{where}: env {name} has a literal value; take it from a Secret (secretKeyRef)")
    for password in URI_USERINFO.findall(text):
        if not ENV_REFERENCE.match(password):
            errors.append(f"{where}: env {name} embeds a literal password in a URI; use $(VAR) from a secretKeyRef")


def check_object(obj: dict[str, Any], literals: set[str], errors: list[str], where: str) -> None:
    what = f"{where}: {object_name(obj)}"
    check_labels((obj.get("metadata") or {}).get("labels"), what, errors)
    if obj.get("kind") == "Secret":
        for key in obj.get("stringData") or {}:
            errors.append(f"{what}: stringData.{key} is a literal; generate Secret data or use an existing Secret")
        return
    meta, spec = pod_spec(obj)
    if spec is not None and meta is not None:
        check_pod(meta, spec, what, errors)
    for path, key, value in walk(obj):
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            text = str(value)
            if PASSWORD_FIELD.search(str(key)) and not text.startswith("$"):
                errors.append(f"{what}: {path} looks like a literal password")
            for literal in literals:
                if literal in text:
                    errors.append(f"{what}: {path} contains a credential literal from the values")


def validate_set(helm_bin: str, chart: Path, label: str, values_file: Path | None, result: Result) -> None:
    where = f"{chart.relative_to(REPO)} [{label}]"
    extra = ["--values", str(values_file)] if values_file else []
    common = [str(chart), "--namespace", NAMESPACE, *extra]

    literals = values_literals(chart, values_file, result.policy_errors, where)
    lint = helm(helm_bin, "lint", "--strict", *common)
    if lint.returncode != 0:
        result.helm_errors.append(f"{where}: helm lint --strict failed:\n{(lint.stdout + lint.stderr).strip()}")

    rendered = helm(helm_bin, "template", RELEASE, *common)
    if rendered.returncode != 0:
        result.helm_errors.append(f"{where}: helm template failed:\n{rendered.stderr.strip()}")
        return

    # A client-side dry-run install also renders NOTES.txt.
    dry_run = helm(helm_bin, "install", RELEASE, *common, "--dry-run=client")
    notes = dry_run.stdout.partition("\nNOTES:\n")[2]
    if dry_run.returncode != 0:
        result.helm_errors.append(f"{where}: helm install --dry-run=client failed:\n{dry_run.stderr.strip()}")
    elif "<no value>" in notes:
        result.helm_errors.append(f"{where}: NOTES.txt renders '<no value>'")

    if "<no value>" in rendered.stdout:
        result.helm_errors.append(f"{where}: a template renders '<no value>'")

    try:
        objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    except yaml.YAMLError as error:
        result.helm_errors.append(f"{where}: rendered YAML does not parse: {error}")
        return

    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
            result.schema_errors.append(f"{where}: not a Kubernetes object: {str(obj)[:80]}")
            continue
        identity = (obj["apiVersion"], obj["kind"], str((obj.get("metadata") or {}).get("name")))
        if identity in seen:
            result.schema_errors.append(f"{where}: {object_name(obj)} is rendered twice")
        seen.add(identity)
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv_utils.ValidationError as error:
            location = ".".join(str(part) for part in error.path) or "(root)"
            result.schema_errors.append(f"{where}: {object_name(obj)}: {location}: {error.message}")
        except kv_utils.SchemaNotFoundError as error:
            result.schema_errors.append(f"{where}: {object_name(obj)}: {error.message}")
        result.objects += 1
        check_object(obj, literals, result.policy_errors, where)
    print(f"  {where}: {len(objects)} objects")


def main() -> int:
    started = time.monotonic()
    helm_bin = find_helm()
    charts = find_charts()
    result = Result(charts=len(charts))
    if not charts:
        print(f"no charts (Chart.yaml) under {HELM_DIR}", file=sys.stderr)
        return 1
    print(
        f"helm: {helm_bin}; Kubernetes {KUBERNETES_VERSION} schema (strict); release {RELEASE}, namespace {NAMESPACE}"
    )
    for chart in charts:
        for label, values_file in value_sets(chart):
            result.values_files += 1
            validate_set(helm_bin, chart, label, values_file, result)

    for title, errors in (
        ("helm errors", result.helm_errors),
        ("schema errors", result.schema_errors),
        ("policy errors", result.policy_errors),
    ):
        if errors:
            print(f"\n{title}:")
            for error in errors:
                print(f"  - {error}")
    print(
        f"\ncharts: {result.charts}, values files: {result.values_files}, objects validated: {result.objects}, "
        f"helm errors: {len(result.helm_errors)}, schema errors: {len(result.schema_errors)}, "
        f"policy errors: {len(result.policy_errors)} ({time.monotonic() - started:.1f} s)"
    )
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
