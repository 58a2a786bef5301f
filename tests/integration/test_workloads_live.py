"""Every claimed resource checked on a real broker: agents offering CPU cores, memory and storage are
challenged with each workload (lanes, a table in memory, a table on disk), honest ones are benchmarked
on all three, and a node that junk-fills its memory table is caught on that workload."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import prove_lanes
from prsm_edge.protocol import proofs
from prsm_edge.protocol.messages import BenchmarkChallenge, ResourceSpec, ResourceType, VerificationLevel
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running

pytestmark = pytest.mark.integration


def offer() -> list[ResourceSpec]:
    return [
        ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=2, unit="cores"),
        ResourceSpec(type=ResourceType.STORAGE_MEMORY, capacity=1, unit="GB"),
        ResourceSpec(type=ResourceType.STORAGE_PERSISTENT, capacity=10, unit="GB"),
    ]


# Small rates, so each check is a few hundred KiB of table and a few thousand PBKDF2 iterations.
RATES = {"memory": 4e6, "storage": 4e6}


def junk_memory(ch: BenchmarkChallenge) -> tuple[bytes, Sequence[bytes]]:
    """Honest on CPU and storage; on memory it keeps half the table and writes junk for the rest."""
    if ch.workload != "memory":
        return prove_lanes(ch) if ch.workload == "cpu" else proofs.prove(ch)
    rng = random.Random(ch.nonce)
    lines: list[bytes] = []
    for i in range(ch.segments):
        if i and rng.random() < 0.5:
            lines.append(rng.randbytes(proofs.LINE_BYTES))
        elif i == 0:
            lines.append(proofs.table_line(ch.nonce, 0))
        else:
            prev = lines[i - 1]
            lines.append(proofs.table_line(ch.nonce, i, prev, lines[proofs.dep_index(i, prev)]))
    done = proofs.Committed(lines)
    return done.root, done


async def test_every_claimed_resource_is_checked(tmp_path: Path) -> None:
    require_mosquitto()
    async with host_group(
        tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
    ) as host:
        coord = host.coordinator
        url = host.broker.url

        def agent(name: str, **kw: object) -> Agent:
            return Agent(
                agent_options(url, tmp_path / name, resources=offer(), cpu_rate=20_000.0, rates=RATES, **kw)
            )

        honest = [agent(f"h{i}") for i in range(4)]
        cheat = agent("cheat", prover=junk_memory)
        g = coord.group
        async with running(coord, *honest, cheat):
            await eventually(lambda: g.online_count == 5, timeout=15, what="all joined")
            for a in honest:
                assert proofs.claims(a.resources).keys() == {"cpu", "memory", "storage"}

            def covered(a: Agent) -> tuple[str, ...]:
                member = g.members.get(a.node_id)
                return () if member is None else coord.verifier.covers(member)

            await eventually(
                lambda: all(set(covered(a)) == {"cpu", "memory", "storage"} for a in honest),
                timeout=60,
                what="honest nodes benchmarked on cpu, memory and storage",
            )
            assert all(g.level(a.node_id) is VerificationLevel.BENCHMARKED for a in honest)
            await eventually(
                lambda: any(n == cheat.node_id and not v.accepted for n, v in coord.verifier.verdicts),
                timeout=60,
                what="the junk-filler caught",
            )
            failed = [v for n, v in coord.verifier.verdicts if n == cheat.node_id and not v.accepted]
            assert {v.reason for v in failed} <= {proofs.VerdictReason.WRONG_RESULT}
            assert "memory" not in covered(cheat)
            assert all(v.accepted for n, v in coord.verifier.verdicts if n in {a.node_id for a in honest})
