"""A broker restart under a connected group must not make an honest member look like a replayer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.errors import Reason
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import topics as t
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, eventually, running

pytestmark = pytest.mark.integration


async def test_broker_restart_rejects_no_honest_message(mosquitto: Mosquitto, tmp_path: Path) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord")
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a"))
    async with running(coord, agent):
        await eventually(lambda: coord.group.online_count == 1)
        birth_topic = t.node(t.Kind.NODE_BIRTH, SITE, GROUP, agent.node_id)
        old_birth = await _retained(mosquitto, birth_topic)
        await asyncio.to_thread(mosquitto.restart)
        await eventually(lambda: coord.session.connections >= 2, timeout=20, what="coordinator back")
        await eventually(lambda: agent.session.connections >= 2, timeout=20, what="agent back")
        before = coord.group.accepted["heartbeat"]
        await eventually(lambda: coord.group.accepted["heartbeat"] > before + 1, timeout=20)
        # The broker handed the coordinator its retained copies again on re-subscription: no refusal.
        assert coord.group.rejected[Reason.REPLAY] == 0, dict(coord.group.rejected)
        assert coord.group.accepted["retained_again"] >= 1
        # Replay protection holds: once the member has moved on, its old birth published again is refused.
        await eventually(lambda: agent.births >= 2, timeout=20, what="the agent's rebirth")
        await eventually(lambda: coord.group.members[agent.node_id].bdseq == agent.bdseq, timeout=20)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="replayer") as c:
            await c.publish(birth_topic, old_birth, qos=1)
        await eventually(lambda: coord.group.rejected[Reason.REPLAY] == 1, what="the old birth refused")
        assert coord.group.members[agent.node_id].bdseq == agent.bdseq


async def _retained(broker: Mosquitto, topic: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="reader") as c:
        await c.subscribe(topic)
        async with asyncio.timeout(5):
            async for message in c.messages:
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError(f"nothing retained on {topic}")
