"""``prsm-edge group``: the host's membership controls — enrolment tokens, pending joins, approvals."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prsm_edge import paths
from prsm_edge.coordinator.membership import MembershipStore
from prsm_edge.errors import PrsmEdgeError


def register(sub: Any) -> None:
    """Add the ``group`` command."""
    parser = sub.add_parser(
        "group",
        help="manage who may join a group this machine hosts (tokens, approvals)",
        description=(
            "Membership controls of a group hosted here with `prsm-edge coordinate`. Under the 'token' join "
            "policy a node joins with a token made by `group token create` (prsm-edge join --token TOKEN); "
            "under 'approval' a join waits until `group approve NODE`. The running coordinator picks "
            "changes up within a second."
        ),
    )
    parser.add_argument("--group", default="g1", help="the hosted group (default g1)")
    parser.add_argument("--workdir", type=Path, default=None, help="state folder (default: the data dir)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    token = actions.add_parser("token", help="enrolment tokens", description="Enrolment tokens.")
    token_actions = token.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    create = token_actions.add_parser(
        "create",
        help="make a token for new members (printed once)",
        description="Make an enrolment token; it is printed once and stored only here.",
    )
    create.add_argument("--uses", type=int, default=1, help="how many joins it admits (default 1)")
    create.add_argument("--hours", type=float, default=24.0, help="how long it is valid (default 24)")
    create.set_defaults(handler=_token_create)
    pending = actions.add_parser(
        "pending", help="list joins waiting for approval", description="List joins waiting for approval."
    )
    pending.set_defaults(handler=_pending)
    approve = actions.add_parser(
        "approve", help="admit a waiting node", description="Admit a node whose join waits for approval."
    )
    approve.add_argument("node", help="the node id, as `group pending` lists it")
    approve.set_defaults(handler=_approve)


def _store(args: argparse.Namespace) -> MembershipStore:
    """The group's membership database: where `coordinate` keeps it (beside a broker it started, or not)."""
    base = (args.workdir or paths.data_dir()) / "coordinator" / args.group
    hosted = base / "coordinator"
    folder = hosted if hosted.is_dir() or not (base / "membership.sqlite").exists() else base
    return MembershipStore(folder / "membership.sqlite")


def _token_create(args: argparse.Namespace) -> int:
    if args.uses < 1 or not args.hours > 0:
        print("prsm-edge: error: --uses must be at least 1 and --hours positive", file=sys.stderr)
        return 2
    try:
        store = _store(args)
        token = store.create_token(int(time.time() * 1000), uses=args.uses, ttl_s=args.hours * 3600)
        store.close()
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 1
    print(token)
    print(
        f"valid for {args.uses} join(s) within {args.hours:g} h: prsm-edge join --token {token}",
        file=sys.stderr,
    )
    return 0


def _pending(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
        items = store.pending()
        store.close()
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 1
    if not items:
        print("no joins waiting", file=sys.stderr)
    for item in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item.requested_ms / 1000))
        state = "approved" if item.approved else "waiting"
        print(f"{item.node}  key {item.public_key.hex()[:16]}…  since {when} UTC  {state}")
    return 0


def _approve(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
        ok = store.approve(args.node)
        store.close()
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(
            f"prsm-edge: error: no join of {args.node} is waiting (see `prsm-edge group pending`)",
            file=sys.stderr,
        )
        return 1
    print(f"approved {args.node}; the coordinator admits it within a second", file=sys.stderr)
    return 0
