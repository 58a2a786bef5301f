"""Shared fixtures: a real Mosquitto per test session, free ports, an isolated PRSM_EDGE_HOME."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def require_mosquitto() -> str:
    """The mosquitto binary; in CI its absence fails the test, elsewhere it skips with a reason."""
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return path


@dataclass
class Mosquitto:
    """A running Mosquitto broker for tests."""

    port: int
    process: subprocess.Popen[bytes]
    config: Path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.process = subprocess.Popen(
            [self.process.args[0], "-c", str(self.config)],  # type: ignore[index]
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)


def start_mosquitto(tmp: Path, extra: str = "") -> Mosquitto:
    """Start an anonymous-access Mosquitto on a free port with persistence in ``tmp``."""
    binary = require_mosquitto()
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp}/\nlog_dest none\nuser root\nmax_queued_messages 10000\n{extra}"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Mosquitto(port, proc, conf)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto for one test."""
    broker = start_mosquitto(tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's keys, settings and databases in its own folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("PRSM_EDGE_HOME", str(home))
    return home
