"""The signed FTNS ledger: stock-COSE verifiable entries, corrections by reversal, settlement once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import cbor2
import pytest
from nacl.signing import SigningKey
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from prsm_edge.coordinator.economy import Economy, EconomyConfig
from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.ledger import BrokenChain, Ledger, LedgerError, LedgerKind, open_signed_chain
from prsm_edge.protocol.messages import MICRO, ResourceSpec, ResourceType, VerificationLevel

KEY = SigningKey(bytes(range(32)))
CPU = ResourceType.COMPUTE_CPU
HOUR = 3_600_000


def member(node: str, cores: float = 2.0, fp: str = "") -> Member:
    return Member(
        node=node,
        public_key=bytes(32),
        bdseq=1,
        device_class="raspberry_pi",
        hw_fingerprint=fp or f"fp-{node}",
        resources=[ResourceSpec(type=CPU, capacity=cores, unit="cores")],
        last_seen_ms=0,
    )


def test_each_stored_entry_verifies_with_a_stock_cose_library(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite", Signer(KEY))
    led = Ledger()
    led.append("n1", 5 * MICRO, "credit", "deposit:n1", 1_000, inputs={"formula": "x", "hours": 1.0})
    led.append("n1", 2 * MICRO, "stake", "stake:n1", 2_000)
    store.append(led.entries)
    rows = store.signed()
    key = OKPKey(crv=Ed25519, x=bytes(KEY.verify_key))
    for data in rows:
        protected, unprotected, payload, signature = cbor2.loads(data).value
        msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
        msg.key = key
        assert msg.verify_signature()
        assert cbor2.loads(msg.payload)["t"] == "ledger"
    rebuilt = open_signed_chain(rows, bytes(KEY.verify_key))
    assert rebuilt.head == led.head and rebuilt.balance("n1") == 3 * MICRO
    assert [e.inputs for e in store.load()] == [{"formula": "x", "hours": 1.0}, {}]
    store.close()


def test_a_changed_byte_or_another_key_breaks_verification(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite", Signer(KEY))
    led = Ledger()
    for i in range(3):
        led.append(f"n{i}", MICRO, "credit", f"k{i}", i)
    store.append(led.entries)
    rows = store.signed()
    with pytest.raises(BrokenChain) as exc:
        open_signed_chain(rows, bytes(SigningKey(bytes(32)).verify_key))
    assert exc.value.index == 0
    forged = bytearray(rows[1])
    forged[-70] ^= 1  # inside the payload
    with pytest.raises(BrokenChain) as exc:
        open_signed_chain([rows[0], bytes(forged), rows[2]], bytes(KEY.verify_key))
    assert exc.value.index == 1
    with pytest.raises(BrokenChain):  # dropping an entry breaks the chain even with valid signatures
        open_signed_chain([rows[0], rows[2]], bytes(KEY.verify_key))
    store.close()


def test_corrections_are_reversals_never_edits() -> None:
    led = Ledger()
    credit = led.append("n1", 3 * MICRO, "credit", "earn:0:n1", 1)
    rev = led.reverse("earn:0:n1", 2, memo="work later found invalid")
    assert rev.kind == LedgerKind.REVERSAL and rev.inputs == {"reverses": credit.index}
    assert led.balance("n1") == 0 and led.entries[0] == credit  # the credit is still there
    assert led.reverse("earn:0:n1", 3, memo="again") == rev  # reversed at most once
    with pytest.raises(LedgerError):
        led.append("n1", MICRO, "reversal", "reversal:x", 4, inputs={"reverses": 1})  # not a credit
    assert Ledger(led.entries).head == led.head


def test_the_store_refuses_a_second_entry_with_the_same_key(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite", Signer(KEY))
    led = Ledger()
    store.append([led.append("n1", MICRO, "credit", "earn:0:n1", 1)])
    other = Ledger().append("n1", MICRO, "credit", "earn:0:n1", 1)
    bumped = type(other)(**{**{f: getattr(other, f) for f in other.__struct_fields__}, "index": 7})
    with pytest.raises(Exception, match="UNIQUE"):
        store.append([bumped])
    assert len(store.signed()) == 1
    assert sqlite3.connect(tmp_path / "ledger.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


async def test_group_commit_makes_concurrent_appends_durable_in_few_transactions(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite", Signer(KEY))
    led = Ledger()

    async def one(i: int) -> None:
        await store.append_durable([led.append(f"n{i % 7}", MICRO, "credit", f"k{i}", i)])

    await asyncio.gather(*(one(i) for i in range(300)))
    assert store.commits < 300  # shared transactions
    store.close()
    reopened = LedgerStore(tmp_path / "ledger.sqlite")
    assert open_signed_chain(reopened.signed(), bytes(KEY.verify_key)).head == led.head
    reopened.close()


async def test_a_replayed_settlement_credits_once(tmp_path: Path) -> None:
    """The same period settled again (redelivered trigger, restart) finds its keys and credits nothing."""
    path = tmp_path / "ledger.sqlite"
    store = LedgerStore(path, Signer(KEY))
    led = Ledger()
    members = {"a": member("a"), "b": member("b")}
    config = EconomyConfig(period_ms=HOUR)

    def economy(ledger: Ledger, st: LedgerStore) -> Economy:
        return Economy(
            "lab", "g1", ledger, st, level_of=lambda _n: VerificationLevel.PEER_VERIFIED, config=config
        )

    eco = economy(led, store)
    _alloc, _ = eco.submit(members, _task(), 0)
    for rec in eco.leases.open_leases():
        eco.leases.answer(rec.lease.lease_id, rec.lease.node, True, 0)
        eco.record_work(rec.lease.lease_id, rec.lease.node, {CPU: 1.0}, HOUR)
    await eco.tick(members, 2 * HOUR + 5)  # settles the period [HOUR, 2·HOUR)
    credits = [e for e in led.entries if e.kind == "credit"]
    assert credits and all(e.key.startswith(f"earn:{HOUR}:") for e in credits)
    balance = {n: led.balance(n) for n in members}
    # The same trigger again, and the same period settled by hand with the same work reported again.
    await eco.tick(members, 2 * HOUR + 10)
    for rec in eco.leases.leases.values():
        rec.unsettled = {CPU: 1.0}
    again = eco.settle_entries(members, HOUR)
    assert [e for e in again if e.kind == "credit"] == []
    store.close()
    # A restarted coordinator (ledger rebuilt from the file) does not settle the period again either.
    store2 = LedgerStore(path, Signer(KEY))
    led2 = open_signed_chain(store2.signed(), bytes(KEY.verify_key))
    eco2 = economy(led2, store2)
    await eco2.tick(members, 2 * HOUR + 20)
    assert {n: led2.balance(n) for n in members} == balance
    assert len([e for e in led2.entries if e.kind == "credit"]) == len(credits)
    store2.close()


def _task() -> object:
    from prsm_edge.protocol.allocation import Task

    return Task(task_id="t1", amounts={CPU: 3.0}, duration_ms=10 * HOUR, max_price_micro_per_hour=10**9)


def test_the_head_and_listing_topics_parse_back() -> None:
    from prsm_edge.protocol import topics

    head = topics.parse(topics.coord_ledger("lab", "g1"))
    assert head.kind is topics.Kind.COORD_LEDGER and head.retained
    listing = topics.parse(topics.market_listing("lab", "g1", "nabc"))
    assert listing.kind is topics.Kind.MARKET_LISTING and listing.node == "nabc" and listing.retained
    assert str(listing) == "prsm/v1/lab/g1/market/nabc"
