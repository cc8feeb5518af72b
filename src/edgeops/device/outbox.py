"""A bounded on-disk queue of telemetry messages, so that nothing is lost while the broker is away.

SQLite in WAL mode: every `put` is committed before it returns, so a killed agent keeps what it had queued;
a message leaves the queue only when the broker has acknowledged it (`remove`). Sequence numbers come from
the same database and never repeat, across restarts too. When `limit` messages wait, the oldest is dropped
and counted, and the count travels in every heartbeat.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Queued(NamedTuple):
    seq: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process; fsync at checkpoints
        self._db.execute("CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES ('next_seq', 1), ('dropped', 0)")

    def append(self, message_for: Callable[[int], tuple[str, bytes]]) -> int:
        """Queue the message built for the next sequence number, in one transaction (a killed agent never leaves
        a number issued but not queued); returns how many old messages were dropped to stay within the limit."""
        with self._lock, self._db:
            (seq,) = self._db.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()
            topic, payload = message_for(int(seq))
            self._db.execute("UPDATE counters SET value = value + 1 WHERE name = 'next_seq'")
            self._db.execute("INSERT INTO queue VALUES (?, ?, ?)", (seq, topic, payload))
            (size,) = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()
            excess = max(0, int(size) - self.limit)
            if excess:
                self._db.execute(
                    "DELETE FROM queue WHERE seq IN (SELECT seq FROM queue ORDER BY seq LIMIT ?)", (excess,)
                )
                self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))
        return excess

    def oldest(self, count: int, after: int = 0) -> list[Queued]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM queue WHERE seq > ? ORDER BY seq LIMIT ?", (after, count)
            ).fetchall()
        return [Queued(int(seq), topic, bytes(payload)) for seq, topic, payload in rows]

    def remove(self, seq: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM queue WHERE seq = ?", (seq,))

    def counts(self) -> tuple[int, int, int]:
        """(queued, dropped, sequence numbers issued)."""
        with self._lock:
            (queued,) = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return int(queued), int(counters["dropped"]), int(counters["next_seq"]) - 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
