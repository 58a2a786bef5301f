"""``prsm-edge bench``: run the benchmark suite on this device and show what it measured."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from prsm_edge import paths
from prsm_edge.errors import ConfigError
from prsm_edge.node import bench


def register(sub: Any) -> None:
    """Add the ``bench`` command."""
    parser = sub.add_parser("bench", help="measure this device's CPU, memory, storage, network, GPU, TFLite")
    parser.add_argument(
        "--only",
        default=",".join(bench.BENCHMARKS),
        help=f"comma-separated benchmarks to run (default: {','.join(bench.BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="much shorter runs (less accurate)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON on stdout")
    parser.add_argument("--broker", metavar="URL", default=None, help="broker for the network benchmark")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the storage test file")
    parser.add_argument("--site", default="local", help="topic-tree site for the network echo topic")
    parser.add_argument("--group", default="bench", help="topic-tree group for the network echo topic")
    parser.set_defaults(handler=_run)


class _StderrProgress:
    """One line on stderr per benchmark each time it passes another quarter."""

    def __init__(self) -> None:
        self._shown: dict[str, int] = {}

    def __call__(self, name: str, fraction: float) -> None:
        quarter = int(fraction * 4)
        if self._shown.get(name, -1) >= quarter:
            return
        self._shown[name] = quarter
        print(f"bench {name:<8} {quarter * 25:3d}%", file=sys.stderr, flush=True)


def _format(value: float, unit: str) -> str:
    if unit in ("B/s", "B"):
        for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {prefix}{unit}"
        return f"{value:.0f} {unit}"
    if unit == "s":
        return f"{value * 1e3:.3f} ms"
    if unit == "FLOP/s":
        return f"{value / 1e12:.2f} TFLOP/s"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{prefix} {unit}"
    return f"{value:.3g} {unit}"


def _table(result: bench.SuiteResult) -> str:
    m = result.machine
    lines = [
        f"{m.system} {m.release} {m.machine}, {m.logical_cpus} CPUs, "
        f"{m.memory_total_bytes / 2**30:.1f} GiB RAM, Python {m.python}"
        + (" (quick)" if result.quick else ""),
        f"{'benchmark':<10} {'figure':<24} {'value':>22}  status",
    ]
    for res in result.results:
        if not res.figures:
            reason = res.facts.get("reason")
            status = f"{res.status} ({reason})" if reason else res.status
            lines.append(f"{res.name:<10} {'-':<24} {'-':>22}  {status}")
            continue
        for i, fig in enumerate(res.figures):
            name = res.name if i == 0 else ""
            status = res.status if i == 0 else ""
            lines.append(f"{name:<10} {fig.name:<24} {_format(fig.value, fig.unit):>22}  {status}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names:
        raise ConfigError("--only needs at least one benchmark name")
    node_id = None
    if args.broker:
        from prsm_edge import identity

        node_id = identity.load_or_create(None).node_id
    options = bench.Options(site=args.site, group=args.group, node_id=node_id)
    base = args.workdir or paths.data_dir()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=base) as tmp:
        result = bench.run_suite(
            names,
            progress=_StderrProgress(),
            quick=args.quick,
            workdir=Path(tmp),
            broker_url=args.broker,
            options=options,
        )
    if args.json:
        print(result.to_json().decode())
    else:
        print(_table(result))
    return 0
