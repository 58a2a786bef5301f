"""``prsm-edge detect``: what this device has, the firmware profile it matches, and what it could offer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from prsm_edge.node import detect, profiles


def register(sub: Any) -> None:
    """Add the ``detect`` command."""
    parser = sub.add_parser(
        "detect",
        help="detect CPU, memory, storage, network, sensors, battery, GPUs and TPUs",
        description="Detect this device's resources. What the device lacks is shown as absent, with why.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--raw", action="store_true", help="print the raw readings (JSON, the format of test fixtures)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder whose free space is offered")
    parser.set_defaults(handler=_run)


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.1f} GB"


def _run(args: argparse.Namespace) -> int:
    raw = detect.read_raw(args.data_dir)
    if args.raw:
        print(msgspec.json.format(msgspec.json.encode(raw), indent=2).decode())
        return 0
    found = detect.parse(raw)
    profile = profiles.match_profile(found)
    specs = found.resource_specs()
    if args.json:
        out = {
            "detected": found.to_json(),
            "profile": profile.name,
            "hw_fingerprint": found.hw_fingerprint(),
            "resources": msgspec.to_builtins(specs),
        }
        print(json.dumps(out, indent=2))
        return 0
    for line in _table(found, profile.name):
        print(line)
    print()
    print("resources (before your allocation percentages):")
    for spec in specs:
        print(f"  {spec.type.value:<20} {spec.capacity:>10g} {spec.unit}")
    print(f"hw fingerprint  {found.hw_fingerprint()}")
    return 0


def _table(d: detect.Detected, profile: str) -> list[str]:
    rows: list[tuple[str, str]] = []
    cpu = d.cpu
    freq = f"{cpu.freq_max_mhz:.0f} MHz max" if cpu.freq_max_mhz else "max frequency unknown"
    rows.append(("device", f"{d.device_model or d.system} ({d.release}) → profile {profile}"))
    rows.append(
        (
            "cpu",
            f"{cpu.model or 'model unknown'}, {cpu.architecture}, {cpu.logical_cores} logical / "
            f"{cpu.physical_cores or '?'} physical cores, {freq}",
        )
    )
    rows.append(("memory", f"{_gb(d.memory.total_bytes)} total, {_gb(d.memory.available_bytes)} available"))
    for disk in d.storage:
        rows.append(
            (
                "storage",
                f"{disk.mountpoint} {disk.device} {disk.fstype} {disk.kind}: "
                f"{_gb(disk.free_bytes)} free of {_gb(disk.total_bytes)}",
            )
        )
    for nic in d.network:
        if nic.loopback:
            continue
        speed = f"{nic.speed_mbit} Mbit/s" if nic.speed_mbit else "speed unknown"
        state = "up" if nic.is_up else "down"
        addrs = ", ".join(nic.addresses) or "no address"
        rows.append(("network", f"{nic.name} {state} {speed} {nic.mac or ''} {addrs}"))
    if d.temperatures:
        hot = detect.hottest_cpu(d.temperatures)
        rows.append(("temperature", f"{len(d.temperatures)} sensors, hottest CPU {hot:.1f} °C"))
    else:
        rows.append(("temperature", f"absent: {d.temperatures_status.reason}"))
    if d.battery is not None:
        plugged = {True: "plugged in", False: "on battery", None: "power source unknown"}[
            d.battery.power_plugged
        ]
        rows.append(("battery", f"{d.battery.percent:.0f} %, {plugged}"))
    else:
        rows.append(("battery", f"absent: {d.battery_status.reason}"))
    if d.gpus:
        for gpu in d.gpus:
            facts = [
                f"{gpu.memory_total_bytes / 2**30:.0f} GiB" if gpu.memory_total_bytes else None,
                f"{gpu.sm_count} SMs" if gpu.sm_count else None,
                f"cc {gpu.compute_capability}" if gpu.compute_capability else None,
                f"{gpu.sm_clock_max_mhz} MHz" if gpu.sm_clock_max_mhz else None,
                f"{gpu.power_limit_w:.0f} W" if gpu.power_limit_w else None,
                "integrated" if gpu.integrated else None,
            ]
            rows.append(("gpu", f"{gpu.name}: {', '.join(f for f in facts if f)}"))
    else:
        rows.append(("gpu", f"absent: {d.gpu_status.reason}"))
    acc = d.accelerators
    if acc.edge_tpus:
        for tpu in acc.edge_tpus:
            rows.append(("edge tpu", f"{tpu.kind} {tpu.path} ({tpu.state})"))
    if acc.cloud_tpu_devices:
        rows.append(("cloud tpu", ", ".join(acc.cloud_tpu_devices)))
    if not acc.edge_tpus and not acc.cloud_tpu_devices:
        rows.append(("tpu", f"absent: {acc.status.reason}"))
    runtimes = ", ".join(f"{k} {v}" for k, v in acc.runtimes.items() if v) or "none importable"
    rows.append(("tflite", f"runtimes: {runtimes}"))
    delegate = "loadable" if acc.delegate_loadable else f"not loadable ({acc.delegate_error})"
    rows.append(("edgetpu lib", f"{acc.delegate_library} {delegate}"))
    return [f"{name:<12} {text}" for name, text in rows]
