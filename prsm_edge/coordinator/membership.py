"""Who may be in a group, the coordinator's shell: tokens and approvals in SQLite, credentials off the loop.

The MQTT read loop only *submits* a join (:meth:`Admissions.submit`, never awaits): a bounded queue feeds
one worker task that applies the host's :class:`~prsm_edge.protocol.membership.JoinPolicy`, creates broker
credentials (Mosquitto dynamic security) and answers the joiner. A full queue answers ``busy`` at once.
Tokens and pending approvals live in ``membership.sqlite`` under the coordinator's home, where the
``prsm-edge group`` command (another process) creates tokens and approves nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from prsm_edge.errors import PrsmEdgeError, StorageError
from prsm_edge.protocol.group import GrantJoin
from prsm_edge.protocol.membership import EnrolmentToken, JoinPolicy, TokenBucket, verify_token_proof

__all__ = ["Admissions", "MembershipStore", "PendingJoin", "Respond"]

log = logging.getLogger(__name__)

MAX_TOKENS: Final = 1000
_MAX_ADMITTED: Final = 4096
_APPROVAL_POLL_S: Final = 1.0


class Issuer(Protocol):
    """Creates and deletes broker credentials for a node."""

    async def add_node(self, node_id: str, password: str) -> None: ...

    async def remove_node(self, node_id: str) -> None: ...


# respond(grant, ok, error): answer a join (the coordinator seals the password and signs the answer)
Respond = Callable[[GrantJoin, bool, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PendingJoin:
    """A join waiting for the host's approval."""

    node: str
    public_key: bytes
    txid: str
    requested_ms: int
    approved: bool


