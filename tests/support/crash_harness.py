"""Run the edge agent's CLI and SIGKILL it at a chosen file-system operation, for tests/device/test_agent_crash.py.

A `sys.addaudithook` hook sees every file-system operation CPython audits (`open` for writing, `os.rename`
and `os.replace`, `os.remove`, `os.symlink`, `os.mkdir`, ...) *before* it happens. Those that touch the
agent's state directory are numbered 1, 2, 3, ... and logged as JSON lines; at number N the process sends
itself SIGKILL, so the state on disk is exactly "operations 1 .. N-1 done, the rest never ran". Writes of
data are not audited; "N+" kills just *after* operation N instead (after an `open` for writing: the file
exists, created or truncated, and holds nothing yet).

Two ways to run it:

    python tests/support/crash_harness.py run STATE_DIR EVENTS KILL_AT -- agent --once --state-dir ... --model ...
        one agent run in this process; KILL_AT is N or N+ (0: count and log only, never kill)

    python tests/support/crash_harness.py serve
        imports the agent, torch and the ExecuTorch runtime once, then reads one JSON job per line on stdin,
        forks a child per job that runs the CLI (with the hook armed if the job says so) and answers one JSON
        line per job on stdout with the child's exit code (-9: killed by SIGKILL). A job may also ask the
        parent to SIGKILL the child after `kill_after_s` seconds of wall-clock time. Each child is a fresh
        process as far as the disk is concerned, and saves the ~5-10 s of imports a new interpreter costs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# event -> positions of the paths it touches in the audit arguments
PATH_EVENTS: dict[str, tuple[int, ...]] = {
    "os.rename": (0, 1),  # os.replace raises os.rename too
    "os.link": (0, 1),
    "os.symlink": (1,),  # (target, link name): only the link is created
    "os.remove": (0,),  # os.unlink and Path.unlink too
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.truncate": (0,),
    "shutil.copyfile": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "shutil.rmtree": (0,),
}
DOWNLOAD, SWAP, STATUS, SETUP = "download", "swap", "status", "setup"


def phase(relative: str) -> str:
    """Which part of an update an operation on `relative` (a path under the state dir) belongs to."""
    top = relative.split("/", 1)[0]
    if top in ("metadata", "downloads"):
        return DOWNLOAD
    if top == "models" or top == "installed.json" or top.startswith(".installed.json."):  # or its temporary file
        return SWAP
    if top == "status.json" or top.startswith(".status.json."):
        return STATUS
    return "other"


class KillHook:
    """Numbers the file-system operations under `state_dir`, logs them to `events_fd`, and SIGKILLs this
    process just before operation `kill_at` or, with `after`, just after it (useful after an `open` for
    writing: the file exists, created or truncated, and nothing is written to it yet)."""

    def __init__(self, state_dir: str, events_fd: int, kill_at: int, after: bool = False) -> None:
        self.roots = {os.path.abspath(state_dir), os.path.realpath(state_dir)}
        self.events_fd = events_fd
        self.kill_at = kill_at
        self.after = after
        self.count = 0
        self.phase = SETUP

    def _relative(self, path: Any) -> str | None:
        if isinstance(path, int) or path is None:
            return None  # a descriptor: no file-system name of ours is created by it
        absolute = os.path.abspath(os.fsdecode(path))
        for root in self.roots:
            if absolute == root:
                return "."
            if absolute.startswith(root + os.sep):
                return absolute[len(root) + 1 :]
        return None

    def _kind(self, event: str, args: tuple[Any, ...]) -> tuple[str, list[str]] | None:
        if event == "open":
            path, mode, flags = args
            relative = self._relative(path)
            if relative is None:
                return None
            writes = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)
            if os.path.isdir(os.fsdecode(path)):
                # NamedTemporaryFile first "opens" its directory for writing, then creates the file
                # (its own event); the agent opens directories read-only, and only to fsync them.
                return None if writes else ("open-dir", [relative])
            return ("open-write", [relative]) if writes else None
        positions = PATH_EVENTS.get(event)
        if positions is None:
            return None
        paths = [self._relative(args[i]) for i in positions if i < len(args)]
        if not any(p is not None for p in paths):
            return None
        return event, [p or "<outside>" for p in paths]

    def _phase(self, name: str, relative: str) -> str:
        if name == "os.mkdir":
            return SETUP  # Agent() and download_target() make sure their directories exist
        if name == "open-dir":
            return self.phase  # the fsync that makes the operation before it durable
        return phase(relative)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        kind = self._kind(event, args)
        if kind is None:
            return
        self.count += 1
        name, paths = kind
        self.phase = self._phase(name, paths[-1])
        record = {"n": self.count, "event": name, "paths": paths, "phase": self.phase}
        os.write(self.events_fd, (json.dumps(record) + "\n").encode())  # os.write is not audited
        if self.count == self.kill_at:
            if not self.after:
                os.kill(os.getpid(), signal.SIGKILL)
            # Audit hooks run before the operation: die at the next Python-level event after it returns.
            sys.setprofile(self._kill_after_operation)

    def _kill_after_operation(self, frame: Any, event: str, arg: Any) -> None:
        if frame.f_code is not KillHook.__call__.__code__:  # not the return from this hook itself
            os.kill(os.getpid(), signal.SIGKILL)


def run_cli(args: list[str], state_dir: str | None, events: str | None, kill_at: int, after: bool = False) -> int:
    """Run `edgeops ARGS` in this process, with the hook armed if `events` is given; return the exit code."""
    from edgeops.cli import main

    if events is not None:
        assert state_dir is not None
        events_fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.addaudithook(KillHook(state_dir, events_fd, kill_at, after))
    sys.argv = ["edgeops", *args]
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _die_with_parent() -> None:
    """A forked child must not outlive the server (e.g. if the test kills the server mid-job)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child(job: dict[str, Any]) -> None:
    """In the forked child: never return, never run the server's cleanup."""
    code = 70  # an exception escaped the CLI (a new interpreter would exit 1 with the same traceback)
    try:
        _die_with_parent()
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        kill_at, after = int(job.get("kill_at") or 0), bool(job.get("after"))
        code = run_cli(job["args"], job.get("state_dir"), job.get("events"), kill_at, after)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, kill_after_s: float | None, timeout_s: float) -> tuple[int, bool, bool]:
    """Wait for the child; SIGKILL it after `kill_after_s` (a wall-clock kill) or `timeout_s` (a hang)."""
    started = time.monotonic()
    killed = timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), killed, timed_out
        elapsed = time.monotonic() - started
        if not killed and kill_after_s is not None and elapsed >= kill_after_s:
            os.kill(pid, signal.SIGKILL)
            killed = True
        elif not killed and elapsed >= timeout_s:
            os.kill(pid, signal.SIGKILL)
            killed = timed_out = True
        time.sleep(0.002)


