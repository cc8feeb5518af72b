"""`make android-demo`: the Kotlin OTA client installs the model `make demo` promoted, then polls again unchanged.

It is the JVM build of the library the Android app uses (android/ota-client, through android/ota-cli), run against
the local stack's OTA bucket with the publisher's root.json, into its own state directory. Exits non-zero when the
client refuses what the bucket serves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeops.settings import Dataset, Settings

REPO = Path(__file__).resolve().parent.parent
CLI_JAR = REPO / "android" / "ota-cli" / "target" / "ota-cli.jar"
console = Console()


def poll(arguments: list[str]) -> dict[str, Any]:
    done = subprocess.run(["java", "-jar", str(CLI_JAR), "poll", *arguments, "--json"], capture_output=True, text=True)
    if done.returncode not in (0, 2) or not done.stdout.strip():
        sys.exit(f"error: the Kotlin client failed (exit {done.returncode}): {done.stderr.strip() or done.stdout}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cost(result: dict[str, Any]) -> str:
    total = result["metadata_bytes"] + result["target_bytes"]
    return (
        f"{result['requests']} requests, {total:,} bytes ({result['metadata_bytes']:,} metadata, "
        f"{result['target_bytes']:,} target), {result['seconds']:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[d.value for d in Dataset], default=Dataset.mat.value)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".edgeops" / "android-device")
    options = parser.parse_args()
    if not CLI_JAR.is_file():
        sys.exit(f"error: {CLI_JAR.relative_to(REPO)} is missing: run `make android-test` (it builds it)")
    settings = Settings()
    model_name = settings.track(options.dataset).model_name
    root = settings.release.keys_dir / "root.json"
    if not root.is_file():
        sys.exit(f"error: no trusted root at {root}: run `make demo` first (it creates the keys and a release)")
    shutil.rmtree(options.state_dir, ignore_errors=True)  # a fresh device every run: the first poll installs
    arguments = [
        *("--state-dir", str(options.state_dir), "--repository", settings.ota_url(model_name + "/")),
        *("--root", str(root), "--model", model_name, "--channel", settings.release.channel),
        *("--track", options.dataset),
    ]
    first, second = poll(arguments), poll(arguments)
    table = Table(title=f"Kotlin OTA client on {model_name} ({settings.release.channel})", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("repository", settings.ota_url(model_name + "/"))
    table.add_row("state directory", str(options.state_dir))
    for name, result in (("first poll", first), ("unchanged poll", second)):
        verdict = result["outcome"] + (f" ({result['reason']})" if result["reason"] else "")
        table.add_row(name, f"{verdict}: {result['message']}")
        table.add_row(f"{name} cost", cost(result))
    if first["version"] is not None:
        table.add_row("installed", f"v{first['version']}, sha256 {first['sha256']}")
    table.add_row("smoke test", "not run here: ExecuTorch has no desktop JVM build; the app runs it with its Module")
    console.print(table)
    if first["outcome"] != "installed" or second["outcome"] != "unchanged":
        console.print("[red]the Kotlin client did not install the promoted release and then stay unchanged[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
