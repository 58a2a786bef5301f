"""SQLite storage: the coordinator's roster and FTNS ledger, the agent's outbox. Real files, WAL, bounded."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cbor2
import msgspec

from prsm_edge.errors import RejectedMessage, StorageError
from prsm_edge.protocol import cbor
from prsm_edge.protocol.envelope import ENVELOPE_LIMITS, Signer
from prsm_edge.protocol.group import Member, member_from_record, member_to_dict
from prsm_edge.protocol.ledger import seal_entry
from prsm_edge.protocol.messages import LedgerEntry

__all__ = ["EvidenceStore", "LedgerStore", "Outbox", "OutboxItem", "RosterStore", "connect"]

log = logging.getLogger(__name__)


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating its folder) a SQLite file in WAL mode, autocommit; StorageError if it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
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
        self._db = connect(path)
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
        self._db = connect(path)
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
    """The FTNS ledger's entries in SQLite, each stored as the coordinator's signed COSE_Sign1.

    Durable before acknowledged: the ledger's database runs WAL with ``synchronous=FULL``, so a write
    that returned survives a power cut. The idempotency key is a ``UNIQUE`` column, so even a buggy
    caller cannot store one key twice. Writes go in index order through one queue: :meth:`append`
    writes (and commits) everything queued so far plus its own entries before it returns;
    :meth:`append_durable` is the group-commit path: callers in the same moment share one transaction
    and one fsync, and each awaits until its entries are on disk. Without a signer (a reader, e.g.
    ``prsm-edge ledger verify``) the store cannot append.
    """

    def __init__(self, path: Path, signer: Signer | None = None) -> None:
        self.path = path
        self.signer = signer
        self._db = connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        self._pending: list[LedgerEntry] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flush_active = False
        self.commits = 0
        with _errors(path):
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS ftns_ledger (idx INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
                "account TEXT NOT NULL, signed BLOB NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS ftns_ledger_account ON ftns_ledger (account)")
            old = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='ledger'")
            if old.fetchone() is not None:
                log.warning(
                    "%s holds an unsigned ledger from an older prsm-edge (table 'ledger'); it is kept "
                    "but not carried into the signed ledger: re-credit anything it held by hand",
                    path,
                )

    def signed(self, account: str | None = None) -> list[bytes]:
        """The signed entries, in order (only ``account``'s when given)."""
        with _errors(self.path), self._lock:
            if account is None:
                rows = self._db.execute("SELECT signed FROM ftns_ledger ORDER BY idx").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT signed FROM ftns_ledger WHERE account = ? ORDER BY idx", (account,)
                ).fetchall()
        return [bytes(r[0]) for r in rows]

    def load(self) -> list[LedgerEntry]:
        """Every stored entry, in order (signatures are checked by :func:`open_signed_chain`)."""
        out = []
        for data in self.signed():
            try:
                outer = cbor.loads(data, ENVELOPE_LIMITS)
                payload = outer.value[2] if isinstance(outer, cbor2.CBORTag) else b""
                out.append(msgspec.convert(cbor.loads_checked(payload), LedgerEntry))
            except (RejectedMessage, msgspec.ValidationError, TypeError, IndexError) as exc:
                raise StorageError(f"the ledger {self.path} is damaged at entry {len(out)}: {exc}") from None
        return out

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        """Sign and store new entries (and anything queued before them); durable on return."""
        with self._lock:
            self._pending.extend(entries)
            self._write_pending()

    async def append_durable(self, entries: Iterable[LedgerEntry]) -> None:
        """Queue entries for the next group commit and wait until they are durable."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending.extend(entries)
            self._waiters.append(waiter)
            start = not self._flush_active
            self._flush_active = True
        if start:
            self._flushing = asyncio.create_task(self._flush_loop(), name="ledger-group-commit")
        await waiter

    async def _flush_loop(self) -> None:
        while True:
            with self._lock:
                waiters, self._waiters = self._waiters, []
                if not waiters:
                    self._flush_active = False
                    return
            try:
                await asyncio.to_thread(self._flush_locked)
            except StorageError as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _flush_locked(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        if self.signer is None:
            raise StorageError(f"the ledger {self.path} is open read-only (no coordinator key)")
        signer = self.signer
        rows = [(e.index, e.key, e.account, seal_entry(signer, e)) for e in self._pending]
        with _errors(self.path):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO ftns_ledger VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    # Refused for good (a key or index stored already): never retried, never half-written.
                    log.error("ledger %s refused %d entries: %s", self.path, len(self._pending), exc)
                    self._pending.clear()
                raise
        self._pending.clear()
        self.commits += 1

    def close(self) -> None:
        """Close the database (anything still queued is written first)."""
        with self._lock:
            if self._pending and self.signer is not None:
                self._write_pending()
        self._db.close()


class EvidenceStore:
    """What each node has proven, per claim (the verifier's evidence, never a level), each node's
    sampling record (its run of verified results), and the evidence behind each slash, by its digest.
    A restart reloads it and levels and sampling follow from it."""

    def __init__(self, path: Path, max_rows: int = 20_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._db = connect(path)
        with _errors(path):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS evidence (node TEXT NOT NULL, claim BLOB NOT NULL, "
                "record BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (node, claim))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS slash_evidence (digest BLOB PRIMARY KEY, node TEXT NOT NULL, "
                "evidence BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS sampling (node TEXT PRIMARY KEY, record BLOB NOT NULL, "
                "seq INTEGER NOT NULL)"
            )
            # Workloads whose first late or slow result awaits its re-check (verifier.RecordContainment).
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS containment (node TEXT PRIMARY KEY, workloads BLOB NOT NULL)"
            )
            (seq,) = self._db.execute(
                "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM evidence), "
                "(SELECT COALESCE(MAX(seq), 0) FROM sampling))"
            ).fetchone()
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

    def save_sampling(self, node: str, record: dict[str, int]) -> None:
        """Insert or replace one node's sampling record (the oldest rows go past ``max_rows``)."""
        self._seq += 1
        with _errors(self.path):
            self._db.execute(
                "INSERT OR REPLACE INTO sampling VALUES (?, ?, ?)", (node, cbor.dumps(record), self._seq)
            )
            if self._seq % 1000 == 0:
                self._db.execute(
                    "DELETE FROM sampling WHERE seq <= (SELECT MAX(seq) FROM sampling) - ?", (self.max_rows,)
                )

    def load_sampling(self) -> list[tuple[str, object]]:
        """Every stored (node, sampling record); damaged rows are skipped."""
        with _errors(self.path):
            rows = self._db.execute("SELECT node, record FROM sampling ORDER BY seq").fetchall()
        out: list[tuple[str, object]] = []
        for node, record in rows:
            try:
                out.append((node, cbor.loads_checked(record)))
            except RejectedMessage as exc:
                log.warning("skipping damaged sampling row for %s: %s", node, exc)
        return out

    def save_containment(self, node: str, workloads: tuple[str, ...]) -> None:
        """Keep ``node``'s workloads awaiting their re-check; none: its row goes. At most ``max_rows``
        nodes are kept (a re-check pending that long is past mattering for the others)."""
        with _errors(self.path):
            if not workloads:
                self._db.execute("DELETE FROM containment WHERE node = ?", (node,))
                return
            self._db.execute(
                "INSERT OR REPLACE INTO containment VALUES (?, ?)", (node, cbor.dumps(list(workloads)))
            )
            self._db.execute(
                "DELETE FROM containment WHERE rowid NOT IN "
                "(SELECT rowid FROM containment ORDER BY rowid DESC LIMIT ?)",
                (self.max_rows,),
            )

    def load_containment(self) -> list[tuple[str, object]]:
        """Every stored (node, workloads awaiting a re-check); damaged rows are skipped."""
        with _errors(self.path):
            rows = self._db.execute("SELECT node, workloads FROM containment").fetchall()
        out: list[tuple[str, object]] = []
        for node, workloads in rows:
            try:
                out.append((node, cbor.loads_checked(workloads)))
            except RejectedMessage as exc:
                log.warning("skipping damaged containment row for %s: %s", node, exc)
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
