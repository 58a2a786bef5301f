"""Home Assistant controls across a coordinator restart, on a real Mosquitto with a real subscriber: the
restarted coordinator announces the same device, control entities included, from its stored roster
before the node's birth arrives (here it never does: the node is stopped and its retained birth is
gone), so Home Assistant never sees the entities vanish."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.coordinator.homeassistant import HomeAssistantOptions
from prsm_edge.node.agent import Agent
from prsm_edge.node.owner_api import OwnerOptions
from prsm_edge.protocol import topics
from prsm_edge.settings import Settings
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, eventually, running

pytestmark = pytest.mark.integration

HA = HomeAssistantOptions(state_interval_s=0.5)


def controls(config: bytes) -> set[str]:
    return {k for k, c in json.loads(config)["cmps"].items() if "command_topic" in c}


async def test_control_entities_survive_a_coordinator_restart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    agent = Agent(
        agent_options(
            mosquitto.url,
            tmp_path / "node",
            owner=OwnerOptions(settings=Settings(homeassistant_controls=True)),
        )
    )
    config_topic = f"homeassistant/device/prsm_{agent.node_id}/config"
    configs: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="home-assistant") as ha:
        await ha.subscribe(config_topic, qos=1)

        async def listen() -> None:
            async for message in ha.messages:
                assert isinstance(message.payload, bytes)
                configs.append(message.payload)

        listener = asyncio.create_task(listen())
        try:
            first = coordinator(mosquitto.url, tmp_path / "coord", homeassistant=HA)
            async with running(first):
                async with running(agent):
                    await eventually(lambda: bool(configs) and bool(controls(configs[-1])), 30, "controls")
                # The node is gone and so is its retained birth: nothing can tell the next run about it.
                async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="cleaner") as cleaner:
                    await cleaner.publish(
                        topics.node(topics.Kind.NODE_BIRTH, SITE, GROUP, agent.node_id),
                        b"",
                        qos=1,
                        retain=True,
                    )
            wanted = controls(configs[-1])
            assert {"set_cpu_allocation_percentage", "set_pause"} <= wanted
            seen = len(configs)

            second = coordinator(mosquitto.url, tmp_path / "coord", homeassistant=HA)
            async with running(second):
                # The restarted coordinator publishes every device afresh: the same one, controls and all.
                await eventually(lambda: len(configs) > seen, 15, "the restarted coordinator's discovery")
                await asyncio.sleep(1.0)  # a few more ticks: nothing changes its mind
            assert agent.node_id in second.group.members
            assert all(c and controls(c) == wanted for c in configs)  # never cleared, never shrunk
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener
