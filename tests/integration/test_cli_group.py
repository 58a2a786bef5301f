"""The commands a group host and a device owner run: `coordinate` and `join`, as real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mosquitto, free_port, require_mosquitto

pytestmark = pytest.mark.integration


class Cli:
    """`prsm-edge` subcommands run as processes sharing one PRSM_EDGE_HOME; all stopped with SIGINT."""

    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "PRSM_EDGE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, watch: bool = False) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prsm_edge", *args],
            stdout=subprocess.PIPE if watch else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if watch else subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def cli(home: Path) -> Iterator[Cli]:
    runner = Cli(home)
    try:
        yield runner
    finally:
        runner.stop_all()


def wait_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen; output: {''.join(seen)}")


def test_coordinate_and_join_as_processes(tmp_path: Path) -> None:
    require_mosquitto()
    port, ws = str(free_port()), str(free_port())
    with cli(tmp_path / "home") as run:
        coord = run.start(
            "coordinate", "--host", "127.0.0.1", "--port", port, "--ws-port", ws, "--no-advertise",
            "--group", "cli", "--site", "lab", "--seconds", "40", "--workdir", str(tmp_path / "c"),
            watch=True,
        )  # fmt: skip
        wait_line(coord, "mosquitto broker at", 15)
        join = run.start(
            "join", "--broker", f"mqtt://127.0.0.1:{port}", "--group", "cli", "--site", "lab",
            "--workdir", str(tmp_path / "n"),
        )  # fmt: skip
        wait_line(coord, "1/1 online", 20)
        join.send_signal(signal.SIGINT)  # graceful leave: the group sees it at once
        assert join.wait(15) == 0
        wait_line(coord, "0/1 online", 12)


def test_coordinate_through_an_existing_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with cli(tmp_path / "home") as run:
        coord = run.start(
            "coordinate", "--external", mosquitto.url, "--no-advertise", "--group", "ext", "--site", "lab",
            "--seconds", "30", "--workdir", str(tmp_path / "c"),
            watch=True,
        )  # fmt: skip
        wait_line(coord, "coordinating through the existing broker", 15)
        run.start(
            "join",
            "--broker",
            mosquitto.url,
            "--group",
            "ext",
            "--site",
            "lab",
            "--workdir",
            str(tmp_path / "n"),
        )
        wait_line(coord, "1/1 online", 20)
