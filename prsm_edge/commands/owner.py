"""``prsm-edge owner pair|list|revoke``: the owner keys allowed to change this node's settings."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prsm_edge import paths
from prsm_edge.commands.api import OWNER_KEY_DIR
from prsm_edge.errors import ConfigError
from prsm_edge.identity import load_or_create
from prsm_edge.node.owner_api import LOCAL_API_FILE
from prsm_edge.node.owners import PAIRING_TTL_MS, OwnerRegistry, cli_owner


def register(sub: Any) -> None:
    """Add the ``owner`` command."""
    parser = sub.add_parser(
        "owner",
        help="pair, list or revoke the owner keys that may change this node's settings",
        description=(
            "Only a node's owner may change its settings: every change is a request signed by an owner "
            "key paired with the node (a key distinct from the node's own). `pair` prints a one-time "
            "code and a link to the agent's local API on this machine, where a browser or another "
            "client proves the code with its key; `pair --cli` pairs this user's command-line key at "
            "once. Run these on the node itself: pairing needs access to its files."
        ),
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="the node's state folder (default: data dir)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    pair = actions.add_parser("pair", help="start pairing: print a one-time code and link")
    pair.add_argument("--cli", action="store_true", help="pair this user's command-line owner key now")
    pair.add_argument("--label", default="", help="a name for the key (with --cli)")
    pair.set_defaults(handler=_pair)
    listing = actions.add_parser("list", help="the paired owner keys")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(handler=_list)
    revoke = actions.add_parser("revoke", help="unpair an owner key")
    revoke.add_argument("owner", help="the owner id (from `prsm-edge owner list`)")
    revoke.set_defaults(handler=_revoke)


def _folder(args: argparse.Namespace) -> Path:
    """The running agent's state folder: `join` keeps it under groups/<site>-<group>-<coordinator>/."""
    base: Path = args.workdir or paths.data_dir()
    running = sorted(base.glob(f"groups/*/{LOCAL_API_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return running[0].parent if running and not (base / LOCAL_API_FILE).exists() else base


def _node_id(args: argparse.Namespace, folder: Path) -> str:
    """The node's id: from its running local API, else from the key `join` keeps (never a new key)."""
    try:
        return str(json.loads((folder / LOCAL_API_FILE).read_text(encoding="utf-8"))["node"])
    except (OSError, ValueError, KeyError):
        base: Path = args.workdir or paths.data_dir()
        keyed = base / "identity" if (base / "identity").is_dir() else folder
        return load_or_create(keyed).node_id


def _pair(args: argparse.Namespace) -> int:
    folder = _folder(args)
    node = _node_id(args, folder)
    registry = OwnerRegistry(folder)
    now = int(time.time() * 1000)
    if args.cli:
        identity, _ = cli_owner(paths.config_dir() / OWNER_KEY_DIR)
        key = registry.add(identity.public_key, args.label or "command line", now)
        print(f"paired the command-line owner key {key.owner} with node {node}")
        return 0
    code = registry.offer_pairing(now)
    try:
        url = str(json.loads((folder / LOCAL_API_FILE).read_text(encoding="utf-8"))["url"])
    except (OSError, ValueError, KeyError):
        url = ""
    print(f"pairing code for node {node}: {code}")
    print(f"valid for {PAIRING_TTL_MS // 60000} minutes, once.")
    if url:
        print(f"open on this machine: {url}/ui/#pair={code}&node={node}")
        print(f"(or POST the signed pairing request to {url}/api/v1/owner/pair; see docs/api.md)")
    else:
        print("the agent's local API is not running: start the agent (`prsm-edge join`) and open its page")
    return 0


def _list(args: argparse.Namespace) -> int:
    owners = OwnerRegistry(_folder(args)).owners()
    if args.json:
        rows = [
            {"owner": o.owner, "public_key": o.public_key.hex(), "label": o.label, "paired_ms": o.paired_ms}
            for o in owners.values()
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not owners:
        print("no owner key is paired: run `prsm-edge owner pair`")
    for o in owners.values():
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(o.paired_ms / 1000))
        print(f"{o.owner}  {o.label or '-'}  paired {when} UTC  key {o.public_key.hex()[:16]}…")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if not OwnerRegistry(_folder(args)).revoke(args.owner):
        raise ConfigError(f"{args.owner} is not paired with this node (see `prsm-edge owner list`)")
    print(f"revoked {args.owner}: its requests are refused from now on")
    return 0
