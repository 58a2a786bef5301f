"""Auto-formation on loopback mDNS: two would-be coordinators converge to one; a full group refuses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest

from prsm_edge.autoform import AutoNode, FormationOptions
from prsm_edge.errors import Reason
from prsm_edge.node.agent import Agent, AgentOptions, Redirected
from tests.conftest import require_mosquitto
from tests.integration.groupkit import agent_options, cpu, eventually, quiet_sample

pytestmark = pytest.mark.integration

LOOPBACK = ["127.0.0.1"]


def node(tmp: Path, name: str, site: str, **kw: object) -> AutoNode:
    agent = AgentOptions(
        site=site,
        group="placeholder",
        broker_url="mqtt://127.0.0.1:1",
        workdir=tmp / name,
        resources=cpu(2.0),
        heartbeat_interval_s=0.5,
        keepalive_s=2,
        sample=quiet_sample,
        cpu_rate=1_000_000.0,
        hw_fingerprint=name,
    )
    opts: dict[str, object] = {
        "site": site,
        "workdir": tmp / name,
        "agent": agent,
        "interfaces": LOOPBACK,
        "discover_s": 1.5,
        "watch_s": 0.5,
        "heartbeat_timeout_s": 5.0,
    }
    opts.update(kw)
    return AutoNode(FormationOptions(**opts))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def started(*nodes: AutoNode):  # type: ignore[no-untyped-def]
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def test_two_coordinators_started_together_converge_to_one(tmp_path: Path) -> None:
    require_mosquitto()
    a, b = node(tmp_path, "a", "conv"), node(tmp_path, "b", "conv")
    async with started(a, b):
        # Both find nothing, both found group "g", both announce; then exactly one yields.
        await eventually(
            lambda: (a.hosting is None) != (b.hosting is None), timeout=30, what="one coordinator"
        )
        host = a if a.hosting is not None else b
        other = b if host is a else a
        assert host.hosting is not None
        group = host.hosting.coordinator.group
        await eventually(
            lambda: {a.node_id, b.node_id} <= {n for n, m in group.members.items() if m.online},
            timeout=30,
            what="both agents members of the surviving group",
        )
        assert other.hosting is None
        assert host.hosting.coordinator.identity.node_id not in other.excluded


async def test_a_full_group_refuses_and_a_newcomer_founds_the_next_group(tmp_path: Path) -> None:
    require_mosquitto()
    first = node(tmp_path, "first", "full", max_members=1)
    async with started(first):
        await eventually(
            lambda: first.hosting is not None and first.hosting.coordinator.group.online_count == 1
        )
        assert first.hosting is not None
        coord = first.hosting.coordinator
        # A node sent straight to the full group's broker is refused at join and told so.
        stray = Agent(agent_options(first.hosting.broker.url, tmp_path / "stray"))
        stray = Agent(dataclasses.replace(stray.options, site="full", group=coord.group.config.group))
        with pytest.raises(Redirected, match="group_full"):
            async with asyncio.timeout(15):
                await stray.run()
        assert coord.group.rejected[Reason.GROUP_FULL] == 1
        # A newcomer that discovers the group sees from its advert that it is full, and founds g-2.
        late = node(tmp_path, "late", "full")
        async with started(late):
            await eventually(lambda: late.hosting is not None, timeout=30, what="the newcomer founds a group")
            assert late.hosting is not None
            assert late.hosting.coordinator.group.config.group == "g-2"
