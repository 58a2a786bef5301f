"""Bandwidth checked through a real Mosquitto: agents that claim egress bandwidth move a challenge's
chunks through the broker to the coordinator, which measures them on its own clock. An honest agent is
covered for bandwidth; one whose link carries a fifth of its claim is not, and stays below
``benchmarked``. Chunks that no open check asked for are dropped unread."""

from __future__ import annotations

from pathlib import Path

import pytest

from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import proofs, topics
from prsm_edge.protocol.messages import ResourceSpec, ResourceType, VerificationLevel
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running

pytestmark = pytest.mark.integration

MBIT = 8.0  # a small claim: 1 MB/s, so each check moves 2 MB in 2 s


def offer() -> list[ResourceSpec]:
    return [
        ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=1, unit="cores"),
        ResourceSpec(type=ResourceType.BANDWIDTH_EGRESS, capacity=MBIT, unit="Mbit/s"),
    ]


async def test_bandwidth_claims_are_measured_through_the_broker(tmp_path: Path) -> None:
    require_mosquitto()
    async with host_group(
        tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
    ) as host:
        coord = host.coordinator
        url = host.broker.url

        def agent(name: str) -> Agent:
            return Agent(agent_options(url, tmp_path / name, resources=offer(), cpu_rate=20_000.0))

        honest = [agent("h0"), agent("h1")]
        slow = agent("slow")
        slow.work.pace = 0.2  # its link carries a fifth of what it claims
        g = coord.group
        async with running(coord, *honest, slow):
            await eventually(lambda: g.online_count == 3, timeout=15, what="all joined")
            assert proofs.claims(slow.resources).keys() == {"cpu", "bandwidth"}

            def covered(a: Agent) -> tuple[str, ...]:
                member = g.members.get(a.node_id)
                return () if member is None else coord.verifier.covers(member)

            await eventually(
                lambda: all(set(covered(a)) == {"cpu", "bandwidth"} for a in honest),
                timeout=60,
                what="honest nodes covered for cpu and bandwidth",
            )
            assert all(g.level(a.node_id) is VerificationLevel.BENCHMARKED for a in honest)
            assert all(a.work.chunks_sent > 0 for a in honest)
            await eventually(
                lambda: any(n == slow.node_id and not v.accepted for n, v in coord.verifier.verdicts),
                timeout=60,
                what="the overclaimer's bandwidth check failed",
            )
            failed = [v for n, v in coord.verifier.verdicts if n == slow.node_id and not v.accepted]
            assert {v.reason for v in failed} <= {proofs.VerdictReason.LATE, proofs.VerdictReason.SLOW}
            # It moved well under its claim (a 2 s transfer at a fifth of the rate).
            assert all(v.measured_rate < 0.5 * MBIT * 125_000 for v in failed)
            assert "bandwidth" not in covered(slow)
            assert g.level(slow.node_id) is not VerificationLevel.BENCHMARKED

            # A member flooding its bandwidth topic beyond what any open check asked for is dropped
            # before decoding (an open check admits at most its own ~2 MB of the 12 MB).
            desk = coord.verifier.bandwidth
            before = desk.dropped
            topic = topics.node(topics.Kind.NODE_BANDWIDTH, SITE, GROUP, honest[0].node_id)
            for _ in range(300):
                assert await honest[0].session.publish(topic, b"\x00" * 40_000)
            await eventually(lambda: desk.dropped >= before + 200, timeout=20, what="flood dropped unread")
