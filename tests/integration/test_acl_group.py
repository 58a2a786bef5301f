"""A group behind Mosquitto's dynamic security: nodes get credentials at join and only their own topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.errors import Reason
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, running

pytestmark = pytest.mark.integration


async def test_join_issues_credentials_and_the_broker_confines_each_node(tmp_path: Path) -> None:
    require_mosquitto()
    async with host_group(tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=5) as host:
        assert host.broker.acl_enforced
        coord = host.coordinator
        a = Agent(agent_options(host.broker.url, tmp_path / "a"))
        b = Agent(agent_options(host.broker.url, tmp_path / "b"))
        async with running(coord, a, b):
            await eventually(lambda: coord.group.online_count == 2, timeout=15, what="both joined via ACL")
            assert (tmp_path / "a" / "broker-credentials.json").exists()
            assert a.session.connections >= 2  # anonymous join, then with its own credentials

            # Node a, with its own credentials, tries to speak for b: the broker drops it (MQTT 3.1.1
            # drops silently), so the coordinator never even sees it.
            user, password = a._credentials()
            forged = a.signer.seal(m.Heartbeat(node=b.node_id, cpu_util=1, mem_util=1), _now())
            b_topic = t.node(t.Kind.NODE_TELEMETRY, SITE, GROUP, b.node_id)
            async with aiomqtt.Client(
                "127.0.0.1", host.broker.port, identifier=f"{a.node_id}-x", username=user, password=password
            ) as c:
                await c.publish(b_topic, forged, qos=1)
                # On its own topic it may publish, but the coordinator checks the signer owns the topic.
                a_topic = t.node(t.Kind.NODE_TELEMETRY, SITE, GROUP, a.node_id)
                foreign = b.signer.seal(m.Heartbeat(node=b.node_id, cpu_util=1, mem_util=1), _now())
                await c.publish(a_topic, foreign, qos=1)
            await eventually(lambda: coord.group.rejected[Reason.WRONG_TOPIC_OWNER] == 1)
            await asyncio.sleep(0.5)
            assert coord.group.rejected[Reason.WRONG_TOPIC_OWNER] == 1  # the first never arrived

            # An anonymous client cannot publish telemetry at all.
            async with aiomqtt.Client("127.0.0.1", host.broker.port, identifier="anon") as c:
                await c.publish(b_topic, forged, qos=1)
            await asyncio.sleep(0.5)
            assert sum(coord.group.rejected.values()) == 1
            assert coord.group.online_count == 2


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000
