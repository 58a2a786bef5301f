"""The core package installs from binary wheels on 64-bit Raspberry Pi OS and Jetson (aarch64, 3.11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "platform_check.py"


def test_core_dependencies_resolve_as_aarch64_wheels() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--target", "pi64", "--strict"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    if done.returncode == 2 and "cannot be reached" in done.stderr:
        pytest.skip(f"the package index is not reachable here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "package" not in line]
    names = {row.split("|")[1].strip() for row in rows}
    # The compiled dependencies are the ones that matter: each must come as an aarch64 wheel.
    assert {"pydantic-core", "msgspec", "pynacl", "psutil", "cbor2", "cffi"} <= names
    for row in rows:
        assert "aarch64.whl" in row or "-none-any.whl" in row, row
