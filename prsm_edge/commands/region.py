"""``prsm-edge region``: host a region: its broker and the regional coordinator over its groups.

The region's Mosquitto runs with dynamic security, like a group's: the regional coordinator has its own
login, anonymous clients may do nothing, and each group's gateway (and its bridge) logs in as that group,
confined to the group's unit subtree. ``prsm-edge region add-group SITE/GROUP``, on the region's host,
creates that login and prints the ``prsm-edge gateway`` options to use on the group's host;
``prsm-edge region add-client NAME`` creates a login that may submit tasks at the region.
``remove-group``, ``remove-client`` and ``remove-viewer`` take a login away (the broker disconnects it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from prsm_edge import paths
from prsm_edge.coordinator.region import RegionCoordinator, RegionOptions
from prsm_edge.errors import ConfigError, LocalError
from prsm_edge.identity import load_or_create
from prsm_edge.io.broker import RunningBroker, start_broker
from prsm_edge.io.brokerinfo import dashboard_dir, read_local_broker
from prsm_edge.io.dynsec import (
    ROLE_REGION,
    ROLE_REGION_CLIENT,
    ROLE_REGION_VIEWER,
    DynSec,
    unit_role,
    unit_username,
)
from prsm_edge.protocol import topics

_CLIENT_NAME = re.compile(r"[a-z0-9_-]{1,40}")


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
        "--no-acl",
        action="store_true",
        help="run the region's broker without logins or ACLs (any client may publish anything there): "
        "only on a trusted network; by default each group needs `add-group`",
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
    parser.set_defaults(handler=_run, action=None)
    actions = parser.add_subparsers(
        dest="action",
        metavar="{add-group,add-client,add-viewer,remove-group,remove-client,remove-viewer}",
        title="logins on the region's broker (run on the region's host; without one: run the region)",
    )
    add_group = actions.add_parser(
        "add-group",
        help="create (or renew) a group's login, for its gateway and bridge, and print the gateway options",
        description=(
            "Create or renew the login of group SITE/GROUP on this host's region broker (it reads the "
            "broker's admin secret, so run it as the user of `prsm-edge region`, with the same --region "
            "and --workdir, while the region runs). The login may write only that group's summary, "
            "stream and answers, and read only the region's state and the requests addressed to that "
            "group. Prints the `prsm-edge gateway` options to use on the group's host."
        ),
    )
    add_group.add_argument("unit", metavar="SITE/GROUP", help="the group, as its site and name (lab/g1)")
    add_group.add_argument(
        "--password",
        default=None,
        help="use this password instead of a new random one (the same login on a standby region broker, "
        "since a gateway gives every --uplink the same password)",
    )
    add_group.add_argument(
        "--url-host", default=None, help="the region broker's name as groups reach it (default: 127.0.0.1)"
    )
    add_client = actions.add_parser(
        "add-client",
        help="create (or renew) a login that may submit tasks at the region",
        description=(
            "Create or renew login region-client-NAME: it may publish task requests on the region's "
            "api/submit/req/+ and read the answers and the region's state, nothing else (each request is "
            "signed, and the region checks the signer owns its topic)."
        ),
    )
    add_client.add_argument("name", help="1–40 characters of a-z, 0-9, '_' or '-'")
    add_viewer = actions.add_parser(
        "add-viewer",
        help="create (or renew) a read-only login for the dashboard or `prsm-edge status` on the region",
        description=(
            "Create or renew login region-viewer-NAME: it may read the region's tree, every gateway's "
            "link state and $SYS/broker/#, and publish nothing. (The dashboard URL `prsm-edge region` "
            "prints carries its own such login, renewed at every start.)"
        ),
    )
    add_viewer.add_argument("name", help="1–40 characters of a-z, 0-9, '_' or '-'")
    for kind, what, arg in (
        ("group", "a group's login (its gateway and bridge)", ("unit", "SITE/GROUP", "the group (lab/g1)")),
        (
            "client",
            "a task-submitting login (region-client-NAME)",
            ("name", None, "the NAME it was added as"),
        ),
        ("viewer", "a read-only login (region-viewer-NAME)", ("name", None, "the NAME it was added as")),
    ):
        remove = actions.add_parser(
            f"remove-{kind}",
            help=f"delete {what} from the region's broker",
            description=(
                f"Delete {what} from this host's region broker: the broker disconnects it at once and "
                "refuses it from then on. Run it as the user of `prsm-edge region` with the same "
                "--region and --workdir, while the region runs. Says so (exit 1) if no such login exists."
            ),
        )
        remove.add_argument(arg[0], metavar=arg[1], help=arg[2])


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
    if args.action is not None:
        return asyncio.run(_logins(args))
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
                    acl=not args.no_acl,
                    http_dir=dashboard_dir(),
                )
            )
            url = broker.url
            acl = "ACLs: add each group with `prsm-edge region add-group SITE/GROUP`"
            if not broker.acl_enforced:
                acl = "NO ACLs (--no-acl)" if args.no_acl else "NO ACLs (embedded fallback)"
            print(f"{broker.kind} broker for the region at {url}, {acl}", file=sys.stderr, flush=True)
            login, viewer = await _logins_at_start(broker, args.site, args.region, identity.node_id)
            if broker.kind == "mosquitto" and broker.ws_port and dashboard_dir() is not None:
                page = {"site": args.site, "group": args.region, "key": identity.public_key.hex()}
                if viewer is not None:  # a read-only login for the page, renewed at every start
                    page.update(user=viewer[0], **{"pass": viewer[1]})
                print(
                    f"dashboard: http://127.0.0.1:{broker.ws_port}/#{urlencode(page)}",
                    file=sys.stderr,
                    flush=True,
                )
        else:
            login = (None, None)
        options = RegionOptions(
            site=args.site,
            region=args.region,
            broker_url=url,
            workdir=workdir,
            tier=args.tier,
            dead_after_s=args.dead_after_s,
            pinned=pins,
            username=login[0],
            password=login[1],
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


async def _logins_at_start(
    broker: RunningBroker, site: str, region: str, node_id: str
) -> tuple[tuple[str | None, str | None], tuple[str, str] | None]:
    """Set up the region broker's roles; fresh logins for the regional coordinator and the dashboard."""
    if not broker.acl_enforced:
        return (None, None), None
    username, password = f"region-{node_id}", secrets.token_urlsafe(24)
    viewer = ("region-viewer", secrets.token_urlsafe(18))
    async with DynSec.for_broker(broker) as dynsec:
        await dynsec.setup_region(site, region)
        await dynsec.add_client(username, password, ROLE_REGION)
        await dynsec.add_client(*viewer, ROLE_REGION_VIEWER)
    return (username, password), viewer


