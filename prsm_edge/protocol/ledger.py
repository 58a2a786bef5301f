"""The one FTNS ledger, sans-IO: append-only, hash-chained, idempotent by key.

Every entry names the hash of the entry before it (``prev_hash``; the first names 32 zero bytes), so a
changed, dropped or reordered entry breaks the chain at that point (:func:`verify_chain`). The hash covers
the entry's ledger fields (index, prev_hash, account, amount, kind, key, at_ms, memo, evidence) in
deterministic CBOR, not the envelope's ``v``/``seq``/``ts``, so sealing an entry for the wire does not
change its hash. Amounts are positive integers of µFTNS; the kind says which way they move:

=========  ===============================================  ===========================
kind       effect                                           refused when
=========  ===============================================  ===========================
credit     balance += amount                                —
debit      balance -= amount                                amount > balance
stake      balance -= amount, stake += amount               amount > balance
unstake    stake -= amount, balance += amount               amount > stake
slash      stake -= amount                                  amount > stake
reversal   balance -= amount (may go below zero)            not a credit of the account
                                                            named by ``inputs["reverses"]``,
                                                            or more than it
rate       none: records a base-rate change (µFTNS per      —
           unit-hour) of account ``market:{resource}``
=========  ===============================================  ===========================

Corrections are reversal entries (key ``reversal:{original key}``, so an entry is reversed at most
once), never edits. ``inputs`` holds every input of the formula that produced an amount, so an owner can
recompute it (:mod:`prsm_edge.protocol.earnings`).

Every entry is signed by the coordinator as a COSE_Sign1 (:func:`seal_entry`: the envelope's ``seq`` is
``index + 1`` and its ``ts`` is ``at_ms``, so the signed bytes are a function of the entry and the key);
:func:`open_signed_chain` checks every signature with the coordinator's public key and then the chain.

Each entry has an idempotency ``key`` (e.g. ``earn:{lease}:{period}``): appending with a key already in
the ledger returns the existing entry instead of adding one, so a redelivered message or a retry after a
crash never credits twice; the same key with different content is refused. Storage is someone else's:
the ledger takes entries in (:meth:`Ledger.__init__` replays and verifies them) and hands new ones out.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from nacl.signing import VerifyKey

from prsm_edge.errors import LocalError, Reason, RejectedMessage, RemoteError
from prsm_edge.protocol import cbor
from prsm_edge.protocol.earnings import recompute
from prsm_edge.protocol.envelope import Signer, open_envelope, self_certifying
from prsm_edge.protocol.messages import LedgerEntry

__all__ = [
    "GENESIS",
    "BrokenChain",
    "Inputs",
    "Ledger",
    "LedgerError",
    "LedgerKind",
    "entry_hash",
    "open_entry",
    "open_own_entries",
    "open_signed_chain",
    "seal_entry",
    "verify_chain",
]

Inputs = dict[str, int | float | str]

GENESIS: Final = bytes(32)
_DOMAIN: Final = b"prsm-ledger/v1"
MAX_TEXT: Final = 1024


class LedgerKind(enum.StrEnum):
    """How an entry moves FTNS."""

    CREDIT = "credit"
    DEBIT = "debit"
    STAKE = "stake"
    UNSTAKE = "unstake"
    SLASH = "slash"
    REVERSAL = "reversal"
    RATE = "rate"


MAX_INPUTS: Final = 128


class LedgerError(LocalError):
    """An append was refused: overdraft, bad amount or kind, or a key reused with other content."""


class BrokenChain(RemoteError):
    """A sequence of entries is not a valid ledger; ``index`` is the first bad entry."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"ledger entry {index}: {detail}")
        self.index = index
        self.detail = detail


def entry_hash(entry: LedgerEntry) -> bytes:
    """SHA-256 over the entry's ledger fields in deterministic CBOR."""
    fields = [
        entry.index,
        entry.prev_hash,
        entry.account,
        entry.amount_micro,
        entry.kind,
        entry.key,
        entry.at_ms,
        entry.memo,
        entry.evidence,
    ]
    if entry.inputs:  # absent from entries that record no formula, so their hash is unchanged
        fields.append(entry.inputs)
    return hashlib.sha256(_DOMAIN + cbor.dumps(fields)).digest()


@dataclass(slots=True)
class _Account:
    balance: int = 0
    stake: int = 0


def _same(entry: LedgerEntry, account: str, amount_micro: int, kind: str) -> bool:
    return (entry.account, entry.amount_micro, entry.kind) == (account, amount_micro, kind)


