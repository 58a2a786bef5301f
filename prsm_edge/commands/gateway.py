"""``prsm-edge gateway``: connect this group's broker to its region's broker.

On the host of ``prsm-edge coordinate`` (the same ``--group`` and ``--workdir``), with no ``--local``, the
gateway sets itself up against that coordinate-managed Mosquitto: it gives itself a least-privilege login
(:func:`~prsm_edge.io.dynsec.gateway_role_acls`) through the broker's dynamic-security admin, and drops its
rendered bridge into the broker's ``bridges`` folder, where ``coordinate`` picks it up by restarting its
broker once (Mosquitto 2.0.11 has no bridge hot-add). Against any other broker (``--local URL``) the
operator includes ``--bridge-conf FILE`` and runs that broker's ACLs. ``prsm-edge gateway remove-login``
undoes that set-up: it deletes the gateway's login on that broker and its bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from pathlib import Path
from typing import Any

import aiomqtt

from prsm_edge import paths, settings
from prsm_edge.errors import BrokerError, ConfigError, LocalError
from prsm_edge.gateway.bridge import render_bridge, write_bridge
from prsm_edge.gateway.service import Gateway, GatewayOptions
from prsm_edge.identity import KEY_FILE, load_or_create
from prsm_edge.io.bridges import install_bridge, remove_bridge
from prsm_edge.io.broker import BRIDGE_DIR
from prsm_edge.io.brokerinfo import LocalBroker, broker_folder, read_local_broker
from prsm_edge.io.dynsec import DynSec, gateway_role, gateway_username


def register(sub: Any) -> None:
    """Add the ``gateway`` command."""
    parser = sub.add_parser(
        "gateway",
        help="carry this group's summary, leases and evidence up to its region (and tasks down)",
        description=(
            "Run a group's gateway: the group's signed summary goes up as retained state, lease reports "
            "and evidence as an ordered stream kept on disk (SQLite) while the region is unreachable, "
            "and the gateway's own link state is published on both brokers. Task and drill-down "
            "requests come down through a Mosquitto bridge. On the host of `prsm-edge coordinate` "
            "(same --group and --workdir) and without --local, the gateway gives itself a "
            "least-privilege login on that broker and installs the bridge there (the coordinator "
            "restarts its broker once to carry it). For a broker of your own, pass --local URL and "
            "include what --bridge-conf writes."
        ),
    )
    parser.add_argument("--site", default=None, help="this group's site (default: from settings)")
    parser.add_argument("--group", default="g1", help="this group's name (default g1)")
    parser.add_argument(
        "--local",
        default=None,
        metavar="URL",
        help="the group's broker, when it is not the one `prsm-edge coordinate` runs on this host "
        "(default: that one, set up automatically; else mqtt://127.0.0.1:1883)",
    )
    parser.add_argument(
        "--local-username", default=None, help="login on a --local broker (a managed one gets one made)"
    )
    parser.add_argument("--local-password", default=None, help="password on a --local broker")
    parser.add_argument(
        "--uplink",
        action="append",
        default=None,
        metavar="URL",
        help="the region's broker, mqtt://HOST:PORT; repeat for a standby (tried in order)",
    )
    parser.add_argument("--region-site", default="region", help="the region's site segment (default region)")
    parser.add_argument("--region", default="r1", help="the region's name (default r1)")
    parser.add_argument("--region-key", default=None, help="pin the region coordinator's public key (hex)")
    parser.add_argument(
        "--ttl-s", type=float, default=86_400, help="lifetime of a stream item (default 1 day)"
    )
    parser.add_argument(
        "--max-buffered", type=int, default=100_000, help="items kept on disk while down (oldest dropped)"
    )
    parser.add_argument("--replay-rate", type=float, default=50.0, help="records/s when replaying a backlog")
    parser.add_argument(
        "--uplink-username",
        default=None,
        help="login on the region's broker (`prsm-edge region add-group SITE/GROUP` prints it)",
    )
    parser.add_argument(
        "--uplink-password", default=None, help="password on the region's broker (visible to `ps`)"
    )
    parser.add_argument(
        "--uplink-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the region broker's password from FILE instead (keep it owner-only)",
    )
    parser.add_argument(
        "--bridge-conf",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the Mosquitto bridge section for the group's broker to FILE (then keep running)",
    )
    parser.add_argument("--bridge-only", action="store_true", help="only write --bridge-conf, then exit")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="state folder (default: the data dir)")
    parser.set_defaults(handler=_run, action=None)
    actions = parser.add_subparsers(
        dest="action", metavar="{remove-login}", title="undoing the set-up (without one: run the gateway)"
    )
    actions.add_parser(
        "remove-login",
        help="delete this gateway's login on the group's broker, and its bridge",
        description=(
            "On the host of `prsm-edge coordinate` (same --group and --workdir, as the same user, while "
            "it runs): delete the login the gateway gave itself on that broker (the broker disconnects "
            "it at once and refuses it from then on) and remove its bridge from the broker's bridges "
            "folder (`coordinate` restarts its broker without it). Stop the gateway first, or it makes "
            "both again when it restarts. The group's login on the region's broker is the region's: "
            "`prsm-edge region remove-group SITE/GROUP` there. Exit 1 if there was nothing to remove."
        ),
    )


def _run(args: argparse.Namespace) -> int:
    if args.action == "remove-login":
        return asyncio.run(_remove_login(args))
    site = args.site or settings.load().site
    if args.uplink_password_file is not None:
        try:
            args.uplink_password = args.uplink_password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--uplink-password-file {args.uplink_password_file}: {exc.strerror}") from None
    uplinks = tuple(args.uplink or ["mqtt://127.0.0.1:1884"])
    root = args.workdir or paths.data_dir()
    workdir = root / "gateway" / args.group
    identity = load_or_create(workdir)
    managed = _managed_broker(root, args)
    # The bridge's local login is the gateway's: what comes down the bridge is checked against its role.
    local_username = gateway_username(identity.node_id) if managed is not None else args.local_username
    bridge = render_bridge(
        site=site,
        group=args.group,
        gateway=identity.node_id,
        region_site=args.region_site,
        region=args.region,
        uplinks=uplinks,
        username=args.uplink_username,
        password=args.uplink_password,
        local_username=local_username,
    )
    if args.bridge_conf is not None:
        write_bridge(args.bridge_conf, bridge)
        print(f"wrote the bridge configuration to {args.bridge_conf}", file=sys.stderr)
        if args.bridge_only:
            return 0
    elif args.bridge_only:
        raise ConfigError("--bridge-only needs --bridge-conf FILE")
    if args.ttl_s <= 0 or args.max_buffered < 1 or args.replay_rate <= 0:
        raise ConfigError("--ttl-s, --max-buffered and --replay-rate must be positive")
    try:
        region_key = bytes.fromhex(args.region_key) if args.region_key else None
    except ValueError:
        raise ConfigError("--region-key must be the region coordinator's public key in hex") from None
    local_url, local_password = args.local or "mqtt://127.0.0.1:1883", args.local_password
    if managed is not None:
        local_url = f"mqtt://{managed.connect_host}:{managed.port}"
        local_password = secrets.token_urlsafe(24)
        folder = broker_folder(root, args.group) / BRIDGE_DIR
        asyncio.run(_set_up(managed, site, args.group, identity.node_id, local_password, folder, bridge))
    options = GatewayOptions(
        site=site,
        group=args.group,
        local_url=local_url,
        uplink_urls=uplinks,
        region_site=args.region_site,
        region=args.region,
        workdir=workdir,
        ttl_ms=int(args.ttl_s * 1000),
        max_buffered=args.max_buffered,
        replay_rate=args.replay_rate,
        region_key=region_key,
        local_username=local_username,
        local_password=local_password,
        uplink_username=args.uplink_username,
        uplink_password=args.uplink_password,
    )
    gateway = Gateway(identity, options)
    print(f"gateway {gateway.gateway_id}: {site}/{args.group} -> {' | '.join(uplinks)}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(gateway, args.seconds))
    return 0


def _managed_broker(root: Path, args: argparse.Namespace) -> LocalBroker | None:
    """The broker `prsm-edge coordinate` runs for this group on this host, when no --local names another."""
    if args.local is not None:
        return None
    folder = broker_folder(root, args.group)
    if not (folder / "mosquitto.conf").is_file():
        if (folder.parent / "coordinator").is_dir():
            raise ConfigError(
                f"the coordinator of {args.group} on this host runs the embedded broker, which cannot carry "
                "a bridge: install mosquitto and restart `prsm-edge coordinate`, or pass --local URL"
            )
        return None
    return read_local_broker(folder)


async def _set_up(
    broker: LocalBroker, site: str, group: str, gateway_id: str, password: str, folder: Path, bridge: str
) -> None:
    """Give the gateway its login on the coordinate-managed broker, then install its bridge there."""
    try:
        async with DynSec(
            broker.connect_host, broker.port, broker.admin_username, broker.admin_password
        ) as dynsec:
            username = await dynsec.add_gateway(site, group, gateway_id, password)
    except BrokerError as exc:
        raise BrokerError(
            f"could not make the gateway's login on the broker of `prsm-edge coordinate --group {group}` "
            f"({exc}); start `prsm-edge coordinate` first (same --group and --workdir), or pass --local URL "
            "for a broker of your own"
        ) from exc
    print(f"gateway login {username} on {broker.connect_host}:{broker.port}", file=sys.stderr)
    if await asyncio.to_thread(install_bridge, folder, f"gateway-{group}", bridge):
        print(
            f"installed the bridge in {folder}; `prsm-edge coordinate` restarts its broker to carry it",
            file=sys.stderr,
            flush=True,
        )


async def _remove_login(args: argparse.Namespace) -> int:
    """Delete the gateway's login on the coordinate-managed broker and its bridge there."""
    root = args.workdir or paths.data_dir()
    managed = None if args.local is not None else _managed_broker(root, args)
    if managed is None:
        raise LocalError(
            f"no broker of `prsm-edge coordinate --group {args.group}` under {root}: run this on its host "
            "(same --group and --workdir, as the same user); on a broker of your own, delete the "
            "gateway's login with that broker's tools"
        )
    key_dir = root / "gateway" / args.group
    removed = []
    if (key_dir / KEY_FILE).is_file():
        gateway_id = load_or_create(key_dir).node_id
        try:
            async with DynSec(
                managed.connect_host, managed.port, managed.admin_username, managed.admin_password
            ) as dynsec:
                if await dynsec.remove_login(gateway_username(gateway_id), gateway_role(gateway_id)):
                    removed.append(f"login {gateway_username(gateway_id)}")
        except (BrokerError, aiomqtt.MqttError) as exc:
            raise BrokerError(
                f"could not reach the broker of `prsm-edge coordinate --group {args.group}` ({exc}); "
                "is it running?"
            ) from exc
    name = f"gateway-{args.group}"
    if await asyncio.to_thread(remove_bridge, broker_folder(root, args.group) / BRIDGE_DIR, name):
        removed.append(f"bridge {name}.conf (the coordinator restarts its broker without it)")
    if not removed:
        print(f"no gateway login or bridge for {args.group} on this host: nothing removed")
        return 1
    print(f"removed the gateway of {args.group}: " + "; ".join(removed))
    return 0


async def _serve(gateway: Gateway, seconds: float | None) -> None:
    task = asyncio.create_task(gateway.run())
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    try:
        while deadline is None or loop.time() < deadline:
            await asyncio.sleep(min(5.0, seconds or 5.0))
            link = gateway.link
            up = "up" if gateway.uplink.connected.is_set() and link.region_online else "down"
            print(
                f"uplink {up}, coordinator {link.coordinator}, bridge {link.bridge}, "
                f"buffered {len(gateway.buffer)}, sent {link.sent} (replayed {link.replayed}), "
                f"dropped {gateway.buffer.dropped}, expired {gateway.buffer.expired}",
                flush=True,
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
