"""Programs and Debian packages of this machine, for the scripts that run before any virtualenv (stdlib only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Daemons live in /usr/sbin, which is not on every user's PATH.
EXTRA_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


def find(*names: str) -> str | None:
    """The first of `names` on PATH or in the usual system directories."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_DIRS])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


def root_prefix() -> list[str] | None:
    """What runs a command as root: nothing when we are root, sudo otherwise; None when neither can."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    return [sudo, "-E"] if sudo else None


def apt_install(*packages: str) -> int:
    """`apt-get update` and install `packages` without recommends; 0, or 1 with the reason on stderr."""
    wanted = " ".join(packages)
    apt = shutil.which("apt-get")
    if not apt:
        print(f"error: there is no apt-get to install {wanted}; install it with your package manager", file=sys.stderr)
        return 1
    prefix = root_prefix()
    if prefix is None:
        print(f"error: installing {wanted} needs root, and sudo is not available", file=sys.stderr)
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([*prefix, apt, "update"], [*prefix, apt, "install", "-y", "--no-install-recommends", *packages]):
        print("+ " + " ".join(command), flush=True)
        result = subprocess.run(command, env=env, check=False)
        if result.returncode != 0:
            print(
                f"error: `{' '.join(command)}` failed with exit code {result.returncode}; {wanted} is not installed",
                file=sys.stderr,
            )
            return result.returncode or 1
    return 0
