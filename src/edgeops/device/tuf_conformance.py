"""The Python agent's update path as a tuf-conformance client (the suite's CLIENT-CLI.md: init, refresh, download).

tuf-conformance (github.com/theupdateframework/tuf-conformance) runs a TUF client against hundreds of
simulated repositories, honest and hostile. This executable answers it with what a device runs: the agent's
MeteredFetcher and its one ngclient Updater construction (`updater.tuf_updater`), bounded by the agent's
socket timeout and poll deadline. Only the target names differ: the suite's repositories prefix targets
with their hash (consistent snapshots), ours are content-addressed already.

    python -m edgeops.device.tuf_conformance --metadata-dir D init ROOT
    python -m edgeops.device.tuf_conformance --metadata-dir D --metadata-url URL refresh
    python -m edgeops.device.tuf_conformance --metadata-dir D --metadata-url URL \\
        --target-name PATH [--target-name PATH ...] --target-base-url URL --target-dir DIR download

Exit 0 on success, 1 on any failure (the reason on stderr). `scripts/tuf-conformance-client` wraps it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from tuf.ngclient import Updater

from edgeops.device.updater import MeteredFetcher, describe, newest_trusted_root, tuf_updater
from edgeops.settings import AgentConfig, Settings

COMMANDS = ("init", "refresh", "download")


class ConformanceError(Exception):
    """The command line asked for something this client cannot do (exit 1)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuf-conformance-client",
        description="The edgeops agent's TUF update path, driven by the tuf-conformance suite (CLIENT-CLI.md).",
    )
    parser.add_argument("--metadata-dir", type=Path, required=True, help="trusted metadata (root.json, ...)")
    parser.add_argument("--metadata-url", help="the repository's metadata URL (refresh, download)")
    parser.add_argument(
        "--target-name", action="append", default=[], help="a target path to download (repeatable, in order)"
    )
    parser.add_argument("--target-base-url", help="the repository's target URL (download)")
    parser.add_argument("--target-dir", type=Path, help="where verified targets are stored (download)")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("trusted_root", nargs="?", type=Path, help="init: the root.json to start trusting")
    return parser


def init(metadata_dir: Path, trusted_root: Path | None) -> None:
    """Trust `trusted_root`: copied into the metadata directory, where the first refresh verifies from it."""
    if trusted_root is None:
        raise ConformanceError("init needs the trusted root.json to start from")
    metadata_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trusted_root, metadata_dir / "root.json")
    print(f"init: trusting {trusted_root} (copied to {metadata_dir / 'root.json'})")


def updater(metadata_dir: Path, metadata_url: str | None, target_url: str | None, agent: AgentConfig) -> Updater:
    """The agent's Updater on the newest root verified so far, behind a fetcher bounded like a poll."""
    if not metadata_url:
        raise ConformanceError("--metadata-url is required")
    bootstrap = newest_trusted_root(metadata_dir)
    if bootstrap is None:
        raise ConformanceError(f"no trusted root in {metadata_dir}: run init first")
    fetcher = MeteredFetcher(agent.socket_timeout_s, time.monotonic() + agent.cycle_deadline_s)
    return tuf_updater(metadata_dir, metadata_url, fetcher, bootstrap, target_url, prefix_targets_with_hash=True)


def refresh(tuf: Updater) -> None:
    tuf.refresh()
    print("refresh: top-level metadata verified")


def download(tuf: Updater, target_names: Sequence[str], target_dir: Path) -> None:
    """Each target in order with one updater; one already stored with the signed length and hashes is kept."""
    tuf.refresh()
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in target_names:
        info = tuf.get_targetinfo(name)
        if info is None:
            raise ConformanceError(f"{name} is not a signed target")
        path = target_dir / quote(name, safe="")  # one flat file per target path, whatever its characters
        if tuf.find_cached_target(info, str(path)):
            print(f"download: {name} is already stored verified at {path}")
            continue
        tuf.download_target(info, str(path))
        print(f"download: {name} verified and stored at {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            init(args.metadata_dir, args.trusted_root)
            return 0
        if args.command == "download" and not (args.target_name and args.target_base_url and args.target_dir):
            raise ConformanceError("download needs --target-name, --target-base-url and --target-dir")
        tuf = updater(args.metadata_dir, args.metadata_url, args.target_base_url, Settings().agent)
        if args.command == "refresh":
            refresh(tuf)
        else:
            download(tuf, args.target_name, args.target_dir)
    except Exception as error:  # every failure is the suite's exit code 1, with the agent's own description
        print(f"{args.command} failed: {describe(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
