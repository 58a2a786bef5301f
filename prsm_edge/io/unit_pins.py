"""The regional coordinator's pinned unit keys in SQLite, so a restart does not pin at first sight again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prsm_edge.errors import StorageError

__all__ = ["PinStore"]


class PinStore:
    """(site, group) → the coordinator key first seen for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pins "
                "(site TEXT, grp TEXT, key BLOB NOT NULL, PRIMARY KEY (site, grp))"
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the pin store {path}: {exc}") from None

    def save(self, site: str, group: str, key: bytes) -> None:
        """Pin (or re-pin, after an operator's change) one unit's key."""
        try:
            self._db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?)", (site, group, key))
        except sqlite3.Error as exc:
            raise StorageError(f"pin store {self.path}: {exc}") from None

    def load(self) -> dict[tuple[str, str], bytes]:
        """Every pin."""
        try:
            rows = self._db.execute("SELECT site, grp, key FROM pins").fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"pin store {self.path}: {exc}") from None
        return {
            (site, grp): bytes(key) for site, grp, key in rows if isinstance(key, bytes) and len(key) == 32
        }

    def close(self) -> None:
        """Close the database."""
        self._db.close()
