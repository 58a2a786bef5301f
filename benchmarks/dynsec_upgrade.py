"""What the node-role upgrade costs a coordinator start, on a real Mosquitto with dynamic security.

Admits ``--nodes`` nodes with ``DynSec.add_node`` (the baseline: what admitting them cost), rewrites
their roles as the release before Home Assistant controls made them, then times ``setup_group`` (which
runs the upgrade) twice: the first start upgrades every role, the second finds them current.

    .venv/bin/python benchmarks/dynsec_upgrade.py --nodes 200
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from prsm_edge.io.broker import start_broker
from prsm_edge.io.dynsec import DynSec, RoleUpgrade, node_role, node_role_acls
from prsm_edge.protocol.homeassistant import node_topics

SITE, GROUP = "bench", "g1"


def old_acls(node: str) -> list[dict[str, object]]:
    """The node's rules without the Home Assistant entries (the previous release's role)."""
    ha = node_topics(SITE, GROUP, node)
    dropped = {ha.controls, ha.ack, ha.commands}
    return [a for a in node_role_acls(SITE, GROUP, node) if a["topic"] not in dropped]


async def main(nodes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            start_broker(Path(tmp) / "broker", prefer="mosquitto") as broker,
            DynSec.for_broker(broker, timeout=30) as ds,
        ):
            await ds.setup_group(SITE, GROUP)
            names = [f"n{i:04d}" for i in range(nodes)]
            t0 = time.perf_counter()
            for name in names:
                await ds.add_node(name, f"pw-{name}")
            admit = time.perf_counter() - t0
            for start in range(0, nodes, 50):
                await ds.command(
                    *(
                        {"command": "modifyRole", "rolename": node_role(n), "acls": old_acls(n)}
                        for n in names[start : start + 50]
                    )
                )
            timings = []
            for _ in range(2):
                t0 = time.perf_counter()
                await ds.setup_group(SITE, GROUP)
                timings.append(time.perf_counter() - t0)
            counts = await ds.upgrade_node_roles()
    assert counts[RoleUpgrade.CURRENT] == nodes
    print(f"nodes                                  {nodes}")
    print(f"admitting them (add_node, baseline)    {admit:.3f} s")
    print(
        f"start that upgrades every role         {timings[0]:.3f} s  ({timings[0] / admit:.2f} of admitting)"
    )
    print(
        f"start with every role current          {timings[1]:.3f} s  ({timings[1] / admit:.2f} of admitting)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200, help="node roles to make and upgrade (200)")
    asyncio.run(main(parser.parse_args().nodes))
