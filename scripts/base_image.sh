#!/usr/bin/env bash
# The Python 3.11 base image, built here without a registry: debootstrap Debian bookworm (python3 3.11,
# venv, CA certificates) from the apt mirror this machine uses, then `docker import` it.
# Usage: scripts/base_image.sh IMAGE_TAG   (DOCKER, DEBIAN_MIRROR and DEBIAN_SUITE may be set)
set -euo pipefail
tag=${1:?usage: base_image.sh IMAGE_TAG}
docker=${DOCKER:-docker}
suite=${DEBIAN_SUITE:-bookworm}
# The first deb.debian.org-style URI apt is configured with, else Debian's CDN.
mirror=${DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
  | head -1 | awk "{print \$2}" || true)}
mirror=${mirror:-http://deb.debian.org/debian}
debootstrap=$(PATH=$PATH:/usr/sbin:/sbin command -v debootstrap) || {
  echo "error: debootstrap not found; install it with: apt-get install debootstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/edgeops-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $suite from $mirror (about 3 minutes)"
"$debootstrap" --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || {
  tail -20 "$rootfs.log" >&2; echo "error: debootstrap failed; log: $rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# Nothing of this machine's in the image: no apt lists or caches, a generic resolv.conf and hostname.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/log/* "$rootfs"/tmp/*
: > "$rootfs/etc/resolv.conf"; echo localhost > "$rootfs/etc/hostname"
tar --numeric-owner -C "$rootfs" -c . | "$docker" import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap $suite + python3, python3-venv, ca-certificates" - "$tag"
"$docker" run --rm --network none "$tag" python3 -c 'import sys, venv; print("base image ready: Python", sys.version.split()[0])'