def _unit(text: str) -> tuple[str, str]:
    site, _, group = text.partition("/")
    if not (topics.valid_segment(site) and topics.valid_segment(group)):
        raise ConfigError("SITE/GROUP: two names of 1–64 characters of a-z, 0-9, '_' or '-', e.g. lab/g1")
    return site, group


async def _remove(dynsec: DynSec, args: argparse.Namespace) -> int:
    """Delete one login (and a group's own role); 1 if there was none."""
    if args.action == "remove-group":
        site, group = _unit(args.unit)
        username, role = unit_username(site, group), unit_role(site, group)
    else:
        if not _CLIENT_NAME.fullmatch(args.name):
            raise ConfigError("a login name is 1–40 characters of a-z, 0-9, '_' or '-'")
        username, role = f"region-{args.action.removeprefix('remove-')}-{args.name}", None
    if not await dynsec.remove_login(username, role):
        print(f"no login {username} on the region's broker {args.site}/{args.region}: nothing removed")
        return 1
    print(f"removed login {username} from {args.site}/{args.region}: it is disconnected and refused")
    return 0


async def _logins(args: argparse.Namespace) -> int:
    folder = (args.workdir or paths.data_dir()) / "region" / args.region / "broker"
    if not (folder / "mosquitto.conf").is_file():
        raise LocalError(
            f"no region broker at {folder}: run this on the host of `prsm-edge region --site {args.site} "
            f"--region {args.region}` (same --workdir, as the same user), while it runs"
        )
    broker = read_local_broker(folder)
    async with DynSec(
        broker.connect_host, broker.port, broker.admin_username, broker.admin_password
    ) as dynsec:
        await dynsec.setup_region(args.site, args.region)
        if args.action.startswith("remove-"):
            return await _remove(dynsec, args)
        password = secrets.token_hex(16)  # hex: never starts with '-', which a command line would misread
        if args.action in ("add-client", "add-viewer"):
            if not _CLIENT_NAME.fullmatch(args.name):
                raise ConfigError("a login name is 1–40 characters of a-z, 0-9, '_' or '-'")
            client = args.action == "add-client"
            kind, role = ("client", ROLE_REGION_CLIENT) if client else ("viewer", ROLE_REGION_VIEWER)
            username = f"region-{kind}-{args.name}"
            await dynsec.add_client(username, password, role)
            what = "may submit tasks at" if kind == "client" else "may read (only)"
            print(f"login {username} {what} {args.site}/{args.region}; its password:")
            print(f"  {password}")
            return 0
        if args.password is not None:
            if len(args.password) < 16 or any(c.isspace() for c in args.password):
                raise ConfigError("--password needs at least 16 characters and no spaces")
            password = args.password
        site, group = _unit(args.unit)
        username = await dynsec.add_unit(args.site, args.region, site, group, password)
    host = args.url_host or broker.connect_host
    shown = f"[{host}]" if ":" in host else host
    print(f"login {username} for the gateway and bridge of {site}/{group} (a new password each run);")
    print("on the group's host, beside `prsm-edge coordinate`, run:")
    print(
        f"  prsm-edge gateway --site {site} --group {group} --uplink mqtt://{shown}:{broker.port} "
        f"--region-site {args.site} --region {args.region} --uplink-username {username} "
        f"--uplink-password={password}"
    )
    return 0
