"""A JDK 17 and Maven for the Android modules' JVM build (`make android-test`), from Debian packages when missing."""

from __future__ import annotations

import sys

from system import apt_install, find

PACKAGES = ("openjdk-17-jdk-headless", "maven")


def main() -> int:
    if find("mvn") and find("javac"):
        return 0
    print(f"no Maven or JDK found: installing {', '.join(PACKAGES)}", flush=True)
    return apt_install(*PACKAGES)


if __name__ == "__main__":
    sys.exit(main())
