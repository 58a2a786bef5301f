"""The README's main job: `prsm-edge demo` forms a group on this machine and exits cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import require_mosquitto

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_forms_a_group_and_stops_on_time(broker: str) -> None:
    if broker == "mosquitto":
        require_mosquitto()
    # 8 s: each agent first measures its CPU and table rates, four agents sharing this machine. The
    # embedded broker (amqtt 0.11) sometimes drops a connecting client ("dictionary changed size during
    # iteration" in its connect handler when another client subscribes at that moment); the agent
    # reconnects with backoff, so give that fallback the time a reconnect takes.
    seconds = "8" if broker == "mosquitto" else "15"
    args = ["demo", "--nodes", "4", "--seconds", seconds, "--no-table", "--broker", broker]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "prsm_edge", *args], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the demo hung; stdout: {exc.stdout!r}; stderr: {exc.stderr!r}") from None
    assert proc.returncode == 0, proc.stderr
    assert "4/4 online" in proc.stdout
    assert "earned FTNS:" in proc.stdout  # the economy runs in the demo (credits each --settle period)
    assert f"broker: {broker}" in proc.stderr
    assert ("per-node ACLs enforced" in proc.stderr) == (broker == "mosquitto")


def test_demo_refuses_a_bad_node_count() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prsm_edge", "demo", "--nodes", "201"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "between 1 and 200" in proc.stderr
