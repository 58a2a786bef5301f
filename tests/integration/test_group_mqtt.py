"""A local group on a real Mosquitto: join, heartbeats, Will, leave, rebirth, restarts, hostile input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest
from nacl.signing import SigningKey

from prsm_edge.errors import Reason
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from tests.conftest import Mosquitto
from tests.integration.groupkit import (
    GROUP,
    SITE,
    agent_options,
    capacities,
    coordinator,
    cpu,
    eventually,
    running,
)

pytestmark = pytest.mark.integration


async def test_agents_join_heartbeat_and_leave_gracefully(mosquitto: Mosquitto, tmp_path: Path) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord")
    agents = [Agent(agent_options(mosquitto.url, tmp_path / f"a{i}")) for i in range(3)]
    async with running(coord, *agents) as tasks:
        await eventually(lambda: coord.group.online_count == 3, what="three members online")
        g = coord.group
        for a in agents:
            member = g.members[a.node_id]
            assert g.level(a.node_id) is m.VerificationLevel.SELF_REPORTED
            assert capacities(member.resources) == {"compute_cpu": 2.0}
        await eventually(lambda: g.accepted["heartbeat"] >= 6, what="heartbeats arrive")
        assert g.summary().capacity == {"compute_cpu": 6.0}
        # Graceful leave: offline is published at once, not after the keepalive.
        tasks[1].cancel()
        await eventually(lambda: not g.members[agents[0].node_id].online, timeout=2, what="leave seen")
        assert g.online_count == 2
    assert sum(g.rejected.values()) == 0


async def test_crashed_agent_is_marked_offline_by_its_last_will(mosquitto: Mosquitto, tmp_path: Path) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord", heartbeat_timeout_s=60)
    script = (
        "import asyncio, sys; from pathlib import Path;"
        "from tests.integration.groupkit import agent_options;"
        "from prsm_edge.node.agent import Agent;"
        f"a = Agent(agent_options({mosquitto.url!r}, Path({str(tmp_path / 'crash')!r}), keepalive_s=1));"
        "print(a.node_id, flush=True); asyncio.run(a.run())"
    )
    async with running(coord):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            node = proc.stdout.readline().strip()
            await eventually(lambda: node in coord.group.members and coord.group.members[node].online)
            proc.kill()  # no goodbye: only the broker's Will can tell
            loop = asyncio.get_running_loop()
            start = loop.time()
            await eventually(lambda: not coord.group.members[node].online, timeout=5, what="Will delivered")
            # Keepalive 1 s: the broker gives up after 1.5 keepalives (plus TCP reset is usually instant).
            assert loop.time() - start < 3
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def test_sequence_gap_triggers_rebirth(mosquitto: Mosquitto, tmp_path: Path) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord")
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a"))
    async with running(coord, agent):
        await eventually(lambda: agent.node_id in coord.group.members and agent.births == 1)
        await eventually(lambda: coord.group.accepted["heartbeat"] >= 1)
        agent.signer.seal(m.Heartbeat(node=agent.node_id, cpu_util=0, mem_util=0), 0)  # a lost message
        await eventually(lambda: agent.births == 2, what="rebirth after the gap")


async def test_coordinator_restart_keeps_the_roster(mosquitto: Mosquitto, tmp_path: Path) -> None:
    agents = [Agent(agent_options(mosquitto.url, tmp_path / f"a{i}")) for i in range(2)]
    first = coordinator(mosquitto.url, tmp_path / "coord")
    async with running(*agents):
        async with running(first):
            await eventually(lambda: first.group.online_count == 2)
        second = coordinator(mosquitto.url, tmp_path / "coord")
        assert second.epoch == first.epoch + 1
        assert set(second.group.members) == {a.node_id for a in agents}  # restored from SQLite
        async with running(second):
            # The agents see the new epoch and re-announce themselves.
            await eventually(lambda: second.group.online_count == 2, what="members back online")
            assert all(a.births == 2 for a in agents)


async def test_broker_restart_loses_no_queued_claim(mosquitto: Mosquitto, tmp_path: Path) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord")
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a"))
    async with running(coord, agent):
        await eventually(lambda: coord.group.online_count == 1)
        mosquitto.stop()
        await eventually(lambda: not agent.session.connected.is_set(), what="agent sees the broker go")
        for cores in (1.0, 1.5, 2.5):
            agent.update_resources(cpu(cores), reason="owner changed settings")
        # Held on disk while the broker is away (with whatever else the agent had to say meanwhile: a
        # proof or vote of a check under way may be queued too).
        assert [i.topic.rsplit("/", 1)[-1] for i in agent.outbox.peek()].count("claim") == 3
        await asyncio.to_thread(mosquitto.restart)
        await eventually(lambda: coord.group.accepted["claim"] == 3, timeout=20, what="all claims delivered")
        assert capacities(coord.group.members[agent.node_id].resources) == {"compute_cpu": 2.5}
        await eventually(lambda: len(agent.outbox) == 0, what="the outbox drained")


async def test_hostile_messages_are_rejected_and_counted_while_the_group_works(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord")
    honest = Agent(agent_options(mosquitto.url, tmp_path / "a"))
    mallory = Signer(SigningKey(b"\x66" * 32))
    async with running(coord, honest):
        await eventually(lambda: coord.group.online_count == 1)
        hb_topic = t.node(t.Kind.NODE_TELEMETRY, SITE, GROUP, honest.node_id)
        forged = mallory.seal(m.Heartbeat(node=honest.node_id, cpu_util=1, mem_util=1), _now())
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="mallory") as c:
            await c.publish(hb_topic, forged, qos=1)  # someone else's key on honest's topic
            await c.publish(hb_topic, b"\x00" * 70_000, qos=1)  # oversized: dropped before decoding
            await c.publish(hb_topic, b"\xd2\x84garbage", qos=1)  # malformed
        # Replay: capture one of honest's real heartbeats and send it again.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="replayer") as c:
            await c.subscribe(hb_topic)
            captured = None
            async with asyncio.timeout(5):
                async for message in c.messages:
                    captured = bytes(message.payload)  # type: ignore[arg-type]
                    break
            assert captured is not None
            await c.publish(hb_topic, captured, qos=1)
        g = coord.group
        await eventually(
            lambda: (
                g.rejected[Reason.WRONG_TOPIC_OWNER] == 1
                and g.rejected[Reason.MALFORMED] == 1
                and g.rejected[Reason.REPLAY] == 1
            ),
            what="rejections counted",
        )
        assert coord.session.oversized == 1
        before = g.accepted["heartbeat"]
        await eventually(lambda: g.accepted["heartbeat"] > before + 2, what="group keeps working")
        assert g.members[honest.node_id].online


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000


async def test_settings_push_holds_capacity_back_but_never_raises_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord")
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a"))  # the owner offers 2 cores
    async with running(coord, agent):
        await eventually(lambda: coord.group.online_count == 1)
        member = coord.group.members[agent.node_id]
        await coord.push_limits(agent.node_id, {"compute_cpu": 0.5})
        await eventually(lambda: capacities(member.resources) == {"compute_cpu": 1.0}, what="limit applied")
        await coord.push_limits(agent.node_id, {"compute_cpu": 1.5})  # more than the owner allows
        await coord.push_limits(agent.node_id, {"compute_cpu": 1.0})  # back to the owner's full offer
        await eventually(lambda: capacities(member.resources) == {"compute_cpu": 2.0}, what="back to 2")
        assert coord.group.accepted["claim"] == 2  # the refused push sent no claim
