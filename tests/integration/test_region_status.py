"""`prsm-edge status` against a real region's broker (the federation test's three groups): the region table,
the same data as JSON, and --watch following a group that stops."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

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
    async with region_of_three(tmp_path) as rig:
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

        # The table shows the same.
        code, out, err = await prsm(home, *base)
        assert code == 0, err
        assert f"region {RSITE}/{REGION}" in out and "3/3 groups alive" in out
        assert all(f"{site}/{name}" in out for name, site in (("g1", "lab"), ("g2", "lab"), ("g3", "far")))

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
