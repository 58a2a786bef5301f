"""``prsm-edge ledger``: verify and show a group's FTNS ledger (every entry signed by its coordinator)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prsm_edge import paths
from prsm_edge.errors import LocalError, PrsmEdgeError
from prsm_edge.identity import KEY_FILE, load_or_create
from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol.earnings import recompute
from prsm_edge.protocol.envelope import node_id_for
from prsm_edge.protocol.ledger import BrokenChain, Ledger, LedgerKind, open_signed_chain
from prsm_edge.protocol.messages import MICRO, LedgerEntry


def register(sub: Any) -> None:
    """Add the ``ledger`` command."""
    parser = sub.add_parser(
        "ledger",
        help="verify or show a group's FTNS ledger",
        description=(
            "Each ledger entry is a COSE_Sign1 signed by the group's coordinator and names the hash of the "
            "entry before it. 'verify' checks every signature with the coordinator's public key, the chain, "
            "the movement rules and, for earnings, that the amount follows from its recorded inputs."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, text in (
        ("verify", _verify, "check every signature, the chain, and each credit's formula"),
        ("show", _show, "list entries (one node's with --node)"),
    ):
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument("--group", default="g1", help="group name (default g1)")
        p.add_argument(
            "--db",
            type=Path,
            default=None,
            help="the ledger file (default: DATA_DIR/coordinator/GROUP/ledger.sqlite)",
        )
        p.add_argument(
            "--key",
            default=None,
            metavar="HEX",
            help="the coordinator's Ed25519 public key, 64 hex digits (default: the local coordinator's)",
        )
        p.add_argument("--node", default=None, help="only this node's entries (a member checking its own)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)


def _db(args: argparse.Namespace) -> Path:
    path: Path = args.db or paths.data_dir() / "coordinator" / args.group / "ledger.sqlite"
    if not path.is_file():
        raise LocalError(f"no ledger at {path}; pass --db with the file (and --group if it is not g1)")
    return path


def _key(args: argparse.Namespace, db: Path) -> bytes:
    if args.key:
        try:
            key = bytes.fromhex(args.key)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise LocalError("--key must be the coordinator's 32-byte public key as 64 hex digits")
        return key
    if (db.parent / KEY_FILE).is_file():
        return load_or_create(db.parent).public_key
    raise LocalError(f"no coordinator key beside {db}; pass --key with the coordinator's public key")


def _open(args: argparse.Namespace) -> tuple[Ledger, bytes]:
    db = _db(args)
    key = _key(args, db)
    store = LedgerStore(db)
    try:
        rows = store.signed()
    finally:
        store.close()
    return open_signed_chain(rows, key), key


def _formula_errors(entries: list[LedgerEntry]) -> list[str]:
    errors = []
    for e in entries:
        if e.kind == LedgerKind.CREDIT and e.inputs.get("formula"):
            try:
                expected = recompute(e.inputs)
            except PrsmEdgeError as exc:
                errors.append(f"entry {e.index}: inputs do not recompute: {exc}")
                continue
            if expected != e.amount_micro:
                errors.append(f"entry {e.index}: amount {e.amount_micro} but its inputs give {expected}")
    return errors


def _verify(args: argparse.Namespace) -> int:
    try:
        ledger, key = _open(args)
    except BrokenChain as exc:
        print(f"ledger INVALID: {exc}", file=sys.stderr)
        return 1
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 2
    mine = [e for e in ledger.entries if args.node is None or e.account == args.node]
    errors = _formula_errors(mine)
    result = {
        "valid": not errors,
        "entries": len(ledger),
        "head": ledger.head.hex(),
        "coordinator": node_id_for(key),
        "checked_entries": len(mine),
        "formula_errors": errors,
    }
    if args.node:
        result |= {
            "node": args.node,
            "balance_micro": ledger.balance(args.node),
            "stake_micro": ledger.stake(args.node),
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        state = "valid" if not errors else "INVALID"
        signer = result["coordinator"]
        print(f"ledger {state}: {len(ledger)} entries signed by {signer}, head {ledger.head.hex()}")
        if args.node:
            print(
                f"{args.node}: {len(mine)} entries, balance {ledger.balance(args.node) / MICRO:.6f} FTNS, "
                f"stake {ledger.stake(args.node) / MICRO:.6f} FTNS"
            )
        for line in errors:
            print(f"  {line}")
    return 0 if not errors else 1


def _show(args: argparse.Namespace) -> int:
    try:
        ledger, _ = _open(args)
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 2
    mine = [e for e in ledger.entries if args.node is None or e.account == args.node]
    if args.json:
        rows = [
            {
                "index": e.index,
                "account": e.account,
                "kind": e.kind,
                "amount_micro": e.amount_micro,
                "key": e.key,
                "at_ms": e.at_ms,
                "memo": e.memo,
                "inputs": e.inputs,
            }
            for e in mine
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'#':>6}  {'kind':<9} {'account':<24} {'FTNS':>14}  key")
    for e in mine:
        print(f"{e.index:>6}  {e.kind:<9} {e.account:<24} {e.amount_micro / MICRO:>14.6f}  {e.key}")
    return 0