class MembershipStore:
    """Enrolment tokens and pending joins of one group (``membership.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One user at a time (the admissions worker, through worker threads): no thread check.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS tokens (token_id TEXT PRIMARY KEY, secret BLOB NOT NULL, "
                "uses_left INTEGER NOT NULL, expires_ms INTEGER NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pending (node TEXT PRIMARY KEY, public_key BLOB NOT NULL, "
                "txid TEXT NOT NULL, requested_ms INTEGER NOT NULL, approved INTEGER NOT NULL DEFAULT 0)"
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the membership database {path}: {exc}") from None
        with contextlib.suppress(OSError):
            path.chmod(0o600)  # it holds token secrets

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"membership database {self.path}: {exc}") from None

    def create_token(self, now_ms: int, *, uses: int = 1, ttl_s: float = 24 * 3600) -> EnrolmentToken:
        """A new enrolment token valid for ``uses`` joins within ``ttl_s`` seconds."""
        if uses < 1 or ttl_s <= 0:
            raise StorageError("a token needs at least one use and a positive lifetime")
        token = EnrolmentToken(secrets.token_hex(8), secrets.token_bytes(24))
        with self._errors():
            self._db.execute("DELETE FROM tokens WHERE expires_ms < ? OR uses_left <= 0", (now_ms,))
            (count,) = self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()
            if count >= MAX_TOKENS:
                raise StorageError(f"{MAX_TOKENS} unused tokens exist already; let some expire first")
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                (token.token_id, token.secret, uses, now_ms + int(ttl_s * 1000)),
            )
        return token

    def redeem(self, node: str, txid: str, params: dict[str, object], now_ms: int) -> bool:
        """True (and one use spent) if ``params`` prove a live token for this node and request."""
        token_id = params.get("token_id")
        if not isinstance(token_id, str) or len(token_id) > 64:
            return False
        with self._errors():
            row = self._db.execute(
                "SELECT secret, uses_left, expires_ms FROM tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            if row is None or row[1] <= 0 or row[2] < now_ms:
                return False
            if not verify_token_proof(row[0], node, txid, params):
                return False
            self._db.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_id = ?", (token_id,))
        return True

    def add_pending(self, grant: GrantJoin, now_ms: int, cap: int) -> bool:
        """Record (or refresh) a join waiting for approval; False when ``cap`` are waiting already."""
        with self._errors():
            known = self._db.execute("SELECT 1 FROM pending WHERE node = ?", (grant.node,)).fetchone()
            (count,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
            if known is None and count >= cap:
                return False
            self._db.execute(
                "INSERT INTO pending (node, public_key, txid, requested_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(node) DO UPDATE SET txid = excluded.txid, requested_ms = excluded.requested_ms",
                (grant.node, grant.public_key, grant.txid, now_ms),
            )
        return True

    def pending(self) -> list[PendingJoin]:
        """Every join waiting (or approved and not yet served), oldest first."""
        with self._errors():
            rows = self._db.execute(
                "SELECT node, public_key, txid, requested_ms, approved FROM pending ORDER BY requested_ms"
            ).fetchall()
        return [PendingJoin(r[0], bytes(r[1]), r[2], r[3], bool(r[4])) for r in rows]

    def approve(self, node: str) -> bool:
        """Approve a pending join (the running coordinator serves it within a second)."""
        with self._errors():
            cur = self._db.execute("UPDATE pending SET approved = 1 WHERE node = ?", (node,))
        return cur.rowcount > 0

    def drop_pending(self, node: str) -> None:
        """Forget a pending join (served or refused)."""
        with self._errors():
            self._db.execute("DELETE FROM pending WHERE node = ?", (node,))

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class Admissions:
    """Applies the join policy and issues credentials in one worker task, fed by a bounded queue."""

    def __init__(
        self,
        policy: JoinPolicy,
        store: MembershipStore,
        issuer: Issuer | None,
        respond: Respond,
        *,
        known: Callable[[str], bool],
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.policy = policy
        self.store = store
        self.issuer = issuer
        self.respond = respond
        self.known = known
        self.clock = clock
        self.bucket = TokenBucket(policy.rate_per_min, policy.burst)
        self.queue: asyncio.Queue[GrantJoin] = asyncio.Queue(policy.max_pending)
        self._admitted: OrderedDict[str, None] = OrderedDict()
        self._revoke: asyncio.Queue[str] = asyncio.Queue(1024)
        self.refused: dict[str, int] = {}

    def admitted(self, node: str) -> bool:
        """True if this run admitted ``node`` (the gate for births when the broker has no ACL)."""
        return node in self._admitted

    def _admit(self, node: str) -> None:
        self._admitted[node] = None
        self._admitted.move_to_end(node)
        while len(self._admitted) > _MAX_ADMITTED:
            self._admitted.popitem(last=False)

    def _count(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    def submit(self, grant: GrantJoin) -> Awaitable[None] | None:
        """Queue a join from the read loop; returns an answer to send now when it is refused at once."""
        if not self.known(grant.node) and self.policy.name == "open" and not self.bucket.take(self.clock()):
            self._count("rate_limited")
            return self.respond(grant, False, "rate_limited: too many joins this minute; try again later")
        try:
            self.queue.put_nowait(grant)
        except asyncio.QueueFull:
            self._count("busy")
            return self.respond(grant, False, "busy: too many joins waiting; try again later")
        return None

    def revoke(self, node: str) -> None:
        """Delete ``node``'s broker credentials (evicted), from the worker."""
        self._admitted.pop(node, None)
        try:
            self._revoke.put_nowait(node)
        except asyncio.QueueFull:
            log.warning("credential removals are backed up; %s keeps its login until the next eviction", node)

    async def run(self) -> None:
        """The worker: joins, approvals and revocations, one at a time, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._joins(), name="admissions-joins")
            tg.create_task(self._revocations(), name="admissions-revocations")
            if self.policy.name == "approval":
                tg.create_task(self._approvals(), name="admissions-approvals")

    async def _joins(self) -> None:
        while True:
            grant = await self.queue.get()
            try:
                await self._decide(grant)
            except PrsmEdgeError as exc:
                log.warning("could not admit %s: %s", grant.node, exc)

    async def _decide(self, grant: GrantJoin) -> None:
        if self.known(grant.node) or self.policy.name == "open":
            await self._grant(grant)
        elif self.policy.name == "token":
            if await asyncio.to_thread(self.store.redeem, grant.node, grant.txid, grant.params, self.clock()):
                await self._grant(grant)
            else:
                self._count("bad_token")
                await self.respond(grant, False, "token_required: no valid enrolment token; ask the host")
        elif await asyncio.to_thread(self.store.add_pending, grant, self.clock(), self.policy.max_pending):
            log.info("join of %s waits for approval: prsm-edge group approve %s", grant.node, grant.node)
            await self.respond(grant, False, "pending_approval: the host has not approved this node yet")
        else:
            self._count("busy")
            await self.respond(grant, False, "busy: too many joins waiting for approval; try again later")

    async def _grant(self, grant: GrantJoin) -> None:
        self._admit(grant.node)
        await self.respond(grant, True, "")

    async def _approvals(self) -> None:
        while True:
            await asyncio.sleep(_APPROVAL_POLL_S)
            for item in await asyncio.to_thread(self.store.pending):
                if item.approved:
                    await asyncio.to_thread(self.store.drop_pending, item.node)
                    log.info("the host approved %s", item.node)
                    await self._grant(GrantJoin(item.node, item.public_key, item.txid))

    async def _revocations(self) -> None:
        while True:
            node = await self._revoke.get()
            if self.issuer is None:
                continue
            try:
                await self.issuer.remove_node(node)
            except PrsmEdgeError as exc:
                log.warning("could not delete the broker credentials of %s: %s", node, exc)
