"""How the verifier issues the workloads of a claim: one at a time (proven together they share the node's
cores, and an honest node fails), with lanes and capacity from the claim, and co-located identities
(one hardware fingerprint) challenged at the same moment."""

from __future__ import annotations

import random

import msgspec

from prsm_edge.protocol import proofs
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import BenchmarkChallenge, NodeCommand, ResourceSpec, ResourceType
from prsm_edge.protocol.verifier import Verifier, VerifierConfig, VerifierEffect

T0 = 1_700_000_000_000


def offer() -> list[ResourceSpec]:
    keys = proofs.RATE_KEYS
    return [
        ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=4, unit="cores", details={keys["cpu"]: 1000}),
        ResourceSpec(
            type=ResourceType.STORAGE_MEMORY, capacity=1, unit="GB", details={keys["memory"]: 100_000}
        ),
    ]


def member(node: str, fingerprint: str) -> Member:
    return Member(node, b"", 0, "rpi4", fingerprint, offer(), joined_ms=T0)


def challenges(effects: list[VerifierEffect]) -> list[BenchmarkChallenge]:
    return [
        msgspec.convert(e.message.args["challenge"], BenchmarkChallenge)
        for e in effects
        if isinstance(e, Publish) and isinstance(e.message, NodeCommand) and e.message.verb == "challenge"
    ]


def run(members: list[Member], until: int, step: int = 500) -> list[BenchmarkChallenge]:
    rng = random.Random(1)
    v = Verifier(VerifierConfig(site="s", group="g", coordinator="c", spread=0.0), Ledger(), secret=bytes(32))
    v.opening_beacon(members)
    by = {m.node: m for m in members}
    got = challenges(v.start_round(members, T0, rng))
    for now in range(T0 + step, T0 + until, step):
        got += challenges(v.tick(by, now, rng))
    return got


def test_the_workloads_of_a_claim_are_issued_one_after_another() -> None:
    got = run([member("n1", "fp-1"), *(member(f"p{i}", f"fp-p{i}") for i in range(5))], until=120_000)
    mine = [c for c in got if c.node == "n1"]
    assert [c.workload for c in mine] == ["cpu", "memory"]
    cpu, memory = mine
    assert cpu.lanes == 4 and cpu.claimed_rate == 4_000  # per-core rate x claimed cores, one lane a core
    assert memory.issued_ms >= cpu.deadline_ms  # not before the cpu proof is due


def test_identities_on_one_device_are_challenged_together() -> None:
    members = [member(f"s{i}", "same-device") for i in range(3)] + [
        member(f"h{i}", f"fp-{i}") for i in range(6)
    ]
    rng = random.Random(3)
    v = Verifier(VerifierConfig(site="s", group="g", coordinator="c"), Ledger(), secret=bytes(32))
    v.opening_beacon(members)
    by = {m.node: m for m in members}
    got = challenges(v.start_round(members, T0, rng))
    for now in range(T0 + 1_000, T0 + 300_000, 1_000):
        got += challenges(v.tick(by, now, rng))
    first = {c.node: c.issued_ms for c in got if c.workload == "cpu"}
    assert len({first[f"s{i}"] for i in range(3)}) == 1  # the same moment
    assert len({first[f"h{i}"] for i in range(6)}) > 1  # the others are spread over the round
