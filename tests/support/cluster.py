"""What would be applied to a cluster, without one: the chart as `helm template` renders it, kustomizations as
`kubectl kustomize` renders them, and the Makefile's cluster recipes run against a stand-in kubectl that keeps
what it is asked to apply and answers reads from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, unavailable

CHART = REPO / "helm" / "edgeops"
NAMESPACE = "edgeops"  # the chart's namespace (`make deploy`)
WIRING = "templates/wiring/*"  # the templates `make kfp-install` renders and applies


def tool(name: str, *candidates: Path) -> str:
    for found in (shutil.which(name), *map(str, candidates)):
        if found and Path(found).is_file() and os.access(found, os.X_OK):
            return found
    unavailable(f"{name} not installed (`make tools`)")
    raise AssertionError("unreachable")


def helm_bin() -> str:
    return os.environ.get("HELM") or tool("helm", REPO / ".tools" / "bin" / "helm")


def rendered(command: list[str]) -> list[dict[str, Any]]:
    """The Kubernetes objects a rendering command (kustomize, helm template) prints."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [document for document in yaml.safe_load_all(done.stdout) if document]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = tool("kubectl", Path(sys.executable).parent / "kubectl")
    return rendered([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)])


def helm_template(
    *values: Path, release: str = "edgeops", sets: Sequence[str] = (), show_only: str | None = None
) -> list[dict[str, Any]]:
    """The chart rendered as `release` in namespace edgeops, with value files, `--set`s and `--show-only`."""
    extra = [argument for path in values for argument in ("--values", str(path))]
    extra += [argument for value in sets for argument in ("--set", value)]
    extra += ["--show-only", show_only] if show_only else []
    return rendered([helm_bin(), "template", release, str(CHART), "--namespace", NAMESPACE, *extra])


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


def secret_refs(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef in a pod; a whole-Secret envFrom is (Secret, "*")."""
    refs = set()
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for env in container.get("env", []):
            if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                refs.add((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            if ref := source.get("secretRef"):
                refs.add((ref["name"], "*"))
    return refs


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


# A kubectl that logs each call (arguments NUL-separated, one call a line), keeps every document `apply -f -`
# is given, and answers as a cluster holding them: `get secret` with an identity's keys, `get configmap -l`
# with what kfp-install's go-template prints for the labelled settings ConfigMaps.
STAND_IN_KUBECTL = """#!{python}
import sys
from pathlib import Path

import yaml

args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write("".join(f"{{argument}}\\0" for argument in args) + "\\n")
reads_stdin = "/dev/stdin" in " ".join(args) or ("-f" in args and args[args.index("-f") + 1 :][:1] == ["-"])
given = sys.stdin.read() if reads_stdin else ""
if "apply" in args and given.strip():
    with open({applied!r}, "a") as applied:
        applied.write("---\\n" + given + "\\n")
if "get" in args and "secret" in args:
    print("access_key=a\\nsecret_key=b")
if "get" in args and "configmap" in args and "-l" in args:
    label = args[args.index("-l") + 1]
    stored = Path({applied!r}).read_text() if Path({applied!r}).exists() else ""
    for obj in (doc for doc in yaml.safe_load_all(stored) if doc):
        meta = obj.get("metadata", {{}})
        if obj.get("kind") == "ConfigMap" and label in (meta.get("labels") or {{}}):
            source = (meta.get("annotations") or {{}}).get("edgeops.io/s3-identity-secret", "")
            print(f"{{meta['namespace']}}:{{meta['labels'][label]}}:{{source}}")
"""

# A helm that knows no cluster: `get values` answers as for a release installed without values.
STAND_IN_HELM = """#!/bin/sh
if [ "$1 $2" = "get values" ]; then echo null; exit 0; fi
exec '{helm}' "$@"
"""


@dataclass(frozen=True)
class Recipe:
    calls: list[list[str]]  # the arguments of each kubectl call
    applied: list[dict[str, Any]]  # every object given to `kubectl apply -f -`, in order


def run_recipe(target: str, tmp_path: Path, *variables: str, env: dict[str, str] | None = None) -> Recipe:
    """Run a Makefile recipe against the stand-in kubectl (and helm, for `get values`)."""
    make = tool("make")
    log, applied = tmp_path / "kubectl.log", tmp_path / "applied.yaml"
    kubectl, helm = tmp_path / "kubectl", tmp_path / "helm"
    kubectl.write_text(STAND_IN_KUBECTL.format(python=sys.executable, log=str(log), applied=str(applied)))
    helm.write_text(STAND_IN_HELM.format(helm=helm_bin()))
    for stand_in in (kubectl, helm):
        stand_in.chmod(0o755)
    done = subprocess.run(
        [make, "--no-print-directory", "-s", "-o", "tools", target, f"KUBECTL={kubectl}", f"HELM={helm}", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={key: value for key, value in os.environ.items() if not key.startswith("MAKE")} | (env or {}),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines() if line]
    assert calls, f"make {target} never called kubectl"
    objects = [doc for doc in yaml.safe_load_all(applied.read_text()) if doc] if applied.exists() else []
    return Recipe(calls=calls, applied=objects)


def created_secrets(calls: list[list[str]]) -> set[tuple[str, str]]:
    """(namespace, name) of every `kubectl -n NS create secret generic NAME`."""
    return {
        (call[call.index("-n") + 1], call[call.index("generic") + 1])
        for call in calls
        if "create" in call and "secret" in call and "generic" in call
    }


def read_secrets(calls: list[list[str]]) -> set[tuple[str, str]]:
    """(namespace, name) of every `kubectl -n NS get secret NAME`."""
    return {
        (call[call.index("-n") + 1], call[call.index("secret") + 1])
        for call in calls
        if "get" in call and "secret" in call
    }
