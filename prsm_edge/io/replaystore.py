"""The coordinator's replay guard, persisted in SQLite so a restart reopens no replay window.

Every accepted (signer, sequence number, timestamp) is written through (WAL, autocommit) before the
message takes effect; a new run loads what is younger than the window. Rows older than the window are
pruned: a message that old fails the timestamp check anyway.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prsm_edge.errors import StorageError
from prsm_edge.io.store import connect
from prsm_edge.protocol.replay import ReplayGuard

__all__ = ["PersistentReplayGuard"]


class PersistentReplayGuard(ReplayGuard):
    """A :class:`ReplayGuard` whose table survives restarts (``replay.sqlite`` in the coordinator's home)."""

    def __init__(self, path: Path, now_ms: int, window_ms: int = 120_000, max_signers: int = 10_000) -> None:
        super().__init__(window_ms=window_ms, max_signers=max_signers)
        self.path = path
        try:
            self._db = connect(path)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (signer TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
                "ts INTEGER NOT NULL)"
            )
            self.prune(now_ms)
            rows = self._db.execute(
                "SELECT signer, seq, ts FROM seen ORDER BY ts DESC LIMIT ?", (max_signers,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the replay guard {path}: {exc}") from None
        for signer, seq, ts in reversed(rows):
            self.restore(signer, seq, ts)

    def check(self, signer: str, seq: int, ts: int, now_ms: int, *, allow_reset: bool = False) -> int:
        """As :meth:`ReplayGuard.check`, then record the signer's new state on disk."""
        gap = super().check(signer, seq, ts, now_ms, allow_reset=allow_reset)
        entry = self.entry(signer)
        if entry is not None:
            try:
                self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, ?)", (signer, *entry))
            except sqlite3.Error as exc:
                raise StorageError(f"cannot record in the replay guard {self.path}: {exc}") from None
        return gap

    def forget(self, signer: str) -> None:
        """Drop ``signer`` here and on disk."""
        super().forget(signer)
        try:
            self._db.execute("DELETE FROM seen WHERE signer = ?", (signer,))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot update the replay guard {self.path}: {exc}") from None

    def prune(self, now_ms: int) -> None:
        """Delete rows older than the window (called now and then by the coordinator)."""
        try:
            self._db.execute("DELETE FROM seen WHERE ts < ?", (now_ms - self.window_ms,))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot prune the replay guard {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()
