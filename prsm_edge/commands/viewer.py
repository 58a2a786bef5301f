"""``prsm-edge viewer add NAME | list | remove NAME``: read-only broker logins for the operator dashboard.

A viewer is a dynamic-security client with the group's ``prsm-viewer`` role: it may subscribe to the
group's tree, the site's gateway states and ``$SYS/broker/#``, and publish nothing. Run on the host of
``prsm-edge coordinate`` (it reads that broker's admin secret); ``add`` prints the dashboard's URL with
the login in the URL fragment, which the browser never sends to any server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from prsm_edge import paths, settings
from prsm_edge.errors import PrsmEdgeError
from prsm_edge.identity import KEY_FILE, load_or_create
from prsm_edge.io.brokerinfo import LocalBroker, broker_folder, read_local_broker
from prsm_edge.io.dynsec import ROLE_HOMEASSISTANT, ROLE_VIEWER, DynSec

PREFIX = "viewer-"
_NAME = re.compile(r"[a-z0-9_-]{1,40}")


def register(sub: Any) -> None:
    """Add the ``viewer`` command."""
    parser = sub.add_parser(
        "viewer",
        help="create, list or remove read-only broker logins for the operator dashboard",
        description=(
            "Manage read-only logins (the prsm-viewer role) on the broker that `prsm-edge coordinate` runs "
            "on this host. Needs Mosquitto with dynamic security, as `coordinate` starts it."
        ),
    )
    parser.add_argument("--group", default="g1", help="the coordinated group (default g1)")
    parser.add_argument("--site", default=None, help="site name (default: from settings)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="the coordinator's state folder (default: the data dir)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{add,list,remove}")
    add = actions.add_parser("add", help="create a viewer login (or give it a new password)")
    add.add_argument("name", help="1–40 characters of a-z, 0-9, '_' or '-'")
    add.add_argument(
        "--url-host",
        default=None,
        help="host name for the printed URL (default: 127.0.0.1; use the LAN name for other machines)",
    )
    add.add_argument(
        "--homeassistant",
        action="store_true",
        help="a login for Home Assistant's MQTT integration instead: reads the discovery, announces "
        "Home Assistant's own status, and may command the controls of nodes whose owners turned them on "
        "(homeassistant_controls)",
    )
    actions.add_parser("list", help="list viewer logins")
    remove = actions.add_parser("remove", help="delete a viewer login (disconnects it)")
    remove.add_argument("name")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    name = getattr(args, "name", None)
    if name is not None and not _NAME.fullmatch(name):
        print("prsm-edge: error: a viewer name is 1–40 characters of a-z, 0-9, '_' or '-'", file=sys.stderr)
        return 2
    try:
        folder = broker_folder(args.workdir or paths.data_dir(), args.group)
        broker = read_local_broker(folder)
        return asyncio.run(_act(args, broker, _coordinator_key(folder.parent / "coordinator")))
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 1


def dashboard_url(
    host: str, ws_port: int, *, site: str, group: str, username: str, password: str, key: str = ""
) -> str:
    """The dashboard's address on the broker's WebSocket listener, with the login in the fragment."""
    fragment = {"site": site, "group": group, "user": username, "pass": password}
    if key:
        fragment["key"] = key
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{ws_port}/#{urlencode(fragment)}"


def _coordinator_key(folder: Path) -> str:
    """The hex public key of the coordinator on this host (the page pins it), or '' if it has none yet."""
    if not (folder / KEY_FILE).is_file():
        return ""
    return load_or_create(folder).public_key.hex()


async def open_viewer(
    dynsec: DynSec, name: str, *, host: str, ws_port: int, site: str, group: str, key: str = ""
) -> str:
    """Create (or reset) viewer ``name`` on a running broker and return its dashboard URL."""
    username, password = PREFIX + name, secrets.token_urlsafe(18)
    await dynsec.add_client(username, password, ROLE_VIEWER)
    return dashboard_url(host, ws_port, site=site, group=group, username=username, password=password, key=key)


async def _act(args: argparse.Namespace, broker: LocalBroker, key: str) -> int:
    async with DynSec(
        broker.connect_host, broker.port, broker.admin_username, broker.admin_password
    ) as dynsec:
        if args.action == "add" and args.homeassistant:
            username, password = PREFIX + args.name, secrets.token_urlsafe(18)
            await dynsec.add_client(username, password, ROLE_HOMEASSISTANT)
            print(f"Home Assistant login for {broker.connect_host}:{broker.port}: {username}, password:")
            print(f"  {password}")
            print("turn discovery on with `prsm-edge coordinate --homeassistant` (or the setting)")
            return 0
        if args.action == "add":
            username, password = PREFIX + args.name, secrets.token_urlsafe(18)
            await dynsec.add_client(username, password, ROLE_VIEWER)
            site = args.site or settings.load().site
            print(f"viewer {username} can read {site}/{args.group} (and nothing else); its password:")
            print(f"  {password}")
            if broker.ws_port is None:
                print(
                    "this broker has no WebSocket listener: restart `coordinate` with --ws-port for the page"
                )
                return 0
            host = args.url_host or "127.0.0.1"
            url = dashboard_url(
                host,
                broker.ws_port,
                site=site,
                group=args.group,
                username=username,
                password=password,
                key=key,
            )
            print("dashboard (the part after # stays in the browser):")
            print(f"  {url}")
            if not broker.serves_dashboard:
                print("note: this broker serves no page; open the shipped index.html with this fragment")
            return 0
        if args.action == "remove":
            await dynsec.command({"command": "deleteClient", "username": PREFIX + args.name})
            print(f"removed viewer {PREFIX + args.name}")
            return 0
        for username in await _viewers(dynsec):
            print(username)
        return 0


async def _viewers(dynsec: DynSec) -> list[str]:
    """The clients that hold the viewer role."""
    (listing,) = await dynsec.command({"command": "listClients", "verbose": True})
    clients = listing.get("data", {}).get("clients", [])
    names = []
    for client in clients if isinstance(clients, list) else []:
        if not isinstance(client, dict):
            continue
        roles = {r.get("rolename") for r in client.get("roles", []) if isinstance(r, dict)}
        if roles & {ROLE_VIEWER, ROLE_HOMEASSISTANT}:
            names.append(str(client.get("username")))
    return sorted(names)