class Ledger:
    """Balances and stakes from an append-only, hash-chained list of entries."""

    def __init__(self, entries: Iterable[LedgerEntry] = ()) -> None:
        self._entries: list[LedgerEntry] = []
        self._by_key: dict[str, LedgerEntry] = {}
        self._accounts: dict[str, _Account] = {}
        self._head = GENESIS
        for entry in entries:
            if entry.index != len(self._entries):
                raise BrokenChain(entry.index, f"expected index {len(self._entries)}")
            if entry.prev_hash != self._head:
                raise BrokenChain(entry.index, "prev_hash does not match the previous entry")
            try:
                self._check(entry.account, entry.amount_micro, entry.kind, entry.key, entry.inputs)
            except LedgerError as exc:
                raise BrokenChain(entry.index, str(exc)) from None
            if entry.key in self._by_key:
                raise BrokenChain(entry.index, f"key {entry.key!r} appears twice")
            self._apply(entry)

    @property
    def head(self) -> bytes:
        """The hash of the last entry (``GENESIS`` when empty)."""
        return self._head

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every entry, oldest first."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> LedgerEntry | None:
        """The entry appended under ``key``, if any."""
        return self._by_key.get(key)

    def balance(self, account: str) -> int:
        """Spendable µFTNS of ``account``."""
        acc = self._accounts.get(account)
        return acc.balance if acc else 0

    def stake(self, account: str) -> int:
        """Staked µFTNS of ``account``."""
        acc = self._accounts.get(account)
        return acc.stake if acc else 0

    def accounts(self) -> list[str]:
        """Every account that has an entry, sorted."""
        return sorted(self._accounts)

    def since(self, index: int) -> list[LedgerEntry]:
        """The entries from ``index`` on (for a store to persist what it has not yet)."""
        return self._entries[index:]

    def append(
        self,
        account: str,
        amount_micro: int,
        kind: str,
        key: str,
        now_ms: int,
        *,
        memo: str = "",
        evidence: bytes = b"",
        inputs: Inputs | None = None,
    ) -> LedgerEntry:
        """Append one entry, or return the existing entry of ``key`` if it is the same movement."""
        existing = self._by_key.get(key)
        if existing is not None:
            if _same(existing, account, amount_micro, kind):
                return existing
            raise LedgerError(f"key {key!r} was already used for another movement (entry {existing.index})")
        if len(memo) > MAX_TEXT or len(evidence) > MAX_TEXT:
            raise LedgerError(f"memo and evidence are limited to {MAX_TEXT} characters/bytes")
        inputs = dict(inputs or {})
        self._check(account, amount_micro, kind, key, inputs)
        kind = LedgerKind(kind).value  # a plain str, whatever enum the caller passed
        entry = LedgerEntry(
            index=len(self._entries),
            prev_hash=self._head,
            account=account,
            amount_micro=amount_micro,
            kind=kind,
            key=key,
            at_ms=now_ms,
            memo=memo,
            evidence=evidence,
            inputs=inputs,
        )
        self._apply(entry)
        return entry

    def reverse(
        self, key: str, now_ms: int, *, amount_micro: int | None = None, memo: str = ""
    ) -> LedgerEntry:
        """Correct the credit appended under ``key`` with a reversal entry (all of it by default)."""
        original = self._by_key.get(key)
        if original is None:
            raise LedgerError(f"no entry with key {key!r} to reverse")
        amount = original.amount_micro if amount_micro is None else amount_micro
        return self.append(
            original.account,
            amount,
            LedgerKind.REVERSAL,
            f"reversal:{key}",
            now_ms,
            memo=memo or f"correction of entry {original.index}",
            inputs={"reverses": original.index},
        )

    def _check(self, account: str, amount_micro: int, kind: str, key: str, inputs: Inputs) -> None:
        if not account or not key:
            raise LedgerError("an entry needs an account and an idempotency key")
        if amount_micro <= 0:
            raise LedgerError(f"amounts are positive µFTNS, not {amount_micro}")
        try:
            k = LedgerKind(kind)
        except ValueError:
            raise LedgerError(f"unknown entry kind {kind!r}") from None
        if len(inputs) > MAX_INPUTS or any(
            isinstance(v, float) and not math.isfinite(v) for v in inputs.values()
        ):
            raise LedgerError(f"inputs are limited to {MAX_INPUTS} finite values")
        acc = self._accounts.get(account, _Account())
        if k is LedgerKind.REVERSAL:
            target = inputs.get("reverses")
            original = (
                self._entries[target]
                if isinstance(target, int) and 0 <= target < len(self._entries)
                else None
            )
            if original is None or original.kind != LedgerKind.CREDIT or original.account != account:
                raise LedgerError("a reversal must name (inputs['reverses']) a credit of the same account")
            if key != f"reversal:{original.key}" or amount_micro > original.amount_micro:
                raise LedgerError(
                    "a reversal is keyed reversal:{original key} and takes back at most the credit"
                )
        if k in (LedgerKind.DEBIT, LedgerKind.STAKE) and amount_micro > acc.balance:
            raise LedgerError(f"{k.value} of {amount_micro} exceeds the balance {acc.balance} of {account}")
        if k in (LedgerKind.UNSTAKE, LedgerKind.SLASH) and amount_micro > acc.stake:
            raise LedgerError(f"{k.value} of {amount_micro} exceeds the stake {acc.stake} of {account}")

    def _apply(self, entry: LedgerEntry) -> None:
        acc = self._accounts.setdefault(entry.account, _Account())
        amount = entry.amount_micro
        match LedgerKind(entry.kind):
            case LedgerKind.CREDIT:
                acc.balance += amount
            case LedgerKind.DEBIT:
                acc.balance -= amount
            case LedgerKind.STAKE:
                acc.balance -= amount
                acc.stake += amount
            case LedgerKind.UNSTAKE:
                acc.stake -= amount
                acc.balance += amount
            case LedgerKind.SLASH:
                acc.stake -= amount
            case LedgerKind.REVERSAL:
                acc.balance -= amount
            case LedgerKind.RATE:
                pass
        self._entries.append(entry)
        self._by_key[entry.key] = entry
        self._head = entry_hash(entry)


