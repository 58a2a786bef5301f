"""``prsm-edge identity``: show (creating on first use) this node's key and id."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prsm_edge import identity


def register(sub: Any) -> None:
    """Add the ``identity`` command."""
    parser = sub.add_parser("identity", help="this node's key and id")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the node id and public key (creates them if new)")
    show.add_argument("--dir", type=Path, default=None, help="key folder (default: the data dir)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    ident = identity.load_or_create(args.dir)
    info = {
        "node_id": ident.node_id,
        "public_key": ident.public_key.hex(),
        "fingerprint": ident.fingerprint,
        "key_file": str(ident.path),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for name, value in info.items():
            print(f"{name:<12} {value}")
    return 0
