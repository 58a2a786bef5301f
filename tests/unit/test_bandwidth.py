"""Bandwidth checks, sans-IO: the coordinator's challenge, the node's chunks and the settling, with
arrival times passed in (no sockets, no clocks)."""

from __future__ import annotations

import asyncio
import random

from prsm_edge.node.prover import ProofWork
from prsm_edge.protocol import bandwidth, proofs
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import (
    BandwidthChunk,
    NodeCommand,
    ResourceSpec,
    ResourceType,
    VerificationLevel,
)
from prsm_edge.protocol.verifier import Verifier, VerifierConfig, VerifierEffect, claimed_rates
from tests.unit.test_verifier import RATE, T0
from tests.unit.test_verifier import cpu as cpu_offer

MB = 1_000_000


def egress(mbit: float) -> ResourceSpec:
    return ResourceSpec(type=ResourceType.BANDWIDTH_EGRESS, capacity=mbit, unit="Mbit/s")


def setup(offers: dict[str, list[ResourceSpec]]) -> tuple[Verifier, dict[str, Member]]:
    cfg = VerifierConfig(site="s", group="g", coordinator="coord", spread=0.0, panel=0)
    v = Verifier(cfg, Ledger(), secret=bytes(32))
    members = {
        n: Member(n, b"", 0, "rpi4", f"fp-{n}", resources, joined_ms=T0) for n, resources in offers.items()
    }
    v.opening_beacon(members.values())
    return v, members


def commands(effects: list[VerifierEffect], verb: str) -> list[NodeCommand]:
    return [
        e.message
        for e in effects
        if isinstance(e, Publish) and isinstance(e.message, NodeCommand) and e.message.verb == verb
    ]


def deliver(
    v: Verifier, cmd: NodeCommand, rate: float, start: int, chunks: list[BandwidthChunk] | None = None
) -> int:
    """Feed the node's chunks to the verifier as a link of ``rate`` bytes/s delivers them; the last time."""
    sent = chunks if chunks is not None else list(ProofWork(cmd.node).bandwidth(cmd.args))
    t = start
    for chunk in sent:
        t += max(1, round(len(chunk.data) * 1000 / rate))
        v.on_chunk(chunk, t)
    return t


def test_an_honest_claim_is_measured_by_the_coordinator_alone_and_covered() -> None:
    v, members = setup({"a": [egress(80)]})  # 10 MB/s claimed: more than one check confirms
    effects = v.start_round(list(members.values()), T0, random.Random(1))
    [cmd] = commands(effects, "bandwidth")
    assert not commands(effects, "verify") and not commands(effects, "challenge")  # no panel, no proof
    ch = v.checks[next(iter(v.checks))].challenge
    assert ch.workload == "bandwidth" and ch.node == "a"
    assert ch.segment_size <= proofs.MAX_CHUNK
    assert proofs.total_work(ch) <= proofs.PARAMS["bandwidth"].max_bytes  # bounded per check
    # A claim above what one check can carry is checked at the cap (max_bytes in target_ms), not failed.
    assert ch.claimed_rate == proofs.total_work(ch) * 1000 / proofs.PARAMS["bandwidth"].target_ms
    last = deliver(v, cmd, 10 * MB, T0 + 20)
    v.tick(members, last + 1)
    [(node, verdict)] = list(v.verdicts)
    assert node == "a" and verdict.accepted, verdict
    assert verdict.measured_rate >= proofs.PARAMS["bandwidth"].min_rate_ratio * ch.claimed_rate
    # Covered; the level also needs a panel's quorum below it, which a CPU check brings (the live test).
    assert v.covers(members["a"]) == ("bandwidth",)


