"""Replay and reorder protection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prsm_edge.errors import Reason, RejectedMessage
from prsm_edge.protocol.replay import ReplayGuard

NOW = 1_000_000


def test_in_order_messages_pass_and_gaps_are_reported() -> None:
    g = ReplayGuard(window_ms=1000)
    assert g.check("a", 1, NOW, NOW) == 0
    assert g.check("a", 2, NOW, NOW) == 0
    assert g.check("a", 5, NOW, NOW) == 2
    assert g.last_seq("a") == 5


def test_replay_and_reorder_are_rejected() -> None:
    g = ReplayGuard(window_ms=1000)
    g.check("a", 3, NOW, NOW)
    for seq in (3, 2):
        with pytest.raises(RejectedMessage) as info:
            g.check("a", seq, NOW, NOW)
        assert info.value.reason is Reason.REPLAY


def test_stale_or_future_timestamps_are_rejected() -> None:
    g = ReplayGuard(window_ms=1000)
    for ts in (NOW - 1001, NOW + 1001):
        with pytest.raises(RejectedMessage) as info:
            g.check("a", 1, ts, NOW)
        assert info.value.reason is Reason.STALE


def test_reset_only_by_a_newer_birth() -> None:
    g = ReplayGuard(window_ms=10_000)
    g.check("a", 500, NOW, NOW)
    with pytest.raises(RejectedMessage):
        g.check("a", 1, NOW, NOW, allow_reset=True)  # not newer than what was seen
    assert g.check("a", 1, NOW + 5, NOW + 5, allow_reset=True) == 0
    assert g.last_seq("a") == 1


def test_signer_table_is_bounded() -> None:
    g = ReplayGuard(max_signers=3)
    for name in "abcd":
        g.check(name, 1, NOW, NOW)
    assert len(g) == 3
    assert g.last_seq("a") is None


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=60))
def test_accepted_sequence_is_strictly_increasing(seqs: list[int]) -> None:
    g = ReplayGuard()
    accepted = []
    for s in seqs:
        try:
            g.check("a", s, NOW, NOW)
            accepted.append(s)
        except RejectedMessage:
            pass
    assert accepted == sorted(set(accepted))
