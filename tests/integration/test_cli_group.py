"""The commands a group host and a device owner run: `coordinate` and `join`, as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Mosquitto, free_port, require_mosquitto

pytestmark = pytest.mark.integration


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
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
    port, ws = free_port(), free_port()
    env = {**os.environ, "PRSM_EDGE_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    coord = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prsm_edge",
            "coordinate",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws-port",
            str(ws),
            "--no-advertise",
            "--group",
            "cli",
            "--site",
            "lab",
            "--seconds",
            "40",
            "--workdir",
            str(tmp_path / "c"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    join = None
    try:
        _wait_line(coord, "mosquitto broker at", 15)
        join = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prsm_edge",
                "join",
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--group",
                "cli",
                "--site",
                "lab",
                "--workdir",
                str(tmp_path / "n"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        _wait_line(coord, "1/1 online", 20)
        join.send_signal(signal.SIGINT)  # graceful leave
        assert join.wait(15) == 0
        _wait_line(coord, "0/1 online", 12)
    finally:
        for proc in (join, coord):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if coord.stdout is not None:
            coord.stdout.close()


def test_coordinate_through_an_existing_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    env = {**os.environ, "PRSM_EDGE_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    coord = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prsm_edge",
            "coordinate",
            "--external",
            mosquitto.url,
            "--no-advertise",
            "--group",
            "ext",
            "--site",
            "lab",
            "--seconds",
            "30",
            "--workdir",
            str(tmp_path / "c"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    join = None
    try:
        _wait_line(coord, "coordinating through the existing broker", 15)
        join = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prsm_edge",
                "join",
                "--broker",
                mosquitto.url,
                "--group",
                "ext",
                "--site",
                "lab",
                "--workdir",
                str(tmp_path / "n"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        _wait_line(coord, "1/1 online", 20)
    finally:
        for proc in (join, coord):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if coord.stdout is not None:
            coord.stdout.close()