def test_a_node_with_a_hundredth_of_its_claim_fails_and_is_not_covered() -> None:
    v, members = setup({"a": [egress(800)]})  # claims 100 MB/s, has 1 MB/s
    now = T0
    for _ in range(2):  # the first failure is contained (checked again), the second counts
        effects = v.start_round(list(members.values()), now, random.Random(now))
        [cmd] = commands(effects, "bandwidth")
        ch = v.checks[next(iter(v.checks))].challenge
        deliver(v, cmd, 1 * MB, now + 20)
        v.tick(members, ch.deadline_ms + 1)
        now = ch.deadline_ms + 60_000
        v.tick(members, now)
    failed = [verdict for _, verdict in v.verdicts]
    assert len(failed) == 2 and not any(f.accepted for f in failed)
    assert {f.reason for f in failed} <= {proofs.VerdictReason.LATE, proofs.VerdictReason.SLOW}
    assert v.contained == 1 and v.sampler.record_of("a").failures == 1
    assert v.covers(members["a"]) == ()
    assert v.level(members["a"]) is VerificationLevel.SELF_REPORTED


def test_a_slow_but_complete_transfer_fails_on_rate() -> None:
    v, members = setup({"a": [egress(16)]})  # 2 MB/s claimed
    [cmd] = commands(v.start_round(list(members.values()), T0, random.Random(2)), "bandwidth")
    ch = v.checks[next(iter(v.checks))].challenge
    # Everything arrives before the deadline, but at 70 % of the claim: below min_rate_ratio.
    rate = 0.7 * ch.claimed_rate
    last = deliver(v, cmd, rate, T0)
    assert last <= ch.deadline_ms
    v.tick(members, last + 1)
    [(_, verdict)] = list(v.verdicts)
    assert verdict.reason is proofs.VerdictReason.SLOW


def test_chunks_replayed_from_another_challenge_are_fraud() -> None:
    v, members = setup({"a": [egress(16)], "b": [egress(16)]})
    effects = v.start_round(list(members.values()), T0, random.Random(3))
    cmds = {c.node: c for c in commands(effects, "bandwidth")}
    assert set(cmds) == {"a", "b"}  # two at once: 4 MB/s together, within MAX_RATE
    cid = {c.challenge.node: cid for cid, c in v.checks.items()}
    # "a" sends "b"'s payload (what it might have seen, or precomputed for another nonce) as its own.
    theirs = list(ProofWork("b").bandwidth(cmds["b"].args))
    forged = [BandwidthChunk(challenge_id=cid["a"], node="a", index=c.index, data=c.data) for c in theirs]
    last = deliver(v, cmds["a"], 10 * MB, T0, forged)
    deliver(v, cmds["b"], 10 * MB, T0)
    v.tick(members, last + 1)
    verdicts = dict(v.verdicts)
    assert verdicts["b"].accepted
    assert verdicts["a"].reason is proofs.VerdictReason.WRONG_RESULT
    assert v.contained == 0  # fraud is not a busy moment: it counts at once
    assert v.sampler.record_of("a").failures == 1


def test_concurrent_bandwidth_checks_are_bounded_and_wait_their_turn() -> None:
    offers = {f"n{i}": [egress(80)] for i in range(6)}  # each checked at the 2 MiB/s cap
    v, members = setup(offers)
    rng = random.Random(4)
    effects = v.start_round(list(members.values()), T0, rng)
    first = commands(effects, "bandwidth")
    assert len(first) == 2 == len(v.bandwidth)  # 4 MiB/s of checks at once, the broker's share
    assert v.bandwidth.rate <= bandwidth.MAX_RATE
    assert not commands(v.tick(members, T0 + 100, rng), "bandwidth")  # still full: the rest wait
    for cmd in first:
        deliver(v, cmd, 10 * MB, T0 + 100)
    now = T0 + 5_000
    later = commands(v.tick(members, now, rng), "bandwidth")
    assert len(later) == 2  # the first two settled, the next two started
    assert {c.node for c in later}.isdisjoint({c.node for c in first})
    assert sum(v.accepted for _, v in v.verdicts) == 2


