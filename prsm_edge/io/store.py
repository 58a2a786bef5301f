"""SQLite storage: the coordinator's roster and the agent's outbox. Real files, WAL mode, bounded."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec

from prsm_edge.errors import RejectedMessage, StorageError
from prsm_edge.protocol import cbor
from prsm_edge.protocol.group import Member, member_from_record, member_to_dict
from prsm_edge.protocol.messages import LedgerEntry

__all__ = ["EvidenceStore", "LedgerStore", "Outbox", "OutboxItem", "RosterStore"]

log = logging.getLogger(__name__)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the database {path}: {exc}") from None
    return db


@contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"database {path}: {exc}") from None


class RosterStore:
    """The coordinator's members and its epoch counter; survives restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)
        with _errors(path):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS members (node TEXT PRIMARY KEY, record BLOB NOT NULL)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    def next_epoch(self) -> int:
        """Increment and return the epoch (one per coordinator start)."""
        with _errors(self.path):
            row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            epoch = (row[0] if row else 0) + 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
        return epoch

    def save(self, member: Member) -> None:
        """Insert or update one member."""
        with _errors(self.path):
            self._db.execute(
                "INSERT OR REPLACE INTO members VALUES (?, ?)",
                (member.node, cbor.dumps(member_to_dict(member))),
            )

    def delete(self, node: str) -> None:
        """Forget one member (evicted)."""
        with _errors(self.path):
            self._db.execute("DELETE FROM members WHERE node = ?", (node,))

    def load(self) -> list[Member]:
        """Every stored member (marked offline until heard from)."""
        out = []
        with _errors(self.path):
            rows = self._db.execute("SELECT node, record FROM members ORDER BY node").fetchall()
        for node, record in rows:
            try:
                out.append(member_from_record(cbor.loads_checked(record)))
            except (RejectedMessage, msgspec.ValidationError) as exc:  # one bad row must not lose the rest
                log.warning("skipping damaged roster row for %s: %s", node, exc)
        return out

    def close(self) -> None:
        """Close the database."""
        self._db.close()


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One queued QoS 1 publication."""

    id: int
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    """A bounded on-disk FIFO of QoS 1 publications, kept until the broker acknowledges them.

    When full, the oldest entry is dropped (and logged): the newest state matters most.
    """

    def __init__(self, path: Path, max_items: int = 10_000) -> None:
        self.path = path
        self.max_items = max_items
        self.dropped = 0
        self._db = _connect(path)
        with _errors(path):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL)"
            )

    def put(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue one publication durably."""
        with _errors(self.path):
            self._db.execute(
                "INSERT INTO outbox (topic, payload, retain) VALUES (?, ?, ?)", (topic, payload, retain)
            )
            excess = len(self) - self.max_items
            if excess > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
                )
                self.dropped += excess
                log.warning("outbox full (%d): dropped the %d oldest messages", self.max_items, excess)

    def peek(self, limit: int = 100) -> list[OutboxItem]:
        """The oldest queued publications, in order."""
        with _errors(self.path):
            rows = self._db.execute(
                "SELECT id, topic, payload, retain FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxItem(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def ack(self, item_id: int) -> None:
        """Forget a publication the broker acknowledged."""
        with _errors(self.path):
            self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def __len__(self) -> int:
        with _errors(self.path):
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class LedgerStore:
    """The FTNS ledger's entries in SQLite, appended in order; the chain is re-verified on load."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)
        with _errors(path):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS ledger (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL)"
            )

    def load(self) -> list[LedgerEntry]:
        """Every stored entry, in order."""
        with _errors(self.path):
            rows = self._db.execute("SELECT entry FROM ledger ORDER BY idx").fetchall()
        try:
            return [msgspec.convert(cbor.loads_checked(row[0]), LedgerEntry) for row in rows]
        except (RejectedMessage, msgspec.ValidationError) as exc:
            raise StorageError(f"the ledger {self.path} is damaged: {exc}") from None

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        """Store new entries (their indexes must follow the stored ones)."""
        with _errors(self.path):
            self._db.executemany(
                "INSERT INTO ledger VALUES (?, ?)",
                [(e.index, cbor.dumps(msgspec.to_builtins(e, builtin_types=(bytes,)))) for e in entries],
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class EvidenceStore:
    """What each node has proven, per claim (the verifier's evidence, never a level), and the
    evidence behind each slash, by its digest. A restart reloads it and levels follow from it."""

    def __init__(self, path: Path, max_rows: int = 20_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._db = _connect(path)
        with _errors(path):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS evidence (node TEXT NOT NULL, claim BLOB NOT NULL, "
                "record BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (node, claim))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS slash_evidence (digest BLOB PRIMARY KEY, node TEXT NOT NULL, "
                "evidence BLOB NOT NULL)"
            )
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM evidence").fetchone()
        self._seq = int(seq)

    def save(self, node: str, claim: bytes, record: dict[str, object]) -> None:
        """Insert or replace one node's evidence for one claim (the oldest rows go past ``max_rows``)."""
        self._seq += 1
        with _errors(self.path):
            self._db.execute(
                "INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?)",
                (node, claim, cbor.dumps(record), self._seq),
            )
            if self._seq % 1000 == 0:
                self._db.execute(
                    "DELETE FROM evidence WHERE seq <= (SELECT MAX(seq) FROM evidence) - ?", (self.max_rows,)
                )

    def load(self) -> list[tuple[str, bytes, object]]:
        """Every stored (node, claim, record), oldest first; damaged rows are skipped."""
        with _errors(self.path):
            rows = self._db.execute("SELECT node, claim, record FROM evidence ORDER BY seq").fetchall()
        out: list[tuple[str, bytes, object]] = []
        for node, claim, record in rows:
            try:
                out.append((node, bytes(claim), cbor.loads_checked(record)))
            except RejectedMessage as exc:
                log.warning("skipping damaged evidence row for %s: %s", node, exc)
        return out

    def save_slash(self, digest: bytes, node: str, evidence: dict[str, object]) -> None:
        """Keep a slash's evidence (the node's own signed proof and opening) under its digest."""
        with _errors(self.path):
            self._db.execute(
                "INSERT OR IGNORE INTO slash_evidence VALUES (?, ?, ?)", (digest, node, cbor.dumps(evidence))
            )

    def slash(self, digest: bytes) -> dict[str, object] | None:
        """The evidence a slash entry cites, or ``None``."""
        with _errors(self.path):
            row = self._db.execute(
                "SELECT evidence FROM slash_evidence WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            return None
        data = cbor.loads_checked(row[0])
        return dict(data) if isinstance(data, dict) else None

    def close(self) -> None:
        """Close the database."""
        self._db.close()
