"""`prsm-edge status` (a real process) reads the trend rollup of a real coordinator on Mosquitto: the
series appear in ``--json`` under the pinned key, and a rollup signed by another key is refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from nacl.signing import SigningKey

from prsm_edge.coordinator.rollups import RollupOptions
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.rollups import Resolution, Rollups
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, eventually, running
from tests.integration.test_viewer_status import prsm

pytestmark = pytest.mark.integration

FAST = RollupOptions(sample_s=0.2, publish_s=0.5, resolutions=(Resolution(1, 600), Resolution(10, 60)))


async def status(home: Path, port: int, key: str, *extra: str) -> tuple[int, str, str]:
    args = ("status", "--broker", f"mqtt://127.0.0.1:{port}", "--site", SITE, "--group", GROUP, "--key", key)
    result = await asyncio.to_thread(prsm, home, *args, *extra)
    return result.returncode, result.stdout, result.stderr


def snapshot(stdout: str) -> dict[str, Any]:
    snap: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return snap


async def test_status_shows_the_coordinators_rollup_and_refuses_a_forged_one(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    agent = Agent(agent_options(mosquitto.url, tmp_path / "node"))
    coord = coordinator(mosquitto.url, tmp_path / "coord", rollup=FAST)
    key = coord.identity.public_key.hex()
    async with running(coord, agent):
        await eventually(lambda: coord.group.online_count == 1, 15, "the node online")
        await asyncio.sleep(2.0)  # a few samples with the node online, and a published rollup
        code, out, err = await status(home, mosquitto.port, key, "--json")
        assert code == 0, err
        trends = snapshot(out)["trends"]
        assert trends is not None and trends["hour"]["step_s"] == 1 and trends["week"]["step_s"] == 10
        assert 1 in trends["hour"]["online"] and 1 in trends["week"]["online"]
        assert len(trends["hour"]["utilization"]) == len(trends["hour"]["online"])
        code, out, err = await status(home, mosquitto.port, key)
        assert code == 0, err
        assert "trends from the coordinator's rollup" in out and "one mark per 1 s" in out

    # With the coordinator gone, someone replaces its retained rollup with one signed by another key.
    forger = Signer(SigningKey(b"\x07" * 32))
    fake = Rollups(FAST.resolutions)
    fake.add(1_800_000_000, {"online": 99, "cpu": 1000})
    forged = forger.seal(fake.message(SITE, GROUP, 1_800_000_000_000), 1_800_000_000_000)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="forger") as client:
        await client.publish(topics.coord_rollup(SITE, GROUP), forged, qos=1, retain=True)

    code, out, err = await status(home, mosquitto.port, key, "--json")
    assert code == 0, err
    snap = snapshot(out)
    assert snap["trends"] is None
    assert [f["topic"] for f in snap["failures"]] == [topics.coord_rollup(SITE, GROUP)]
    code, out, err = await status(home, mosquitto.port, key)
    assert "trends: no rollup yet" in out and "max 99" not in out
