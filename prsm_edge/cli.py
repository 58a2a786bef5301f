"""The one entry point: ``prsm-edge <command>``.

Each command lives in its own module under :mod:`prsm_edge.commands` (found there, so adding a
command touches no other file) and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the parsed
arguments and returning the exit code. Errors of ours reach the person as one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from prsm_edge import __version__, commands
from prsm_edge.errors import PrsmEdgeError


def _command_modules() -> list[str]:
    """Every module under :mod:`prsm_edge.commands`, alphabetically."""
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every command registered."""
    parser = argparse.ArgumentParser(
        prog="prsm-edge",
        description=(
            "Contribute this device's compute, memory, storage and bandwidth to a verified, "
            "federated resource network, under limits you control."
        ),
    )
    parser.add_argument("--version", action="version", version=f"prsm-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _command_modules():
        module = importlib.import_module(f"prsm_edge.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.handler(args)
    except PrsmEdgeError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
