"""Honest nodes pass at full size: challenges spread over the round and bounded, lateness judged on the
coordinator's clock only, withheld capacity and outages never counted against a node."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import ProofWork
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import proofs, topics
from prsm_edge.protocol.group import Member, Publish, Verification
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import NodeCommand, VerificationLevel, VerificationVote
from prsm_edge.protocol.verifier import Verifier, VerifierConfig, VerifierEffect
from tests.integration.groupkit import agent_options
from tests.unit.test_group import Node, group
from tests.unit.test_verifier import T0, Net, cpu, fund_and_stake, ledger_entries

L = VerificationLevel


def _challenged(effects: list[VerifierEffect]) -> list[str]:
    return [
        e.message.node
        for e in effects
        if isinstance(e, Publish) and isinstance(e.message, NodeCommand) and e.message.verb == "challenge"
    ]


def _verifier(members: int, **kw: object) -> tuple[Verifier, dict[str, Member]]:
    cfg = VerifierConfig(site="s", group="g", coordinator="coord", **kw)  # type: ignore[arg-type]
    v = Verifier(cfg, Ledger(), secret=bytes(32))
    ms = {
        f"n{i:03d}": Member(f"n{i:03d}", b"", 0, "rpi4", f"fp-{i}", cpu(), joined_ms=T0)
        for i in range(members)
    }
    v.opening_beacon(ms.values())
    return v, ms


def test_challenges_are_spread_over_the_round_not_sent_at_once() -> None:
    v, members = _verifier(200, round_ms=60_000, spread=0.6, max_open_checks=500)
    rng = random.Random(5)
    issued_at: dict[str, int] = {}
    effects = v.start_round(list(members.values()), T0, rng)
    for node in _challenged(effects):
        issued_at[node] = T0
    for ms in range(250, 60_000, 250):
        for node in _challenged(v.tick(members, T0 + ms, rng)):
            issued_at[node] = T0 + ms
    assert len(issued_at) == 200  # everyone new is checked this round …
    times = sorted(issued_at.values())
    assert times[-1] - times[0] >= 30_000  # … over most of the spread window, not in one instant
    per_second: dict[int, int] = {}
    for t in times:
        per_second[(t - T0) // 1000] = per_second.get((t - T0) // 1000, 0) + 1
    assert max(per_second.values()) <= 15  # ~5.6/s on average: no thundering herd


def test_open_checks_are_bounded() -> None:
    v, members = _verifier(60, round_ms=10_000, spread=0.0, max_open_checks=8)
    rng = random.Random(6)
    issued = _challenged(v.start_round(list(members.values()), T0, rng))
    assert len(issued) == 8 and len(v.checks) == 8
    issued += _challenged(v.tick(members, T0 + 100, rng))
    assert len(v.checks) <= 8  # nothing settled yet: nothing more goes out


def test_a_node_withholding_capacity_is_not_challenged_nor_counted() -> None:
    v, members = _verifier(6, spread=0.0)
    members["n000"].offering = False  # its owner's limits took the capacity back (heat, battery)
    members["n001"].throttle = "battery"
    issued = _challenged(v.start_round(list(members.values()), T0, random.Random(1)))
    assert "n000" not in issued and "n001" not in issued and "n002" in issued
    assert v.sampler.record_of("n000").failures == 0


async def test_withholding_mid_check_voids_it_rather_than_failing_it() -> None:
    net = Net([f"n{i}" for i in range(6)])
    fund_and_stake(net, "n0", T0 - 1)
    effects = net.v.observe_claims(list(net.members.values()), T0)
    effects += net.v.start_round(list(net.members.values()), T0, net.rng)
    assert "n0" in _challenged(effects)
    net.members["n0"].offering = False  # it got hot and stopped proving
    effects = net.v.tick(net.members, T0 + 60_000)
    assert not [e for e in ledger_entries(effects) if e.kind == "slash"]
    assert all(node != "n0" for node, _ in net.v.verdicts)
    assert net.v.sampler.record_of("n0").failures == 0


def test_an_outage_voids_open_checks_instead_of_failing_them() -> None:
    v, members = _verifier(6, spread=0.0)
    for node in ("n000", "n001"):
        v.deposit(node, 100 * m.MICRO, f"d{node}", T0)
        v.stake(members[node], 50 * m.MICRO, f"s{node}", T0)
    v.start_round(list(members.values()), T0, random.Random(2))
    assert v.checks
    assert v.void(T0 + 5_000, "broker outage") == 6
    effects = v.tick(members, T0 + 120_000)  # back long after every deadline
    assert not v.verdicts
    assert not [e for e in ledger_entries(effects) if e.kind == "slash"]
    assert v.ledger.stake("n000") == 50 * m.MICRO


async def test_a_panelists_clock_never_decides_lateness() -> None:
    rng = random.Random(3)
    issued = proofs.make_challenge(
        "coord", "subject", "cpu", 100_000.0, rng, T0, segments=16, opens=4, target_ms=100
    )
    ch = issued.challenge
    panelist = ProofWork("panelist")
    panelist.sit({"challenge": _wire(ch), "round": 1, "min_rate_ratio": 0.6})
    prover = ProofWork("subject")
    proof = await prover.challenge({"challenge": _wire(ch)}, lambda: T0)
    assert proof is not None
    # The panelist's own clock says the proof came a minute after the deadline (its clock is off, or
    # its queue was long): its vote still attests only the segments, which are right.
    late = ch.deadline_ms + 60_000
    assert await panelist.observe("subject", proof, late) is None
    opening = prover.open({"challenge_id": ch.challenge_id, "salt": issued.salt, "root": proof.root})
    assert opening is not None
    vote = await panelist.observe("subject", opening, late + 1)
    assert isinstance(vote, VerificationVote) and vote.accept


def _wire(ch: m.BenchmarkChallenge) -> dict[str, object]:
    data: dict[str, object] = msgspec.to_builtins(ch, builtin_types=(bytes,))
    return data


def test_a_proofs_arrival_is_stamped_on_receipt_and_its_signed_bytes_kept() -> None:
    g, n = group(), Node(5)
    g.receive(*n.birth(T0), T0)
    proof = m.BenchmarkProof(challenge_id="c1", node=n.id, root=bytes(32), elapsed_ms=5)
    payload = n.signer.seal(proof, T0 + 10)
    (effect,) = g.receive(n.topic(topics.Kind.NODE_PROOF), payload, T0 + 17)
    assert isinstance(effect, Verification)
    assert effect.at_ms == T0 + 17 and effect.raw == payload


def test_a_node_with_a_wrong_clock_is_told_once_not_looped() -> None:
    g, n = group(), Node(6)
    skew = 10 * 60_000  # ten minutes off: outside the two-minute replay window
    effects = g.receive(*n.birth(T0 - skew), T0)
    cmds = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, NodeCommand)]
    assert [c.verb for c in cmds] == ["clock"]
    assert "window" in cmds[0].args["detail"]
    again = g.receive(*n.birth(T0 - skew + 1_000), T0 + 1_000)
    assert not [e for e in again if isinstance(e, Publish)]  # told at most once a minute


async def test_the_agent_says_what_to_fix_and_stops_rebirthing(tmp_path: Path) -> None:
    agent = Agent(agent_options("mqtt://127.0.0.1:1", tmp_path / "a"))
    births: list[int] = []
    agent._birth = lambda: births.append(1)  # type: ignore[method-assign]
    await agent._command(
        NodeCommand(
            verb="clock", node=agent.node_id, args={"detail": "600000 ms from now", "window_ms": "120000"}
        )
    )
    assert "timedatectl set-ntp true" in agent.clock_problem
    await agent._command(NodeCommand(verb="rebirth", node=agent.node_id, args={"why": "not a member"}))
    assert births == []
    for task in list(agent._tasks):
        task.cancel()


def test_a_nodes_workloads_are_challenged_one_at_a_time() -> None:
    """A prover keeps one table at a time: two table challenges at once would cost an honest node its
    opening (and a fraud slash), so each node has one open check and its workloads follow in turn."""
    v, members = _verifier(6, spread=0.0)
    table = {proofs.RATE_KEYS["memory"]: 50e6}
    for member in members.values():
        member.resources = [
            *cpu(),
            m.ResourceSpec(type=m.ResourceType.STORAGE_MEMORY, capacity=0.01, unit="GB", details=table),
        ]
    rng = random.Random(4)
    first = v.start_round(list(members.values()), T0, rng)
    assert sorted(_challenged(first)) == sorted(members)  # one challenge each, not two
    assert sorted(c.challenge.workload for c in v.checks.values()) == ["cpu"] * 6
    assert _challenged(v.tick(members, T0 + 100, rng)) == []  # the second waits for the first
    later = v.tick(members, T0 + 600_000, rng)  # the cpu checks settle (unanswered here) …
    assert sorted(_challenged(later)) == sorted(members)  # … and only then the memory ones go out
    assert sorted(c.challenge.workload for c in v.checks.values()) == ["memory"] * 6
