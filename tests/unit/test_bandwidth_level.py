"""The level policy for a claim no peer panel can check: bandwidth only."""

from __future__ import annotations

import random

from prsm_edge.protocol.messages import VerificationLevel
from prsm_edge.protocol.reputation import TrustEvidence
from tests.unit.test_bandwidth import MB, commands, deliver, egress, setup
from tests.unit.test_verifier import T0, cpu

L = VerificationLevel


def test_a_bandwidth_only_claim_reaches_benchmarked_on_the_coordinators_measurement() -> None:
    """Fails on the old code: the ladder needed a panel quorum below ``benchmarked``, and a bandwidth
    check has no panel, so a node offering only bandwidth stayed self_reported however well it did."""
    v, members = setup({"a": [egress(16)]})
    [cmd] = commands(v.start_round(list(members.values()), T0, random.Random(2)), "bandwidth")
    last = deliver(v, cmd, 4 * MB, T0 + 20)
    v.tick(members, last + 1)
    assert [r.accepted for _, r in v.verdicts] == [True]
    assert v.level(members["a"]) is L.BENCHMARKED
    # The measurement lapses with its validity (6 h), and the level with it: no quorum holds it up.
    assert v.level(members["a"], last + 7 * 3_600_000) is L.SELF_REPORTED


def test_a_failed_bandwidth_check_takes_the_level_away() -> None:
    v, members = setup({"a": [egress(800)]})  # claims 100 MB/s, has 1 MB/s
    now = T0
    for _ in range(2):  # the first failure is re-checked, the second counts
        [cmd] = commands(v.start_round(list(members.values()), now, random.Random(now)), "bandwidth")
        ch = v.checks[next(iter(v.checks))].challenge
        deliver(v, cmd, 1 * MB, now + 20)
        v.tick(members, ch.deadline_ms + 1)
        now = ch.deadline_ms + 60_000
    assert v.level(members["a"]) is L.SELF_REPORTED
    assert v.covers(members["a"]) == ()


def test_a_claim_with_a_panel_workload_still_needs_the_quorum() -> None:
    ev = TrustEvidence()
    ev.record_proof(True, T0, "cpu")
    ev.record_proof(True, T0, "bandwidth")
    assert ev.level(T0, workloads=("bandwidth", "cpu")) is L.SELF_REPORTED  # no quorum: no peer rung
    assert ev.level(T0, workloads=("bandwidth",)) is L.BENCHMARKED
    ev.record_quorum(True, T0)
    assert ev.level(T0, workloads=("bandwidth", "cpu")) is L.BENCHMARKED
    assert cpu()  # the mixed claim a live node makes: its CPU check brings the panel
