"""Static proof of the cluster path (no cluster needed): manifests, Dockerfiles, compiled pipelines.

- every kustomization under manifests/ renders with `kubectl kustomize` and its objects pass the
  offline Kubernetes schema; upstream (remote) bases must be pinned to the installed kfp SDK's
  release, and are rendered when the network allows;
- hadolint passes on every Dockerfile under images/, and the image requirements match uv.lock;
- the compiled pipelines run only our pinned image, every cluster task has resources, exactly the
  Secrets its stage needs (edgeops.pipeline.cluster: never the release keys, which only the release
  signer in namespace edgeops-release holds) and the settings ConfigMap, and no credential appears
  anywhere in them.

Run from the repository root: `uv run python scripts/validate_cluster.py` (part of `make validate`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml
from validate_charts import KUBERNETES_VERSION  # one schema version for charts and manifests

from edgeops.pipeline.cluster import task_secrets
from edgeops.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OFFLINE = ("no such host", "Could not resolve host", "dial tcp", "unable to access")
CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"(?i)(secret_key|access_key|password)\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{8,}"),
]

errors: list[str] = []
notes: list[str] = []


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if not found:
        raise SystemExit(f"{name} not found: run `make install` (it comes with the dev dependencies)")
    return found


def schema_errors(documents: list[dict], source: str) -> int:
    import kubernetes_validate

    count = 0
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{source}: {document.get('kind')}/{document['metadata'].get('name')}: {error.message}")
        count += 1
    return count


def check_kustomizations() -> int:
    kfp_release = version("kfp")
    objects = 0
    for kustomization in sorted((REPO / "manifests").rglob("kustomization.yaml")):
        directory = kustomization.parent
        name = directory.relative_to(REPO)
        remote = [r for r in yaml.safe_load(kustomization.read_text()).get("resources", []) if "://" in r]
        for resource in remote:
            if f"?ref={kfp_release}" not in resource:
                errors.append(f"{name}: upstream {resource} is not pinned to ?ref={kfp_release} (the kfp SDK)")
        done = subprocess.run(
            [tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            if remote and any(marker in done.stderr for marker in OFFLINE):
                notes.append(f"{name}: upstream base not reachable offline; pin checked, not rendered")
                continue
            errors.append(f"{name}: kubectl kustomize failed: {done.stderr.strip()[:500]}")
            continue
        documents = [d for d in yaml.safe_load_all(done.stdout) if d]
        objects += schema_errors(documents, str(name))
    kind = yaml.safe_load((REPO / "manifests" / "kind" / "cluster.yaml").read_text())
    if kind.get("kind") != "Cluster" or not kind.get("apiVersion", "").startswith("kind.x-k8s.io/"):
        errors.append("manifests/kind/cluster.yaml: not a kind Cluster config")
    return objects


def check_dockerfiles() -> int:
    dockerfiles = sorted([*(REPO / "images").rglob("Dockerfile"), *(REPO / "tests" / "images").rglob("Dockerfile")])
    done = subprocess.run([tool("hadolint"), *map(str, dockerfiles)], capture_output=True, text=True)
    if done.returncode != 0:
        errors.append(f"hadolint:\n{done.stdout}{done.stderr}")
    compared = subprocess.run(
        [sys.executable, "scripts/images.py", "requirements", "--check"], capture_output=True, text=True, cwd=REPO
    )
    if compared.returncode != 0:
        errors.append(f"image requirements:\n{compared.stderr}")
    return len(dockerfiles)


def check_pipelines(settings: Settings) -> int:
    image = settings.component_image
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        errors.append(f"component image {image} is not pinned to a tag")
    secrets = []
    credentials = settings.state_dir / "credentials.json"
    if credentials.exists():
        secrets = list(json.loads(credentials.read_text()).values())
    packages = sorted((REPO / "pipelines").glob("*.yaml"))
    for package in packages:
        text = package.read_text()
        name = package.relative_to(REPO)
        spec, *platform = [d for d in yaml.safe_load_all(text) if d]
        executors = spec["deploymentSpec"]["executors"]
        for executor, body in executors.items():
            container = body["container"]
            if container["image"] != image:
                errors.append(f"{name}: {executor} runs {container['image']}, not our image {image}")
            if "cluster" in package.name:
                resources = container.get("resources", {})
                missing = {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"}
                if missing - resources.keys():
                    errors.append(f"{name}: {executor} lacks {sorted(missing - resources.keys())}")
        if "cluster" in package.name:
            configs = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
            for executor in executors:
                config = configs.get(executor, {})
                expected = task_secrets(executor.removeprefix("exec-"), settings.cluster)
                # No task mounts a Secret as a volume: the release keys live in edgeops-release, not here.
                wanted = {"secretAsEnv": expected.s3_secret, "secretAsVolume": None}
                for field, want in wanted.items():
                    mounted = sorted(s.get("secretName") for s in config.get(field, []))
                    if mounted != ([want] if want else []):
                        errors.append(f"{name}: {executor} {field} is {mounted}, expected {want or 'none'}")
                if not any(
                    c.get("configMapName") == settings.cluster.settings_config_map
                    for c in config.get("configMapAsEnv", [])
                ):
                    errors.append(f"{name}: {executor} does not mount ConfigMap {settings.cluster.settings_config_map}")
        for pattern in CREDENTIAL_PATTERNS:
            if match := pattern.search(text):
                errors.append(f"{name}: looks like a literal credential: {match[0][:24]}…")
        if any(secret and secret in text for secret in secrets):
            errors.append(f"{name}: contains the local stack's S3 credentials")
    return len(packages)


def main() -> None:
    objects = check_kustomizations()
    dockerfiles = check_dockerfiles()
    pipelines = check_pipelines(Settings())
    for note in notes:
        print(f"note: {note}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(
        f"kustomize objects validated: {objects}, Dockerfiles linted: {dockerfiles}, "
        f"pipelines checked: {pipelines}, errors: {len(errors)}"
    )
    raise SystemExit(1 if errors else 0)


if __name__ == "__main__":
    main()
