"""``prsm-edge demo``: a working local group on this machine — broker, coordinator, N agents, live roster."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prsm_edge import settings
from prsm_edge.commands import _demo_market
from prsm_edge.commands.viewer import open_viewer
from prsm_edge.coordinator.economy import EconomyConfig
from prsm_edge.coordinator.service import Coordinator
from prsm_edge.errors import PrsmEdgeError
from prsm_edge.io.brokerinfo import dashboard_dir
from prsm_edge.localgroup import GroupHost, host_group
from prsm_edge.node.agent import Agent, AgentOptions
from prsm_edge.node.detect import detect
from prsm_edge.protocol.group import Group
from prsm_edge.protocol.membership import JoinPolicy
from prsm_edge.protocol.messages import MICRO, ResourceSpec, ResourceType
from prsm_edge.protocol.offer import offered
from prsm_edge.protocol.verifier import VerifierConfig

log = logging.getLogger(__name__)

_MAX_NODES = 200


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    parser = sub.add_parser(
        "demo",
        help="run a local group on this machine: broker, coordinator and N agents",
        description=(
            "Start an MQTT broker (Mosquitto when installed, with per-node ACLs; otherwise the embedded "
            "single-machine fallback, which enforces no ACLs), a group coordinator, and N agents that "
            "each offer an equal slice of this machine's detected resources under the owner's allocation "
            "settings. Shows the live roster until Ctrl-C or --seconds. Nothing is advertised on the "
            "network: the agents reach the broker on 127.0.0.1."
        ),
    )
    parser.add_argument("--nodes", type=int, default=20, help=f"agents to start, 1–{_MAX_NODES} (default 20)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="which broker to run (auto: Mosquitto if installed, else embedded)",
    )
    parser.add_argument("--site", default="demo", help="site name in the topic tree (default demo)")
    parser.add_argument("--group", default="g1", help="group name (default g1)")
    parser.add_argument(
        "--heartbeat", type=float, default=2.0, help="heartbeat interval in seconds (default 2)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep keys and databases here (default: temp)"
    )
    parser.add_argument(
        "--no-table", action="store_true", help="print one status line a second, not the table"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip benchmark proofs and peer verification (levels stay 0.6)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="settlement period in seconds (default 10; real groups: 1 h)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= _MAX_NODES:
        print(f"prsm-edge: error: --nodes must be between 1 and {_MAX_NODES}", file=sys.stderr)
        return 2
    if not 1.0 <= args.settle <= 86_400.0:
        print("prsm-edge: error: --settle must be between 1 and 86400 seconds", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prsm-demo-")))
        try:
            return asyncio.run(_demo(args, workdir))
        except KeyboardInterrupt:
            print("\nstopped.")
            return 0


def demo_verification(site: str, group: str, nodes: int) -> VerifierConfig:
    """Verification for a demo group: every agent proves on this one machine (one process), so
    challenges are small, deadlines generous and rounds spaced by the group's size; real devices prove
    on their own hardware."""
    return VerifierConfig(
        site=site,
        group=group,
        coordinator="",  # the coordinator fills in its own id
        round_ms=max(10_000, nodes * 300),
        vote_timeout_ms=20_000,
        segments=256,
        opens=8,
        target_ms=50,
        slack=max(10.0, 2.0 * nodes),  # all the agents' proofs of a round share one CPU here
        network_ms=2_000,
        min_rate_ratio=0.0,
    )


def demo_agent(
    site: str,
    group: str,
    url: str,
    folder: Path,
    resources: list[ResourceSpec],
    fingerprint: str,
    heartbeat: float,
) -> AgentOptions:
    """The options of one demo agent (one equal slice of this machine), keeping its state in ``folder``."""
    return AgentOptions(
        site=site,
        group=group,
        broker_url=url,
        workdir=folder,
        resources=resources,
        device_class="demo-slice",
        hw_fingerprint=f"{fingerprint}/slice-{folder.name}",
        heartbeat_interval_s=heartbeat,
        min_hourly_rate_micro=0,  # a slice of one machine is tiny: demo owners take any rate
    )


def slices(nodes: int) -> tuple[list[ResourceSpec], str]:
    """One agent's share of this machine: detected capacity / nodes, then the owner's allocation."""
    detected = detect()
    share = [
        ResourceSpec(type=r.type, capacity=r.capacity / nodes, unit=r.unit, details=r.details)
        for r in detected.resource_specs()
    ]
    return offered(share, settings.load().allocations()), detected.hw_fingerprint()


async def _demo(args: argparse.Namespace, workdir: Path) -> int:
    _say("detecting this machine's resources …")
    resources, fingerprint = await asyncio.to_thread(slices, args.nodes)
    _say(f"starting the broker ({args.broker}) …")
    verification = demo_verification(args.site, args.group, args.nodes)
    async with host_group(
        workdir,
        site=args.site,
        group=args.group,
        prefer=args.broker,
        heartbeat_timeout_s=args.heartbeat * 3.5,
        verify=not args.no_verify,
        verification=verification,
        # the demo's agents all start at once on this machine: admit them all without throttling
        join_policy=JoinPolicy(rate_per_min=60.0 * args.nodes, burst=args.nodes, max_pending=args.nodes),
        economy=EconomyConfig(period_ms=int(args.settle * 1000)),
    ) as host:
        b = host.broker
        acl = "per-node ACLs enforced" if b.acl_enforced else "NO ACL enforcement (embedded fallback)"
        _say(f"broker: {b.kind} at {b.url}" + (f", WebSocket {b.ws_url}" if b.ws_url else "") + f"; {acl}")
        coord = host.coordinator
        agents = [
            Agent(
                demo_agent(
                    args.site,
                    args.group,
                    b.url,
                    workdir / "agents" / f"a{i:03d}",
                    resources,
                    fingerprint,
                    args.heartbeat,
                )
            )
            for i in range(args.nodes)
        ]
        start = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(coord.run())]
            tasks += [tg.create_task(a.run()) for a in agents]
            tg.create_task(_dashboard_link(host, args))  # beside the agents: it must not delay them
            tasks.append(tg.create_task(_demo_market.drive(coord)))
            tg.create_task(_show(args, coord, len(agents), start, tasks))
    return 0


async def _show(
    args: argparse.Namespace, coord: Coordinator, expected: int, start: float, tasks: list[asyncio.Task[None]]
) -> None:
    formed_at: float | None = None
    deadline = None if args.seconds is None else start + args.seconds
    table = sys.stdout.isatty() and not args.no_table
    try:
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            g = coord.group
            online = g.online_count
            if formed_at is None and online >= expected:
                formed_at = time.monotonic() - start
            status = (
                f"group {g.config.site}/{g.config.group} epoch {g.config.epoch}: {online}/{expected} online"
                + (f", formed in {formed_at:.1f} s" if formed_at is not None else "")
                + f", rejected {sum(g.rejected.values())}"
                + "; levels: "
                + ", ".join(f"{level} {n}" for level, n in sorted(g.summary().trust.items()))
            )
            status += _earnings(coord)
            if table:
                print("\x1b[2J\x1b[H" + status + "\n" + _table(g, coord), flush=True)
            else:
                print(status, flush=True)
    finally:
        if formed_at is None:
            print(f"the group did not form: {coord.group.online_count}/{expected} online", file=sys.stderr)
        for task in tasks:
            task.cancel()


def _earnings(coord: Coordinator) -> str:
    """Earnings so far by level (credits are settled each period; bonuses only for verified levels)."""
    by_level: dict[str, int] = {}
    for node in coord.group.members:
        level = coord.group.level(node).value
        by_level[level] = by_level.get(level, 0) + coord.ledger.balance(node)
    paid = ", ".join(f"{level} {micro / MICRO:.6f}" for level, micro in sorted(by_level.items()))
    return f"; earned FTNS: {paid or 'none yet'} (demo work is simulated)"


def _table(group: Group, coord: Coordinator | None = None) -> str:
    members = list(group.members.values())
    now = time.time() * 1000
    header = f"{'node':<18} {'cpu':>6} {'mem GB':>7} {'disk GB':>8} {'trust level':<20} {'state':<8}"
    lines = [f"{header} {'last seen':>9} {'earned µFTNS':>13} {'µFTNS/h':>9}"]
    for m in sorted(members, key=lambda m: m.node):
        cap = {r.type: r.capacity for r in m.resources}
        state = "online" if m.online else "offline"
        if m.online and not m.offering:
            state = "held"
        level = f"{group.level(m.node).value} ({group.trust(m.node):.2f})"
        lines.append(
            f"{m.node:<18} {cap.get(ResourceType.COMPUTE_CPU, 0):>6.2f} "
            f"{cap.get(ResourceType.STORAGE_MEMORY, 0):>7.2f} "
            f"{cap.get(ResourceType.STORAGE_PERSISTENT, 0):>8.1f} "
            f"{level:<20} {state:<8} {(now - m.last_seen_ms) / 1000:>8.1f}s"
            + (
                f" {coord.ledger.balance(m.node):>13} {coord.economy.hourly.get(m.node, 0.0):>9.0f}"
                if coord is not None
                else ""
            )
        )
    return "\n".join(lines)


async def _dashboard_link(host: GroupHost, args: argparse.Namespace) -> None:
    """Create a read-only viewer login on the demo's Mosquitto and print the dashboard's link."""
    b = host.broker
    if host.dynsec is None or b.ws_port is None or dashboard_dir() is None:
        return
    try:
        url = await open_viewer(
            host.dynsec,
            "demo",
            host=b.connect_host,
            ws_port=b.ws_port,
            site=args.site,
            group=args.group,
            key=host.coordinator.identity.public_key.hex(),
        )
    except PrsmEdgeError as exc:  # the demo runs on without its dashboard link
        _say(f"no dashboard link: {exc}")
        return
    _say(f"dashboard (read-only login, served by the broker): {url}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
