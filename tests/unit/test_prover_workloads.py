"""The node's side of the workloads: the agent's calibration fills the rate keys that ``claims`` reads,
the prover runs storage tables on disk and cleans them up, and keeps at most one table for opening."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from prsm_edge.node.agent import Agent, AgentOptions
from prsm_edge.node.prover import ProofWork
from prsm_edge.protocol import proofs
from prsm_edge.protocol.messages import BenchmarkProof, ProofOpening, ResourceSpec, ResourceType

NOW = 1_700_000_000_000


def offer() -> list[ResourceSpec]:
    return [
        ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=2, unit="cores"),
        ResourceSpec(type=ResourceType.STORAGE_MEMORY, capacity=1, unit="GB"),
        ResourceSpec(type=ResourceType.STORAGE_PERSISTENT, capacity=10, unit="GB"),
        ResourceSpec(type=ResourceType.COMPUTE_GPU, capacity=1, unit="gpus"),
    ]


async def test_calibration_fills_every_rate_key_claims_reads(tmp_path: Path) -> None:
    agent = Agent(
        AgentOptions(
            site="s", group="g", broker_url="mqtt://127.0.0.1:1", workdir=tmp_path, resources=offer()
        )
    )
    assert proofs.claims(agent.resources) == {}  # nothing claimed before calibration: nothing to check
    await agent._calibrate()
    got = proofs.claims(agent.resources)
    assert set(got) == {"cpu", "memory", "storage"}  # no GPU workload without a CUDA runtime
    assert got["cpu"].lanes == 2 and got["cpu"].rate > 0
    assert got["memory"].capacity_bytes == 1_000_000_000 and got["storage"].capacity_bytes == 10_000_000_000
    assert not list((tmp_path / "proofs").glob("proof-table-*"))  # calibration tables are removed
    # A second agent in the same process reuses the machine's measurement (the demo runs hundreds).
    twin = Agent(
        AgentOptions(
            site="s", group="g", broker_url="mqtt://127.0.0.1:1", workdir=tmp_path / "t", resources=offer()
        )
    )
    await twin._calibrate()
    assert proofs.claimed_rates(twin.resources) == proofs.claimed_rates(agent.resources)
    # A later change of offer keeps the measured rates (the owner's settings changed, not the machine).
    agent.update_resources(offer()[:1])
    assert set(proofs.claims(agent.resources)) == {"cpu"}
    # Given rates are used as they are, and nothing is measured.
    fixed = Agent(
        AgentOptions(
            site="s",
            group="g",
            broker_url="mqtt://127.0.0.1:1",
            workdir=tmp_path / "b",
            resources=offer(),
            cpu_rate=1e6,
            rates={"memory": 5e7},
        )
    )
    await fixed._calibrate()
    assert proofs.claimed_rates(fixed.resources) == {"cpu": 2e6, "memory": 5e7}


async def test_storage_tables_live_on_disk_until_opened(tmp_path: Path) -> None:
    work = ProofWork("nP", workdir=tmp_path)
    rng = random.Random(3)
    issued = [
        proofs.make_challenge("nV", "nP", "storage", 1e8, rng, NOW, capacity_bytes=128 * 1024, target_ms=10)
        for _ in range(2)
    ]
    proofs_made: list[BenchmarkProof] = []
    for ch, _ in issued:
        proof = await work.challenge(
            {"challenge": msgspec.to_builtins(ch, builtin_types=(bytes,))}, lambda: NOW
        )
        assert isinstance(proof, BenchmarkProof)
        proofs_made.append(proof)
    # Only the latest table is kept (each is the size of its challenge); the first file is gone.
    files = list((tmp_path / "proofs").glob("proof-table-*"))
    assert [f.name for f in files] == [f"proof-table-{issued[1][0].challenge_id}.bin"]
    assert files[0].stat().st_size == 128 * 1024
    ch, salt = issued[1]
    opening = work.open({"challenge_id": ch.challenge_id, "salt": salt, "root": proofs_made[1].root})
    assert isinstance(opening, ProofOpening)
    assert proofs.check(ch, proofs_made[1], opening, NOW + 5).accepted
    assert not files[0].exists()  # opened once, then removed
    assert work.open({"challenge_id": issued[0][0].challenge_id, "salt": issued[0][1], "root": b""}) is None


async def test_a_memory_and_a_storage_challenge_at_once_both_open(tmp_path: Path) -> None:
    """The verifier issues every workload of a claim together: keeping one table in all lost the other."""
    work = ProofWork("nP", workdir=tmp_path)
    rng = random.Random(4)
    issued = [
        proofs.make_challenge("nV", "nP", w, 1e8, rng, NOW, capacity_bytes=64 * 1024, target_ms=10)
        for w in ("memory", "storage")
    ]
    made = [
        await work.challenge({"challenge": msgspec.to_builtins(ch, builtin_types=(bytes,))}, lambda: NOW)
        for ch, _ in issued
    ]
    for (ch, salt), proof in zip(issued, made, strict=True):
        assert isinstance(proof, BenchmarkProof)
        opening = work.open({"challenge_id": ch.challenge_id, "salt": salt, "root": proof.root})
        assert isinstance(opening, ProofOpening), ch.workload
        assert proofs.check(ch, proof, opening, NOW + 5).accepted
