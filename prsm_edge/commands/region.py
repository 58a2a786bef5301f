"""``prsm-edge region``: host a region: its broker and the regional coordinator over its groups."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from prsm_edge import paths
from prsm_edge.coordinator.region import RegionCoordinator, RegionOptions
from prsm_edge.errors import ConfigError
from prsm_edge.identity import load_or_create
from prsm_edge.io.broker import start_broker
from prsm_edge.io.brokerinfo import dashboard_dir


def register(sub: Any) -> None:
    """Add the ``region`` command."""
    parser = sub.add_parser(
        "region",
        help="host a region: a broker for the groups' gateways and the regional coordinator",
        description=(
            "Run a regional coordinator: it verifies each group's signed summary against the group's "
            "pinned key, keeps the region's capacity and trust picture, marks silent groups dead, "
            "routes tasks submitted at the region to a group, and publishes the region's own summary "
            "(the same message a group sends), so a gateway can carry it one tier higher."
        ),
    )
    parser.add_argument("--site", default="region", help="the region's site segment (default region)")
    parser.add_argument("--region", default="r1", help="the region's name (default r1)")
    parser.add_argument("--tier", type=int, default=2, help="this coordinator's tier (default 2)")
    parser.add_argument("--host", default="0.0.0.0", help="address the broker listens on (default all)")
    parser.add_argument("--port", type=int, default=1884, help="MQTT port (default 1884; 0 picks one)")
    parser.add_argument(
        "--ws-port",
        type=int,
        default=9002,
        help="WebSocket port serving the operator dashboard (Mosquitto; default 9002; 0 picks one)",
    )
    parser.add_argument(
        "--external", default=None, metavar="URL", help="start no broker: use this one (mqtt://HOST:PORT)"
    )
    parser.add_argument(
        "--pins",
        type=Path,
        default=None,
        metavar="FILE",
        help='JSON {"site/group": "coordinator public key hex"}: accept only these groups, with these keys',
    )
    parser.add_argument("--dead-after-s", type=float, default=25.0, help="a silent group is dead after this")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="state folder (default: the data dir)")
    parser.set_defaults(handler=_run)


def _pins(path: Path | None) -> dict[tuple[str, str], bytes] | None:
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
        pins = {}
        for unit, key in raw.items():
            site, group = unit.split("/")
            pins[(site, group)] = bytes.fromhex(key)
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f'--pins {path}: expected {{"site/group": "hex key", ...}} ({exc})') from None
    return pins


def _run(args: argparse.Namespace) -> int:
    if not 2 <= args.tier <= 9 or args.dead_after_s <= 0:
        raise ConfigError("--tier must be 2–9 and --dead-after-s positive")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_region(args))
    return 0


async def _region(args: argparse.Namespace) -> None:
    workdir = (args.workdir or paths.data_dir()) / "region" / args.region
    pins = _pins(args.pins)
    identity = load_or_create(workdir)
    async with contextlib.AsyncExitStack() as stack:
        url = args.external
        if url is None:
            broker = await stack.enter_async_context(
                start_broker(
                    workdir / "broker",
                    host=args.host,
                    port=args.port,
                    ws_port=args.ws_port,
                    acl=False,
                    http_dir=dashboard_dir(),
                )
            )
            url = broker.url
            print(f"{broker.kind} broker for the region at {url}", file=sys.stderr, flush=True)
            if broker.kind == "mosquitto" and broker.ws_port and dashboard_dir() is not None:
                fragment = urlencode(
                    {"site": args.site, "group": args.region, "key": identity.public_key.hex()}
                )
                print(
                    f"dashboard: http://127.0.0.1:{broker.ws_port}/#{fragment}", file=sys.stderr, flush=True
                )
        options = RegionOptions(
            site=args.site,
            region=args.region,
            broker_url=url,
            workdir=workdir,
            tier=args.tier,
            dead_after_s=args.dead_after_s,
            pinned=pins,
            quiet_heap=True,  # this process is the coordinator's own: keep full collections rare
        )
        coord = RegionCoordinator(identity, options)
        task = asyncio.create_task(coord.run())
        stack.callback(task.cancel)
        loop = asyncio.get_running_loop()
        deadline = None if args.seconds is None else loop.time() + args.seconds
        while deadline is None or loop.time() < deadline:
            await asyncio.sleep(min(5.0, args.seconds or 5.0))
            r = coord.region
            s = r.summary()
            print(
                f"{args.site}/{args.region} epoch {coord.epoch}: "
                f"{r.alive_count}/{len(r.units)} groups alive, "
                f"{s.online} nodes online, capacity {s.capacity}, rejected {sum(r.rejected.values())}",
                flush=True,
            )
