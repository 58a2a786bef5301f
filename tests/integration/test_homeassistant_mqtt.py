"""Home Assistant discovery on a real Mosquitto with dynamic security: a subscriber holding the
prsm-homeassistant login sees a node's device appear, republished when it announces itself online, go
unavailable when the node leaves, and disappear (its retained config cleared) once the node is gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.coordinator.homeassistant import HomeAssistantOptions
from prsm_edge.io.dynsec import ROLE_HOMEASSISTANT
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent, Sample
from prsm_edge.protocol.offer import Readings
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually

pytestmark = pytest.mark.integration


def warm_sample() -> Sample:
    return Sample(cpu_util=0.3, mem_util=0.4, readings=Readings(temperature_c=48.0, power_w=12.5))


async def test_a_nodes_device_appears_and_disappears_for_a_real_subscriber(tmp_path: Path) -> None:
    require_mosquitto()
    ha_options = HomeAssistantOptions(state_interval_s=0.5, forget_after_s=2.0)
    async with host_group(
        tmp_path / "host",
        site=SITE,
        group=GROUP,
        heartbeat_timeout_s=5,
        verify=False,
        homeassistant=ha_options,
    ) as host:
        assert host.dynsec is not None
        await host.dynsec.add_client("viewer-ha", "ha-secret", ROLE_HOMEASSISTANT)
        seen: list[tuple[str, bytes, bool]] = []

        async with aiomqtt.Client(
            "127.0.0.1",
            host.broker.port,
            username="viewer-ha",
            password="ha-secret",
            identifier="home-assistant",
        ) as ha:
            await ha.subscribe("homeassistant/#")
            await ha.subscribe(f"prsm-ha/{SITE}/{GROUP}/#")  # what the role may read

            async def listen() -> None:
                async for message in ha.messages:
                    assert isinstance(message.payload, bytes)
                    seen.append((str(message.topic), message.payload, bool(message.retain)))

            def last(topic: str) -> bytes | None:
                payloads = [p for t, p, _ in seen if t == topic]
                return payloads[-1] if payloads else None

            listener = asyncio.create_task(listen())
            coord_task = asyncio.create_task(host.coordinator.run())
            agent = Agent(agent_options(host.broker.url, tmp_path / "a", sample=warm_sample))
            agent_task = asyncio.create_task(agent.run())
            node = agent.node_id
            config_topic = f"homeassistant/device/prsm_{node}/config"
            state_topic = f"prsm-ha/{SITE}/{GROUP}/{node}/state"
            availability = f"prsm-ha/{SITE}/{GROUP}/{node}/availability"
            try:
                # The device appears, with its sensors, its availability and a state carrying the readings.
                await eventually(lambda: bool(last(config_topic)), timeout=30, what="discovery config")
                config = json.loads(last(config_topic) or b"")
                assert config["dev"]["ids"] == [f"prsm_{node}"]
                assert {"temperature", "power", "energy", "trust_level", "earnings"} <= set(config["cmps"])
                assert config["state_topic"] == state_topic and config["availability_topic"] == availability
                await eventually(lambda: last(availability) == b"online", timeout=10, what="available")
                await eventually(
                    lambda: json.loads(last(state_topic) or b"{}").get("temperature") == 48.0,
                    timeout=10,
                    what="state with the node's readings",
                )
                assert json.loads(last(state_topic) or b"")["power"] == 12.5

                # Home Assistant restarts and announces itself: the coordinator publishes everything again.
                before = sum(1 for t, _, _ in seen if t == config_topic)
                await ha.publish("homeassistant/status", b"online", qos=1)
                await eventually(
                    lambda: sum(1 for t, _, _ in seen if t == config_topic) > before,
                    timeout=10,
                    what="republish",
                )

                # The node leaves: unavailable at once, and once gone for forget_after_s, removed.
                agent_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await agent_task
                await eventually(lambda: last(availability) == b"offline", timeout=10, what="unavailable")
                await eventually(lambda: last(config_topic) == b"", timeout=15, what="config cleared")
                assert last(state_topic) == b"" and last(availability) == b""
            finally:
                for task in (agent_task, coord_task, listener):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

        # Nothing is left retained for the departed node: a fresh subscriber gets no config for it.
        async with aiomqtt.Client(
            "127.0.0.1", host.broker.port, username="viewer-ha", password="ha-secret", identifier="ha-late"
        ) as late:
            await late.subscribe("homeassistant/#")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for message in late.messages:
                        assert str(message.topic) != config_topic
