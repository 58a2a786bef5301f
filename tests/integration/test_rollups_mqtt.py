"""The coordinator's trend rollup on a real Mosquitto: retained, signed by the coordinator, and carrying
the history from before a coordinator restart (restored from its store, not only left on the broker)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.coordinator.rollups import RollupOptions
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import open_envelope
from prsm_edge.protocol.messages import GroupRollup
from prsm_edge.protocol.rollups import Resolution, decode_column
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, eventually, running

pytestmark = pytest.mark.integration

FAST = RollupOptions(sample_s=0.2, publish_s=0.5, resolutions=(Resolution(1, 600), Resolution(10, 60)))


def online_by_second(rollup: GroupRollup) -> dict[int, int]:
    """The finest series' ``online`` column: bucket start (s) → online nodes, where sampled."""
    fine = rollup.series[0]
    values = decode_column(fine.columns["online"], fine.count)
    return {fine.start_s + i * fine.step_s: v for i, v in enumerate(values) if v is not None}


async def retained_rollup(url_port: int, coordinator_id: str) -> GroupRollup:
    """A fresh subscriber's retained rollup, checked to be signed by the coordinator."""
    async with aiomqtt.Client("127.0.0.1", url_port, identifier="rollup-reader") as client:
        await client.subscribe(topics.coord_rollup(SITE, GROUP), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.retain and isinstance(message.payload, bytes)
                opened = open_envelope(message.payload)
                assert opened.signer == coordinator_id
                assert isinstance(opened.message, GroupRollup)
                return opened.message
    raise AssertionError("no retained rollup")


async def test_the_rollup_keeps_its_history_across_a_coordinator_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    agents = [Agent(agent_options(mosquitto.url, tmp_path / f"a{i}")) for i in range(2)]
    first = coordinator(mosquitto.url, tmp_path / "coord", rollup=FAST)
    async with running(*agents):
        async with running(first):
            await eventually(lambda: first.group.online_count == 2, what="two members online")
            await asyncio.sleep(2.5)  # a few one-second buckets with both nodes online
        before = online_by_second(await retained_rollup(mosquitto.port, first.identity.node_id))
        seen_both = {t for t, n in before.items() if n == 2}
        assert len(seen_both) >= 2, before

        await asyncio.sleep(1.1)  # the next run's samples start in a later one-second bucket
        second = coordinator(mosquitto.url, tmp_path / "coord", rollup=FAST)
        started_ms = int(time.time() * 1000)
        async with running(second):
            await eventually(lambda: second.group.online_count == 2, timeout=15, what="members back")
            await asyncio.sleep(1.5)
            after_rollup = await retained_rollup(mosquitto.port, second.identity.node_id)
        assert after_rollup.seq > 0 and after_rollup.at_ms > started_ms
        after = online_by_second(after_rollup)
        # Every bucket the first run published is still there, with its value: restored, not re-sampled.
        assert {t: before[t] for t in seen_both} == {t: after[t] for t in seen_both}
        assert max(after) > max(before)  # and the second run added its own samples after them


async def test_without_its_store_a_new_coordinator_starts_the_trend_afresh(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The check above can fail: a coordinator whose rollup store is gone publishes no old buckets."""
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a"))
    first = coordinator(mosquitto.url, tmp_path / "coord", rollup=FAST)
    async with running(agent):
        async with running(first):
            await eventually(lambda: first.group.online_count == 1, what="member online")
            await asyncio.sleep(2.0)
        before = online_by_second(await retained_rollup(mosquitto.port, first.identity.node_id))
        for leftover in (tmp_path / "coord").glob("rollups.sqlite*"):
            leftover.unlink()
        await asyncio.sleep(1.1)  # the next run's samples start in a later one-second bucket
        second = coordinator(mosquitto.url, tmp_path / "coord", rollup=FAST)
        async with running(second):
            await asyncio.sleep(1.5)
            after = online_by_second(await retained_rollup(mosquitto.port, second.identity.node_id))
        assert before and after and min(after) > max(before)
