"""`python3 scripts/mosquitto.py install`: Eclipse Mosquitto from Debian's packages, when it is missing.

The local stack runs it as the devices' MQTT broker (src/edgeops/stack/broker.py). Stdlib only, any python3.
The package's own service is not used: the stack starts its broker on 127.0.0.1 with its own config.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.system import apt_install, find

PACKAGE = "mosquitto"


def install() -> int:
    present = find("mosquitto")
    if present:
        print(f"Mosquitto already installed: {present}")
        return 0
    status = apt_install(PACKAGE)
    if status != 0:
        return status
    present = find("mosquitto")
    if not present:
        print(f"error: {PACKAGE} installed, but no mosquitto binary was found", file=sys.stderr)
        return 1
    print(f"installed {PACKAGE}: {present}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python3 scripts/mosquitto.py install")
    sys.exit(install())
