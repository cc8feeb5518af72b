"""The agent's on-disk outbox: bounded, oldest dropped and counted, sequence numbers never reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.device.outbox import Outbox


def message(seq: int) -> tuple[str, bytes]:
    return "edgeops/devices/d/telemetry/heartbeat", f"m{seq}".encode()


def test_the_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", limit=3)
    dropped = [outbox.append(message) for _ in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [queued.seq for queued in outbox.oldest(10)] == [3, 4, 5]
    assert outbox.counts() == (3, 2, 5)


def test_what_is_queued_survives_a_reopen_and_numbers_go_on(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path, limit=10)
    for _ in range(3):
        first.append(message)
    first.remove(1)
    first.close()  # a killed agent leaves the same: every append was committed
    second = Outbox(path, limit=10)
    assert [(q.seq, q.payload) for q in second.oldest(10)] == [(2, b"m2"), (3, b"m3")]
    second.append(message)
    assert [q.seq for q in second.oldest(10, after=2)] == [3, 4]
    assert second.counts() == (3, 0, 4)


def test_a_message_that_cannot_be_built_takes_no_number(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", limit=10)

    def broken(seq: int) -> tuple[str, bytes]:
        raise ValueError("disk full")

    with pytest.raises(ValueError):
        outbox.append(broken)
    outbox.append(message)
    assert [q.seq for q in outbox.oldest(10)] == [1]
