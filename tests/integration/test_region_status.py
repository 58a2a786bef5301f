"""`prsm-edge status` against a real region's broker (the federation test's three groups): the region table
with its trends (the region's signed rollup), the same data as JSON, and --watch following a group that
stops."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

from prsm_edge.coordinator.rollups import RollupOptions
from prsm_edge.protocol.rollups import Resolution
from tests.integration.test_federation import REGION, RSITE, region_of_three

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _output_files() -> tuple[IO[bytes], IO[bytes]]:
    return tempfile.TemporaryFile(), tempfile.TemporaryFile()


def _text(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode()


async def prsm(home: Path, *args: str, seconds: float = 30) -> tuple[int, str, str]:
    """Run the CLI without blocking the event loop the region runs on; stop it after ``seconds``."""
    env = {**os.environ, "PRSM_EDGE_HOME": str(home)}
    out, err = _output_files()  # files, not pipes: a cancelled read of a pipe loses what it read
    with out, err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prsm_edge", *args, env=env, stdout=out, stderr=err
        )
        try:
            await asyncio.wait_for(proc.wait(), seconds)
        except TimeoutError:
            proc.terminate()
            await proc.wait()
        return proc.returncode or 0, _text(out), _text(err)


async def test_status_on_a_region_shows_every_group_as_table_and_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # The region samples 5 times a second into 1-second buckets and republishes its rollup each 0.5 s.
    quick = RollupOptions(sample_s=0.2, publish_s=0.5, resolutions=(Resolution(1, 600), Resolution(60, 60)))
    async with region_of_three(tmp_path, rollup=quick) as rig:
        broker = f"mqtt://127.0.0.1:{rig.broker.port}"
        key = rig.region.identity.public_key.hex()
        base = ("status", "--broker", broker, "--site", RSITE, "--group", REGION, "--key", key)
        code, out, err = await prsm(home, *base, "--json")
        assert code == 0, err
        snap = json.loads(out.splitlines()[-1])
        assert snap["kind"] == "region" and snap["coordinator"]["tier"] == 2
        assert snap["coordinator"]["public_key"] == key
        assert [(g["site"], g["group"]) for g in snap["groups"]] == [
            ("far", "g3"),
            ("lab", "g1"),
            ("lab", "g2"),
        ]
        assert {g["status"] for g in snap["groups"]} == {"alive"} and snap["alive"] == 3
        assert {g["link"] for g in snap["groups"]} == {"up"}
        for g in snap["groups"]:
            rigged = rig.groups[g["group"]]
            assert g["public_key"] == rigged.coordinator.identity.public_key.hex()
            assert g["gateway"]["id"] == rigged.gateway.gateway_id
            assert g["capacity"] == {"compute_cpu": 4.0}
        assert snap["summary"]["capacity"] == {"compute_cpu": 12.0}
        assert snap["unverified"] == 0
        # The region's trends, from its retained rollup under the pinned key (published from its start).
        assert snap["trends"] is not None and snap["trends"]["hour"]["step_s"] == 1
        assert snap["trends"]["week"]["step_s"] == 60

        # Once a whole bucket has passed with all three alive, the newest says so: poll the CLI for it.
        for _ in range(15):
            code, out, err = await prsm(home, *base, "--json")
            assert code == 0, err
            hour = json.loads(out.splitlines()[-1])["trends"]["hour"]
            if hour["groups_alive"][-1] == 3:
                break
            await asyncio.sleep(0.5)
        assert hour["groups_alive"][-1] == 3 and hour["groups_dead"][-1] == 0, hour
        assert hour["online"][-1] == 3 and hour["utilization"][-1] is not None  # one node in each group

        # The table shows the same.
        code, out, err = await prsm(home, *base)
        assert code == 0, err
        assert f"region {RSITE}/{REGION}" in out and "3/3 groups alive" in out
        assert all(f"{site}/{name}" in out for name, site in (("g1", "lab"), ("g2", "lab"), ("g3", "far")))
        assert "trends from the region's coordinator's rollup" in out and "no rollup yet" not in out
        assert any(line.startswith("    alive") and "groups now 3" in line for line in out.splitlines())

        # A wrong pinned key: nothing from this region is believed.
        wrong = ("status", "--broker", broker, "--site", RSITE, "--group", REGION, "--key", "00" * 32)
        code, out, _ = await prsm(home, *wrong, "--json", "--timeout", "2")
        assert code == 1

        # --watch refreshes: g2's coordinator stops while it watches, and a later snapshot says so.
        watch = asyncio.create_task(prsm(home, *base, "--json", "--watch", "--interval", "0.5", seconds=9))
        await asyncio.sleep(2.5)
        for task in rig.groups["g2"].tasks[:2]:
            task.cancel()
        _, out, err = await watch
        snaps = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(snaps) >= 4, (out[-2000:], err[-2000:])
        g2 = [next(g for g in s["groups"] if g["group"] == "g2") for s in snaps]
        assert g2[0]["status"] == "alive" and g2[-1]["status"] == "dead"
        assert g2[-1]["why"] == "coordinator offline"
