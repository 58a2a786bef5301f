"""The gateway's on-disk uplink buffer: a bounded SQLite FIFO of numbered stream items.

Items are numbered as they arrive (``seq``, without gaps, surviving restarts) and deleted only once the
tier above acknowledged them. When the buffer is full the oldest item goes first, counted; expired items
are deleted unsent, counted. The last acknowledged number is kept, so the next record can declare how
many numbers before it were dropped on purpose (see :mod:`prsm_edge.protocol.uplink`).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from prsm_edge.errors import StorageError
from prsm_edge.io.store import connect

__all__ = ["BufferedItem", "StreamBuffer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BufferedItem:
    """One item waiting to go up."""

    seq: int
    kind: str
    expires_ms: int
    enqueued_ms: int
    item: bytes


class StreamBuffer:
    """Bounded, ordered, durable; one writer (the gateway process)."""

    def __init__(self, path: Path, max_items: int = 100_000) -> None:
        if max_items < 1:
            raise StorageError("the uplink buffer must hold at least one item")
        self.path = path
        self.max_items = max_items
        try:
            self._db = connect(path)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS stream (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                "expires_ms INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL, item BLOB NOT NULL)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._count = int(self._db.execute("SELECT COUNT(*) FROM stream").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the uplink buffer {path}: {exc}") from None

    def _meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def last_acked(self) -> int:
        """The highest number the tier above acknowledged (or dropped past)."""
        return self._meta("last_acked")

    @property
    def dropped(self) -> int:
        """Items dropped unsent because the buffer was full (all time)."""
        return self._meta("dropped")

    @property
    def expired(self) -> int:
        """Items dropped unsent because their TTL passed (all time)."""
        return self._meta("expired")

    def put(self, kind: str, item: bytes, expires_ms: int, now_ms: int) -> int:
        """Append one item; return its number. Drops the oldest when full."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._meta("next_seq", 1)
            self._db.execute(
                "INSERT INTO stream VALUES (?, ?, ?, ?, ?)", (seq, kind, expires_ms, now_ms, item)
            )
            self._set("next_seq", seq + 1)
            self._count += 1
            excess = self._count - self.max_items
            if excess > 0:
                self._db.execute(
                    "DELETE FROM stream WHERE seq IN (SELECT seq FROM stream ORDER BY seq LIMIT ?)", (excess,)
                )
                self._count -= excess
                self._set("dropped", self._meta("dropped") + excess)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise StorageError(f"uplink buffer {self.path}: {exc}") from None
        if excess > 0:
            log.warning("uplink buffer full (%d items): dropped the %d oldest", self.max_items, excess)
        return int(seq)

    def head(self) -> BufferedItem | None:
        """The oldest item waiting."""
        row = self._db.execute(
            "SELECT seq, kind, expires_ms, enqueued_ms, item FROM stream ORDER BY seq LIMIT 1"
        ).fetchone()
        return None if row is None else BufferedItem(int(row[0]), row[1], int(row[2]), int(row[3]), row[4])

    def ack(self, seq: int) -> None:
        """The tier above has item ``seq``: forget it."""
        self._remove(seq, None)

    def expire(self, seq: int) -> None:
        """Item ``seq`` outlived its TTL unsent: forget it and count it."""
        self._remove(seq, "expired")

    def _remove(self, seq: int, counter: str | None) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.execute("DELETE FROM stream WHERE seq = ?", (seq,)).rowcount
            self._count -= deleted
            if counter is not None:
                self._set(counter, self._meta(counter) + deleted)
            if seq > self._meta("last_acked") and counter is None:
                self._set("last_acked", seq)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise StorageError(f"uplink buffer {self.path}: {exc}") from None

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Close the database."""
        self._db.close()
