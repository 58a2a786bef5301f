"""Home Assistant controls on a real Mosquitto with dynamic security: Home Assistant's login commands two
nodes, one whose owner turned the controls on and one who did not. The first applies the command (its
settings change, the answer says so, the controls' state follows), refuses an out-of-range value with
the reason, and pauses on ON; the second changes nothing and answers nothing. A viewer's command to the
first is dropped by the broker (only Home Assistant's login may command), and a flood beyond the rate
limit goes unanswered."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from prsm_edge.coordinator.homeassistant import HomeAssistantOptions
from prsm_edge.io.dynsec import ROLE_HOMEASSISTANT, ROLE_VIEWER
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.node.owner_api import OwnerOptions
from prsm_edge.protocol.homeassistant import node_topics
from prsm_edge.settings import Settings
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, running

pytestmark = pytest.mark.integration


async def test_a_command_is_applied_only_where_the_owner_allowed_it(tmp_path: Path) -> None:
    require_mosquitto()
    ha_options = HomeAssistantOptions(state_interval_s=0.5)
    async with host_group(
        tmp_path / "host",
        site=SITE,
        group=GROUP,
        heartbeat_timeout_s=5,
        verify=False,
        homeassistant=ha_options,
    ) as host:
        assert host.dynsec is not None
        await host.dynsec.add_client("ha", "ha-secret", ROLE_HOMEASSISTANT)
        await host.dynsec.add_client("ops", "ops-secret", ROLE_VIEWER)
        allowed = Agent(
            agent_options(
                host.broker.url,
                tmp_path / "on",
                owner=OwnerOptions(settings=Settings(homeassistant_controls=True)),
            )
        )
        closed = Agent(agent_options(host.broker.url, tmp_path / "off"))
        on, off = (node_topics(SITE, GROUP, a.node_id) for a in (allowed, closed))
        seen: list[tuple[str, bytes]] = []

        def last(topic: str) -> bytes | None:
            found = [p for t, p in seen if t == topic]
            return found[-1] if found else None

        def acks(topics_of: Any) -> list[dict[str, Any]]:
            return [json.loads(p) for t, p in seen if t == topics_of.ack]

        def config(agent: Agent) -> dict[str, Any]:
            data = last(f"homeassistant/device/prsm_{agent.node_id}/config")
            return json.loads(data) if data else {}

        async with (
            aiomqtt.Client("127.0.0.1", host.broker.port, username="ha", password="ha-secret") as ha,
            aiomqtt.Client("127.0.0.1", host.broker.port, username="ops", password="ops-secret") as ops,
            running(host.coordinator, allowed, closed),
        ):
            await ha.subscribe("homeassistant/#")
            await ha.subscribe(f"prsm-ha/{SITE}/{GROUP}/#")

            async def listen() -> None:
                async for message in ha.messages:
                    assert isinstance(message.payload, bytes)
                    seen.append((str(message.topic), message.payload))

            listener = asyncio.create_task(listen())
            try:
                # Discovery: sliders and the pause switch for the node that allows them, none for the other.
                await eventually(lambda: bool(config(allowed)) and bool(config(closed)), 30, "both devices")
                assert "set_cpu_allocation_percentage" in config(allowed)["cmps"]
                assert "set_pause" in config(allowed)["cmps"]
                assert all("command_topic" not in c for c in config(closed)["cmps"].values())
                await eventually(lambda: last(on.controls) is not None, 15, "the controls' state")
                before_off = closed.owner_api.settings.cpu_allocation_percentage

                # The same command to both: applied and acknowledged by one, ignored by the other.
                for t in (on, off):
                    await ha.publish(t.command("cpu_allocation_percentage"), b"35", qos=1)
                await eventually(lambda: len(acks(on)) == 1, 10, "the answer")
                assert acks(on)[0] == {
                    "entity": "cpu_allocation_percentage",
                    "value": "35",
                    "ok": True,
                    "error": "",
                }
                assert allowed.owner_api.settings.cpu_allocation_percentage == 0.35
                await eventually(
                    lambda: json.loads(last(on.controls) or b"{}").get("cpu_allocation_percentage") == 35.0,
                    5,
                    "the new value shown",
                )
                # Out of range: refused, with the reason, and nothing changed.
                await ha.publish(on.command("cpu_allocation_percentage"), b"150", qos=1)
                await eventually(lambda: len(acks(on)) == 2, 10, "the refusal")
                assert not acks(on)[1]["ok"] and "0–100" in acks(on)[1]["error"]
                assert allowed.owner_api.settings.cpu_allocation_percentage == 0.35
                # A viewer may read but not command: the broker drops it (MQTT 3.1.1: silently).
                await ops.publish(on.command("cpu_allocation_percentage"), b"5", qos=1)
                await ha.publish(on.command("pause"), b"ON", qos=1)
                await eventually(lambda: len(acks(on)) == 3, 10, "the pause answer")
                assert acks(on)[2]["entity"] == "pause" and acks(on)[2]["ok"]
                assert allowed.owner_api.paused
                assert (
                    allowed.owner_api.settings.cpu_allocation_percentage == 0.35
                )  # the viewer's 5 % never came
                assert allowed.ha_controls.applied == 2 and allowed.ha_controls.refused == 1

                # The node whose owner did not allow it changed nothing and said nothing.
                assert closed.owner_api.settings.cpu_allocation_percentage == before_off
                assert not closed.owner_api.paused and closed.ha_controls.applied == 0
                assert acks(off) == [] and last(off.controls) is None

                # A flood of commands: beyond 30 a minute they are dropped, unanswered.
                for _ in range(40):
                    await ha.publish(on.command("pause"), b"OFF", qos=1)
                handled = lambda: allowed.ha_controls.applied + allowed.ha_controls.refused  # noqa: E731
                await eventually(lambda: handled() == 43, 15, "every command handled")
                await asyncio.sleep(0.3)
                assert 3 + 20 <= len(acks(on)) < 43 and not allowed.owner_api.paused
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await listener
