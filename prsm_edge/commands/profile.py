"""``prsm-edge profile list|show|detect``: the firmware profiles, and which one this device is."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from prsm_edge.node import detect, profiles


def register(sub: Any) -> None:
    """Add the ``profile`` command and its subcommands."""
    parser = sub.add_parser(
        "profile",
        help="list the firmware profiles, show one, or see which one this device matches",
        description=(
            "Firmware profiles say, per device class, what a device contributes by default, its thermal "
            "and power limits, its benchmarks, whether it may coordinate, and how it is installed."
        ),
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser("list", help="every profile, the one matching this device marked with *")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_list)
    p = verbs.add_parser("show", help="one profile in full")
    p.add_argument("name", help="profile name, e.g. raspberry_pi")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_show)
    p = verbs.add_parser("detect", help="which profile this device matches, and why (hint by hint)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_detect)


def _matched() -> tuple[detect.Detected, profiles.Profile]:
    found = detect.detect()
    return found, profiles.match_profile(found, os.environ)


def _list(args: argparse.Namespace) -> int:
    _, here = _matched()
    every = sorted(profiles.load_profiles().values(), key=lambda p: (-p.priority, p.name))
    if args.json:
        print(json.dumps({"matched": here.name, "profiles": [p.name for p in every]}, indent=2))
        return 0
    for p in every:
        mark = "*" if p.name == here.name else " "
        print(f"{mark} {p.name:<16} {p.priority:>3}  {p.description}")
    print(f"\n* matches this device (highest priority wins; {profiles.GENERIC} is the fallback)")
    return 0


def _show(args: argparse.Namespace) -> int:
    p = profiles.profile_named(args.name)
    if args.json:
        print(json.dumps(p.model_dump(), indent=2))
        return 0
    s = p.service
    print(f"{p.name}: {p.description}")
    print(f"  priority          {p.priority}")
    print(f"  may coordinate    {'yes' if p.can_coordinate else 'no'}")
    print(f"  limits            {p.limits.max_cpu_temperature:g} °C, {p.limits.max_power_consumption:g} W,")
    print(f"                    battery floor {p.min_battery_percent:g} %")
    print(f"  benchmarks        {', '.join(p.benchmarks)}")
    print(f"  installed by      {s.install}; extras: {', '.join(s.extras) or 'none'}")
    print(f"  service limits    CPUQuota {s.cpu_quota_percent} %, MemoryMax {s.memory_max_mb} MiB")
    print(f"  devices allowed   {', '.join(s.devices) or 'none'}")
    print("  default settings")
    for key, value in p.settings_defaults().items():
        print(f"    {key:<34} {value}")
    print("  how to provision it")
    for line in p.provision.strip().splitlines():
        print(f"    {line}")
    return 0


def _detect(args: argparse.Namespace) -> int:
    found, here = _matched()
    every = sorted(profiles.load_profiles().values(), key=lambda p: (-p.priority, p.name))
    rows = [(p, p.detect.checks(found, os.environ)) for p in every]
    if args.json:
        out = {
            "matched": here.name,
            "candidates": [
                {
                    "name": p.name,
                    "priority": p.priority,
                    "matches": all(held for _, held in checks),
                    "hints": [{"hint": text, "holds": held} for text, held in checks],
                }
                for p, checks in rows
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"this device is {here.name}: {here.description}")
    for p, checks in rows:
        verdict = "matches" if all(held for _, held in checks) else "does not match"
        print(f"  {p.name:<16} (priority {p.priority:>3}) {verdict}")
        for text, held in checks:
            print(f"      {'✓' if held else '✗'} {text}")
        if not checks:
            print("      (no hints: matches any device)")
    return 0