def serve(read: Callable[[], str], answer: Callable[[str], None]) -> None:
    # fork() copies only the calling thread: the process must have no other. numpy's OpenBLAS (loaded by
    # torch) would start an idle thread server; with one BLAS thread it starts none.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    # Everything a poll imports, imported once before any fork (the smoke test imports torch lazily).
    for module in (
        "torch",
        "executorch.extension.pybindings._portable_lib",
        "edgeops.runtime",
        "edgeops.device.agent",
        "edgeops.cli",
    ):
        importlib.import_module(module)
    tasks = len(os.listdir("/proc/self/task"))
    answer(json.dumps({"ready": True, "os_threads": tasks, "python_threads": threading.active_count()}))
    while line := read():
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(job)
        returncode, killed, timed_out = _wait(pid, job.get("kill_after_s"), float(job.get("timeout_s", 120)))
        answer(
            json.dumps(
                {
                    "returncode": returncode,
                    "seconds": round(time.monotonic() - started, 4),
                    "killed_by_parent": killed,
                    "timed_out": timed_out,
                }
            )
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:

        def answer(text: str) -> None:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

        serve(sys.stdin.readline, answer)
        return 0
    if argv[:1] == ["run"] and "--" in argv:
        state_dir, events, kill_at = argv[1:4]  # KILL_AT: N dies before operation N, N+ just after it
        args = argv[argv.index("--") + 1 :]
        return run_cli(args, state_dir, events, int(kill_at.rstrip("+")), kill_at.endswith("+"))
    sys.stderr.write(__doc__ or "")
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
