"""The FTNS ledger: hash chain, idempotent keys, movement rules, replay from stored entries."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_edge.protocol.ledger import GENESIS, BrokenChain, Ledger, LedgerError, entry_hash, verify_chain
from prsm_edge.protocol.messages import MICRO, LedgerEntry, from_wire, to_wire

T = 1_700_000_000_000


def sample() -> Ledger:
    led = Ledger()
    led.append("alice", 50 * MICRO, "credit", "earn:l1:0", T, memo="lease l1")
    led.append("alice", 20 * MICRO, "stake", "stake:alice:1", T + 1)
    led.append("alice", 5 * MICRO, "debit", "fee:1", T + 2)
    led.append("alice", 2 * MICRO, "slash", "slash:perf:alice:ab", T + 3, evidence=b"\x01" * 32)
    led.append("alice", 8 * MICRO, "unstake", "unstake:alice:1", T + 4)
    led.append("bob", 1, "credit", "earn:l2:0", T + 5)
    return led


def test_balances_stakes_and_chain() -> None:
    led = sample()
    assert led.balance("alice") == (50 - 20 - 5 + 8) * MICRO
    assert led.stake("alice") == (20 - 2 - 8) * MICRO
    assert led.balance("bob") == 1 and led.stake("nobody") == 0
    assert led.accounts() == ["alice", "bob"]
    entries = led.entries
    assert entries[0].prev_hash == GENESIS
    assert all(e.prev_hash == entry_hash(p) for p, e in itertools.pairwise(entries))
    assert verify_chain(entries) == led.head == entry_hash(entries[-1])
    rebuilt = Ledger(entries)
    assert rebuilt.balance("alice") == led.balance("alice") and rebuilt.head == led.head


def test_idempotent_keys() -> None:
    led = sample()
    n = len(led)
    again = led.append("alice", 50 * MICRO, "credit", "earn:l1:0", T + 99)
    assert again == led.entries[0] and len(led) == n
    with pytest.raises(LedgerError):
        led.append("alice", 51 * MICRO, "credit", "earn:l1:0", T + 99)
    assert led.get("fee:1") is not None and led.get("missing") is None


def test_movement_rules() -> None:
    led = Ledger()
    led.append("a", 10, "credit", "k1", T)
    for amount, kind in [
        (11, "debit"),
        (11, "stake"),
        (1, "unstake"),
        (1, "slash"),
        (0, "credit"),
        (-5, "credit"),
    ]:
        with pytest.raises(LedgerError):
            led.append("a", amount, kind, f"bad:{kind}:{amount}", T)
    with pytest.raises(LedgerError):
        led.append("a", 1, "mint", "k2", T)
    with pytest.raises(LedgerError):
        led.append("", 1, "credit", "k3", T)
    assert len(led) == 1 and led.balance("a") == 10


def test_sealing_for_the_wire_keeps_the_hash() -> None:
    e = sample().entries[3]
    stamped = msgspec.structs.replace(e, seq=42, ts=T + 1000)
    back = from_wire(to_wire(stamped))
    assert isinstance(back, LedgerEntry) and entry_hash(back) == entry_hash(e)


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_any_tampering_breaks_the_chain(data: st.DataObject) -> None:
    entries = list(sample().entries)
    i = data.draw(st.integers(0, len(entries) - 1))
    e = entries[i]
    field = data.draw(
        st.sampled_from(["amount_micro", "account", "memo", "at_ms", "evidence", "drop", "swap"])
    )
    if field == "drop":
        del entries[i]
        if i == len(entries):  # dropping the last entry leaves a valid, shorter chain: the head shows it
            assert verify_chain(entries) != sample().head
            return
    elif field == "swap":
        j = (i + 1) % len(entries)
        entries[i], entries[j] = entries[j], entries[i]
    else:
        value = {
            "amount_micro": e.amount_micro + 1,
            "account": e.account + "x",
            "memo": e.memo + "!",
            "at_ms": e.at_ms + 1,
            "evidence": e.evidence + b"\x00",
        }[field]
        entries[i] = msgspec.structs.replace(e, **{field: value})
    if i == len(entries) - 1 and field not in {"drop", "swap"}:
        # The last entry has no successor to break: its hash no longer matches the known head.
        assert Ledger(entries).head != sample().head
        return
    with pytest.raises(BrokenChain) as info:
        verify_chain(entries)
    assert info.value.index <= i + 1  # found at the tampered entry or its successor
