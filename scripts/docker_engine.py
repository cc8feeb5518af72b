"""A Docker engine for `make images`, `make demo RUNNER=docker` and the container tests.

A machine that already has a Docker daemon answering (DOCKER_HOST, or the default socket) uses it.
Otherwise this installs Debian's `docker.io` (`install`) and starts a private dockerd (`run -- CMD`):
its own data root and unix socket, no bridge and no iptables (containers use host networking on
loopback), stopped by its pid when CMD ends, whatever CMD's outcome. The data root outlives the
engine, so images built once are reused. Stdlib only: it runs before the virtualenv exists.

    python3 scripts/docker_engine.py install
    python3 scripts/docker_engine.py run -- make pytest     # DOCKER_HOST is set for CMD
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.system import apt_install, find, root_prefix

PACKAGES = ("docker.io",)
BASE_IMAGE_PACKAGES = ("debootstrap",)
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "edgeops" / "docker"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class EngineError(RuntimeError):
    pass


def client() -> str:
    """The docker CLI to use: Debian's (matched to its dockerd, BuildKit built in) when installed."""
    debian = Path("/usr/bin/docker")
    if debian.exists():
        return str(debian)
    found = find("docker")
    if not found:
        raise EngineError("no docker CLI found; run `python3 scripts/docker_engine.py install`")
    return found


def answers(host: str | None) -> bool:
    """True when a daemon answers `docker version` at `host` (None: the CLI's default)."""
    try:
        cli = client()
    except EngineError:
        return False
    env = {**os.environ}
    if host:
        env["DOCKER_HOST"] = host
    else:
        env.pop("DOCKER_HOST", None)
    result = subprocess.run(
        [cli, "version", "--format", "{{.Server.Version}}"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def _as_root() -> list[str]:
    prefix = root_prefix()
    if prefix is None:
        raise EngineError("starting dockerd needs root, and sudo is not available")
    return prefix


def answering() -> str | None:
    """The DOCKER_HOST of a daemon that already answers ("" for the CLI's default socket), else None."""
    host = os.environ.get("DOCKER_HOST")
    if host and answers(host):
        return host
    return "" if answers(None) else None


def install() -> int:
    """Install docker.io with apt-get unless a daemon answers or dockerd is already installed; and debootstrap,
    which builds our base image where no registry answers (scripts/base_image.sh)."""
    status = 0
    if answering() is not None:
        print("a Docker daemon answers: using it")
    elif find("dockerd") and Path("/usr/bin/docker").exists():
        print(f"dockerd already installed: {find('dockerd')}")
    else:
        status = apt_install(*PACKAGES)
    if status == 0 and not find("debootstrap"):
        status = apt_install(*BASE_IMAGE_PACKAGES)
    return status


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def engine(data_root: Path) -> Iterator[str]:
    """Yield a DOCKER_HOST that answers: an existing daemon, or a dockerd started here and stopped on exit."""
    existing = answering()
    if existing is not None:
        yield existing
        return
    dockerd = find("dockerd")
    if not dockerd:
        raise EngineError("no Docker daemon answers and dockerd is not installed: run `make docker-engine`")
    data_root = data_root.resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    host = f"unix://{data_root / 'docker.sock'}"
    pidfile = data_root / "dockerd.pid"
    if pidfile.exists() and answers(host):  # another of our runs owns it: share, and leave it to that run
        yield host
        return
    log = data_root / "dockerd.log"
    command = [
        *_as_root(),
        dockerd,
        f"--data-root={data_root / 'data'}",
        f"--exec-root={data_root / 'exec'}",
        f"--pidfile={pidfile}",
        f"--host={host}",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--storage-driver=overlay2",
    ]
    print(f"starting dockerd (data root {data_root}, log {log})", flush=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(host):
            if process.poll() is not None:
                raise EngineError(f"dockerd exited with code {process.returncode} during start-up:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield host
    finally:
        _stop(process, log)


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM dockerd (it stops its containers and containerd), SIGKILL its group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            print(f"dockerd did not stop within {STOP_TIMEOUT_S:.0f} s and was killed; log: {log}", file=sys.stderr)
    print("dockerd stopped", flush=True)


def _stop_on_terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through engine()'s finally: dockerd is stopped


def run(command: list[str], data_root: Path) -> int:
    if not command:
        print("error: nothing to run: `docker_engine.py run -- CMD ...`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_terminate)
    signal.signal(signal.SIGHUP, _stop_on_terminate)
    try:
        with engine(data_root) as host:
            env = {**os.environ, "DOCKER": client()}
            if host:
                env["DOCKER_HOST"] = host
            return subprocess.run(command, env=env, check=False).returncode
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("EDGEOPS_DOCKER_ROOT", DEFAULT_DATA_ROOT)),
        help="where a private dockerd keeps images, its socket, pid file and log (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("install", help="install docker.io from Debian packages unless a daemon answers")
    run_parser = sub.add_parser("run", help="run a command with a Docker daemon answering at $DOCKER_HOST")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.action == "install":
        return install()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run(command, args.data_root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
