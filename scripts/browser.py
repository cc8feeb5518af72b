"""A real browser for the fleet dashboard test (tests/fleet/test_dashboard.py), from package registries only.

`python3 scripts/browser.py install` installs Debian's `chromium` when /usr/bin/chromium is missing, and
playwright-core (pinned in tests/browser/package-lock.json) with `npm ci` when tests/browser/node_modules
lacks it. Playwright never downloads a browser here: tests/browser/dashboard.mjs drives Debian's Chromium.
Node.js (>= 20, for playwright-core) and npm come with the machine. Stdlib only, any python3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.system import apt_install, find

PACKAGE = "chromium"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
BROWSER_TESTS = Path(__file__).resolve().parents[1] / "tests" / "browser"
MIN_NODE = 20


def install_chromium() -> int:
    if CHROMIUM.exists():
        print(f"Chromium already installed: {CHROMIUM}")
        return 0
    status = apt_install(PACKAGE)
    if status != 0:
        return status
    if not CHROMIUM.exists():
        print(f"error: {PACKAGE} installed, but there is no {CHROMIUM}", file=sys.stderr)
        return 1
    print(f"installed {PACKAGE}: {CHROMIUM}")
    return 0


def node_major(node: str) -> int | None:
    result = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    version = result.stdout.strip().lstrip("v")
    return int(version.split(".")[0]) if result.returncode == 0 and version[:1].isdigit() else None


def install_playwright() -> int:
    if (BROWSER_TESTS / "node_modules" / "playwright-core" / "package.json").exists():
        print(f"playwright-core already installed in {BROWSER_TESTS / 'node_modules'}")
        return 0
    node, npm = find("node"), find("npm")
    if not node or not npm:
        print(f"error: Node.js >= {MIN_NODE} with npm is needed for playwright-core; install it", file=sys.stderr)
        return 1
    major = node_major(node)
    if major is None or major < MIN_NODE:
        print(f"error: playwright-core needs Node.js >= {MIN_NODE}; {node} is version {major}", file=sys.stderr)
        return 1
    command = [npm, "ci", "--no-audit", "--no-fund"]
    print(f"+ (cd {BROWSER_TESTS} && {' '.join(command)})", flush=True)
    result = subprocess.run(command, cwd=BROWSER_TESTS, check=False)
    if result.returncode != 0:
        print(f"error: `{' '.join(command)}` failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode or 1
    return 0


def install() -> int:
    return install_chromium() or install_playwright()


def main(argv: list[str]) -> int:
    if argv != ["install"]:
        print("usage: python3 scripts/browser.py install", file=sys.stderr)
        return 2
    return install()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
