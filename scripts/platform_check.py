#!/usr/bin/env python3
"""Which of the core package's dependencies install as binary wheels on the devices the project names.

For every dependency of ``prsm-edge`` (without extras), at the version this environment resolved, ask
PyPI with ``pip download --no-deps --only-binary=:all: --platform ... --python-version ...`` for a wheel
of each target platform. A package with no wheel there needs building on the device (a compiler, and
for some a Rust toolchain or a C library); the table says which, so docs/platforms.md can tell owners.

    .venv/bin/python scripts/platform_check.py                   # every target, a Markdown table
    .venv/bin/python scripts/platform_check.py --target pi64 --strict   # exit 1 if one needs building

Needs the package registry (nothing else); run from a checkout with prsm-edge installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement


@dataclass(frozen=True)
class Target:
    """A device platform as pip's --platform/--python-version see it."""

    name: str
    what: str
    python: str
    platforms: tuple[str, ...]


TARGETS = {
    t.name: t
    for t in (
        Target(
            "pi64",
            "Raspberry Pi OS 64-bit (Bookworm, glibc 2.36, Python 3.11); Jetson with Python 3.11",
            "3.11",
            (
                "manylinux_2_17_aarch64",
                "manylinux2014_aarch64",
                "manylinux_2_28_aarch64",
                "manylinux_2_31_aarch64",
            ),
        ),
        Target(
            "pi64-py313",
            "aarch64 Linux with Python 3.13 (Raspberry Pi OS Trixie, Ubuntu 25.04 on Jetson/Pi)",
            "3.13",
            (
                "manylinux_2_17_aarch64",
                "manylinux2014_aarch64",
                "manylinux_2_28_aarch64",
                "manylinux_2_31_aarch64",
            ),
        ),
        Target(
            "pi32",
            "Raspberry Pi OS 32-bit (armv7l, glibc 2.36, Python 3.11)",
            "3.11",
            (
                "manylinux_2_17_armv7l",
                "manylinux2014_armv7l",
                "manylinux_2_28_armv7l",
                "manylinux_2_31_armv7l",
            ),
        ),
        Target(
            # Termux's Python is built against Android's bionic libc, so manylinux wheels do not apply
            # there and PyPI hosts no linux_aarch64 wheels: only pure-Python wheels install as they are.
            "termux",
            "Android in Termux (bionic libc, Python 3.12): only pure-Python wheels apply",
            "3.12",
            ("linux_aarch64",),
        ),
    )
}

# What building each compiled dependency needs on a device without a wheel (from each project's build).
BUILD_NEEDS = {
    "pydantic-core": "a Rust toolchain (maturin); `pkg install rust` in Termux",
    "cbor2": "a Rust toolchain (setuptools-rust); `pkg install rust` in Termux",
    "msgspec": "a C compiler",
    "psutil": "a C compiler and the Python headers",
    "pynacl": "a C compiler; with SODIUM_INSTALL=system and libsodium installed it skips building libsodium",
    "cffi": "a C compiler and libffi (`pkg install libffi` in Termux)",
    "zeroconf": "nothing required: without Cython or a compiler it installs as pure Python",
}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_dependencies() -> dict[str, str]:
    """prsm-edge's dependencies without extras, transitively, at the versions installed here."""
    found: dict[str, str] = {}

    def walk(name: str) -> None:
        key = _key(name)
        if key in found:
            return
        dist = md.distribution(name)
        found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                walk(req.name)

    for text in md.distribution("prsm-edge").requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            walk(req.name)
    return dict(sorted(found.items()))


class RegistryUnreachable(RuntimeError):
    """pip could not reach the package index at all."""


def wheel_for(package: str, version: str, target: Target) -> str | None:
    """The wheel file pip picks for ``target``, or None when only a source build would do."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
        cmd += ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp", "-d", tmp]
        for platform in target.platforms:
            cmd += ["--platform", platform]
        done = subprocess.run([*cmd, f"{package}=={version}"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            names = [p.name for p in Path(tmp).glob("*.whl")]
            return names[0] if names else None
        err = done.stderr
        if "No matching distribution" in err or "Could not find a version" in err:
            return None
        raise RegistryUnreachable(err.strip().splitlines()[-1] if err.strip() else "pip failed")


def check(targets: list[Target]) -> dict[str, dict[str, str | None]]:
    """Per target, per dependency: the wheel, or None."""
    deps = core_dependencies()
    jobs = {(t.name, p): (p, v, t) for t in targets for p, v in deps.items()}
    out: dict[str, dict[str, str | None]] = {t.name: {} for t in targets}
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {key: pool.submit(wheel_for, *args) for key, args in jobs.items()}
        for (tname, package), fut in sorted(futures.items()):
            out[tname][package] = fut.result()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: all")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a dependency needs building")
    args = parser.parse_args()
    targets = [TARGETS[n] for n in (args.target or TARGETS)]
    deps = core_dependencies()
    try:
        result = check(targets)
    except RegistryUnreachable as exc:
        print(f"platform check: the package index cannot be reached ({exc})", file=sys.stderr)
        return 2
    missing = 0
    for t in targets:
        print(f"\n### {t.name}: {t.what}\n")
        print("| package | version | wheel |")
        print("|---|---|---|")
        for package, version in deps.items():
            wheel = result[t.name][package]
            if wheel is None:
                missing += 1
                need = BUILD_NEEDS.get(package, "a source build")
                print(f"| {package} | {version} | none: builds on the device, needing {need} |")
            else:
                kind = "pure Python" if wheel.endswith("-none-any.whl") else "binary"
                print(f"| {package} | {version} | {kind}: `{wheel}` |")
    return 1 if args.strict and missing else 0


if __name__ == "__main__":
    sys.exit(main())
