"""A runner whose loading allocates a known amount, to check what `peak_memory` measures."""

from __future__ import annotations

from collections.abc import Callable

MIB = 1 << 20


def allocating_runner(mib: int) -> Callable[[object], int]:
    """Loading holds `mib` MiB of written (so resident) bytes; each call reads them."""
    block = b"\x01" * (mib * MIB)

    def run(_: object) -> int:
        return block[-1]

    return run
