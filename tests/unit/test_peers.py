"""Peer verification: beacon commit/reveal, recomputable panels, and the 2f+1 tally."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from prsm_edge.protocol import peers
from prsm_edge.protocol.messages import VerificationVote
from prsm_edge.protocol.peers import Outcome

MEMBERS = [f"n{i:03d}" for i in range(60)]


def vote(voter: str, accept: bool, *, subject: str = "n000", round_: int = 7) -> VerificationVote:
    return VerificationVote(round=round_, subject=subject, voter=voter, challenge_id="c1", accept=accept)


def test_beacon_commit_reveal() -> None:
    secret = bytes(range(32))
    commit = peers.beacon_commit(secret, 7)
    assert peers.verify_reveal(commit, secret, 7)
    assert not peers.verify_reveal(commit, secret, 8)
    assert not peers.verify_reveal(commit, bytes(32), 7)
    assert peers.beacon_value(secret, 7) != peers.beacon_value(secret, 8)
    assert peers.beacon_value(secret, 7, b"roster-hash") != peers.beacon_value(secret, 7)


def test_selection_is_deterministic_excludes_subject_and_varies() -> None:
    beacon = peers.beacon_value(b"s" * 32, 1)
    panel = peers.select_verifiers(beacon, "n000", 1, MEMBERS)
    assert len(panel) == len(set(panel)) == 5 and "n000" not in panel
    # Anyone recomputes the same panel, whatever order they list the members in.
    assert peers.select_verifiers(beacon, "n000", 1, reversed(MEMBERS)) == panel
    assert peers.select_verifiers(beacon, "n000", 1, MEMBERS, exclude=[panel[0]])[:4] == panel[1:]
    assert peers.select_verifiers(beacon, "n000", 2, MEMBERS) != panel
    assert peers.select_verifiers(beacon, "n001", 1, MEMBERS) != panel
    assert peers.select_verifiers(peers.beacon_value(b"t" * 32, 1), "n000", 1, MEMBERS) != panel
    assert peers.select_verifiers(beacon, "n000", 1, ["n000", "n001"]) == ["n001"]


def test_selection_is_roughly_uniform() -> None:
    rng = random.Random(1)
    counts: Counter[str] = Counter()
    for r in range(2000):
        counts.update(peers.select_verifiers(rng.randbytes(32), "n000", r, MEMBERS))
    # 59 eligible, 5 of them per panel: each is chosen ~169 times in 2000 panels.
    assert "n000" not in counts and len(counts) == 59
    assert min(counts.values()) > 110 and max(counts.values()) < 230


@pytest.mark.parametrize(("n", "f", "q"), [(1, 0, 1), (3, 0, 1), (4, 1, 3), (5, 1, 3), (7, 2, 5), (10, 3, 7)])
def test_quorum_sizes(n: int, f: int, q: int) -> None:
    assert peers.tolerated_faults(n) == f and peers.quorum_size(n) == q


def test_tally_decides_by_quorum_and_names_dissenters() -> None:
    panel = ["a", "b", "c", "d", "e"]
    t = peers.tally([vote("a", True), vote("b", True), vote("c", True), vote("d", False)], panel)
    assert t.outcome is Outcome.ACCEPT and (t.accepts, t.rejects, t.quorum) == (3, 1, 3)
    assert t.dissenters == ("d",) and t.missing == ("e",)
    t = peers.tally([vote("a", False), vote("b", False), vote("c", False), vote("d", True)], panel)
    assert t.outcome is Outcome.REJECT and t.dissenters == ("d",)
    t = peers.tally([vote("a", True), vote("b", True), vote("c", False), vote("d", False)], panel)
    assert t.outcome is Outcome.INCONCLUSIVE and t.dissenters == ()
    assert peers.needs_audit(t)
    unanimous = peers.tally([vote(v, True) for v in "abc"], panel)
    assert unanimous.outcome is Outcome.ACCEPT and not peers.needs_audit(unanimous)
    split = peers.tally([*(vote(v, True) for v in "abc"), vote("d", False)], panel)
    assert split.outcome is Outcome.ACCEPT and peers.needs_audit(split)
    # A unanimous reject costs the subject stake: it is audited too (a whole panel may collude).
    framed = peers.tally([vote(v, False) for v in panel], panel)
    assert framed.outcome is Outcome.REJECT and peers.needs_audit(framed)


def test_tally_counts_only_the_panel_once_each() -> None:
    panel = ["a", "b", "c", "d", "e"]
    votes = [
        vote("a", True),
        vote("a", True),  # duplicate: counted once
        vote("x", True),  # not on the panel
        vote("y", True),
        vote("b", True, subject="n999"),  # another subject
        vote("c", True, round_=6),  # another round
        vote("d", True),
        vote("d", False),  # equivocation: counts for neither side
    ]
    t = peers.tally(votes, panel, subject="n000", round_=7)
    assert t.outcome is Outcome.INCONCLUSIVE and t.accepts == 1
    assert t.equivocators == ("d",) and t.ignored == 5
    # One faulty verifier of five cannot decide alone, nor block four honest ones.
    t = peers.tally([vote("a", False), *(vote(v, True) for v in "bcde")], panel)
    assert t.outcome is Outcome.ACCEPT and t.dissenters == ("a",)