def verify_chain(entries: Iterable[LedgerEntry]) -> bytes:
    """Check links, indices, keys and the movement rules; the head hash, or :class:`BrokenChain`."""
    return Ledger(entries).head


def seal_entry(signer: Signer, entry: LedgerEntry) -> bytes:
    """The entry as the coordinator's COSE_Sign1 (``seq`` = index + 1, ``ts`` = ``at_ms``)."""
    return signer.seal(entry, entry.at_ms, seq=entry.index + 1)


def open_entry(data: bytes, coordinator_key: bytes) -> LedgerEntry:
    """Verify one signed entry against the coordinator's public key; :class:`RejectedMessage` if not."""

    def resolve(kid: bytes) -> VerifyKey | None:
        return self_certifying(kid) if kid == coordinator_key else None

    opened = open_envelope(data, resolve)
    entry = opened.message
    if not isinstance(entry, LedgerEntry):
        raise RejectedMessage(Reason.MALFORMED, f"a {type(entry).__name__} is not a ledger entry")
    if entry.seq != entry.index + 1:
        raise RejectedMessage(Reason.MALFORMED, f"entry {entry.index} was signed as sequence {entry.seq}")
    return entry


def open_own_entries(rows: Iterable[bytes], coordinator_key: bytes, account: str) -> list[LedgerEntry]:
    """A member's check of its own entries (as the coordinator's ``ledger`` method hands them out).

    Every entry must carry the coordinator's signature and name ``account``, in increasing index order,
    and each earnings credit must follow from its recorded inputs. What this cannot show alone is that
    nothing was left out between them: compare the count with the published head, or run the full
    check (``prsm-edge ledger verify``) on the whole chain.
    """
    out: list[LedgerEntry] = []
    for data in rows:
        entry = open_entry(data, coordinator_key)
        if entry.account != account:
            raise RejectedMessage(
                Reason.MALFORMED, f"entry {entry.index} is {entry.account}'s, not {account}'s"
            )
        if out and entry.index <= out[-1].index:
            raise RejectedMessage(Reason.MALFORMED, f"entry {entry.index} comes after {out[-1].index}")
        if entry.kind == LedgerKind.CREDIT and entry.inputs.get("formula"):
            expected = recompute(entry.inputs)
            if expected != entry.amount_micro:
                raise RejectedMessage(
                    Reason.IMPLAUSIBLE,
                    f"entry {entry.index} pays {entry.amount_micro}, its inputs {expected}",
                )
        out.append(entry)
    return out


def open_signed_chain(rows: Iterable[bytes], coordinator_key: bytes) -> Ledger:
    """Check every signature, then the chain; the rebuilt ledger, or :class:`BrokenChain`."""
    entries = []
    for position, data in enumerate(rows):
        try:
            entries.append(open_entry(data, coordinator_key))
        except RejectedMessage as exc:
            raise BrokenChain(position, f"signature check failed: {exc}") from None
    return Ledger(entries)