def test_small_claims_share_the_budget_up_to_a_count() -> None:
    v, members = setup({f"n{i:02d}": [egress(1)] for i in range(40)})  # 125 kB/s each
    first = commands(v.start_round(list(members.values()), T0, random.Random(10)), "bandwidth")
    assert len(first) == bandwidth.MAX_OPEN  # the message rate is bounded too, not only the bytes
    assert v.bandwidth.rate <= bandwidth.MAX_RATE
    desk = bandwidth.BandwidthDesk()
    rng = random.Random(11)
    for i in range(3):  # 3 MB/s, then 6, then 9 would pass the 8.39 MB/s budget: refused
        issued = desk.issue("coord", f"m{i}", [egress(24)], rng, T0)
        assert (issued is None) == (i == 2)


def test_bandwidth_goes_after_the_other_workloads() -> None:
    v, members = setup({"a": [*cpu_offer(RATE), egress(16)]})
    effects = v.start_round(list(members.values()), T0, random.Random(5))
    assert [c.verb for c in commands(effects, "challenge")] == ["challenge"]
    assert not commands(effects, "bandwidth")
    assert sorted(claimed_rates(members["a"].resources)) == ["bandwidth", "cpu"]  # both to be benchmarked


def test_the_desk_admits_chunks_only_for_an_open_check_and_within_its_bytes() -> None:
    desk = bandwidth.BandwidthDesk()
    assert not desk.admits("a", 1000) and desk.dropped == 1  # no check open: dropped unread
    issued = desk.issue("coord", "a", [egress(16)], random.Random(6), T0)
    assert issued is not None
    ch = issued.challenge
    assert desk.issue("coord", "a", [egress(16)], random.Random(7), T0) is None  # one per node
    assert desk.issue("coord", "x", [cpu_offer(RATE)[0]], random.Random(7), T0) is None  # no claim
    size = ch.segment_size + 200
    admitted = 0
    while desk.admits("a", size):
        admitted += 1
        assert admitted <= 2 * ch.segments
    assert ch.segments <= admitted < 2 * ch.segments  # the check's chunks, and not much more
    assert not desk.admits("b", size)
    desk.clear()
    assert not desk.admits("a", 10) and len(desk) == 0


def test_a_void_forgets_open_bandwidth_checks() -> None:
    v, members = setup({"a": [egress(16)]})
    [cmd] = commands(v.start_round(list(members.values()), T0, random.Random(8)), "bandwidth")
    v.void(T0 + 10, "the coordinator lost its broker connection")
    assert len(v.bandwidth) == 0 and not v.checks
    deliver(v, cmd, 10 * MB, T0 + 20)  # chunks of the voided check change nothing
    v.tick(members, T0 + 10_000)
    assert not v.verdicts and v.sampler.record_of("a").failures == 0


def test_the_node_sends_every_chunk_and_stops_when_the_link_does() -> None:
    v, members = setup({"a": [egress(800)]})
    [cmd] = commands(v.start_round(list(members.values()), T0, random.Random(9)), "bandwidth")
    ch = v.checks[next(iter(v.checks))].challenge
    work = ProofWork("a")
    got: list[BandwidthChunk] = []

    async def send(chunk: BandwidthChunk) -> bool:
        got.append(chunk)
        return True

    asyncio.run(work.send_bandwidth(cmd.args, send))
    assert [c.index for c in got] == list(range(ch.segments)) and work.chunks_sent == ch.segments
    assert all(c.data == proofs.bandwidth_chunk(ch.nonce, c.index, ch.segment_size) for c in got)

    async def broken(chunk: BandwidthChunk) -> bool:
        return chunk.index < 3  # disconnected after three

    work = ProofWork("a")
    asyncio.run(work.send_bandwidth(cmd.args, broken))
    assert work.chunks_sent == 3
    other = ProofWork("b")  # a challenge for another node is not answered
    asyncio.run(other.send_bandwidth(cmd.args, send))
    assert other.chunks_sent == 0
