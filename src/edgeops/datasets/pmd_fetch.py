"""Download PhysioNet PMD (`edgeops data fetch pmd`), every file checked against the release's SHA256SUMS."""

from __future__ import annotations

import hashlib
import http.client
import io
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from edgeops.datasets.pmd import FETCH_COMMAND, SUMS_FILE, read_sums
from edgeops.errors import EdgeopsError, InputError
from edgeops.files import atomic_write, sha256_file
from edgeops.settings import PmdDataConfig

FETCH_TIMEOUT_S = 60.0
FETCH_CHUNK = 1 << 20
USER_AGENT = "edgeops-pmd-fetch"


class FetchError(EdgeopsError):
    """The release could not be downloaded, or a file is not what SHA256SUMS.txt says."""


Progress = Callable[[str, int, int, bool], None]  # (relative path, files done, files total, downloaded)


def release_files(sums: Mapping[str, str], experiment: str) -> list[str]:
    """What `fetch` downloads: the experiment's files and any top-level README."""
    return sorted(
        name for name in sums if name.startswith(f"{experiment}/") or ("/" not in name and name.startswith("README"))
    )


def _url(base: str, name: str) -> str:
    return urllib.parse.urljoin(base if base.endswith("/") else base + "/", urllib.parse.quote(name))


def _open(url: str) -> urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response: urllib.response.addinfourl = urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise FetchError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FetchError(f"{url}: cannot connect ({reason}); `{FETCH_COMMAND}` needs internet access") from None
    return response


def _stream(url: str, out: IO[bytes]) -> str:
    """Copy the body of `url` to `out`; its sha256."""
    digest = hashlib.sha256()
    try:
        with _open(url) as response:
            for block in iter(lambda: response.read(FETCH_CHUNK), b""):
                digest.update(block)
                out.write(block)
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(f"{url}: download broke off: {error!r}") from None
    return digest.hexdigest()


def _download(url: str, target: Path, expected: str) -> None:
    """Stream to a temporary file beside `target`, check its sha256, then rename: never a half or wrong file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as out:
        actual = _stream(url, out)
        if actual != expected:
            raise FetchError(f"{url}: sha256 {actual} does not match {SUMS_FILE} ({expected}); not saved")


def fetch(config: PmdDataConfig, dest: Path, progress: Progress | None = None) -> Path:
    """Download the experiment from `config.release_url` into `dest`, each file checked against SHA256SUMS.txt.

    Files already there with the right hash are kept. SHA256SUMS.txt is written last,
    so its presence means the download completed. Returns `dest` (a PMD root).
    """
    sums_url = _url(config.release_url, SUMS_FILE)
    buffer = io.BytesIO()
    _stream(sums_url, buffer)
    sums_text = buffer.getvalue().decode("utf-8", errors="replace")
    try:
        sums = read_sums(sums_text, sums_url)
    except InputError as error:
        raise FetchError(str(error)) from None
    names = release_files(sums, config.experiment)
    if not names:
        raise FetchError(f"{sums_url}: lists no file under {config.experiment}/")
    dest.mkdir(parents=True, exist_ok=True)
    for done, name in enumerate(names, start=1):
        target = dest / name
        fresh = not (target.is_file() and sha256_file(target) == sums[name])
        if fresh:
            _download(_url(config.release_url, name), target, sums[name])
        if progress:
            progress(name, done, len(names), fresh)
    with atomic_write(dest / SUMS_FILE, "w") as out:
        out.write(sums_text)
    return dest
