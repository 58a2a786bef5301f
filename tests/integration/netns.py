"""Throw-away network namespaces joined by a bridge, for real multicast tests that never touch the host's
interfaces.

A hub namespace holds a Linux bridge; each member namespace gets one end of a veth pair whose other end
is created directly inside the hub (so no interface ever exists in the host's namespace), an address
10.77.0.N/24 and a multicast route. :func:`lab` removes every namespace again, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SUBNET = "10.77.0"


def available() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


@dataclass(frozen=True)
class Namespace:
    """One member namespace: its name, interface and address."""

    name: str
    ifname: str
    address: str

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


@contextlib.contextmanager
def lab(count: int, tag: str | None = None) -> Iterator[list[Namespace]]:
    """``count`` namespaces on one bridged segment; all removed on exit."""
    tag = tag or f"{os.getpid() % 100000}"
    hub = f"prsmhub{tag}"
    made: list[str] = []
    try:
        _ip("netns", "add", hub)
        made.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        _ip("-n", hub, "link", "set", "lo", "up")
        spaces: list[Namespace] = []
        for i in range(1, count + 1):
            ns = Namespace(name=f"prsm{tag}n{i}", ifname="eth0", address=f"{SUBNET}.{i}")
            _ip("netns", "add", ns.name)
            made.append(ns.name)
            _ip("link", "add", "name", f"p{i}", "netns", hub, "type", "veth", "peer", "name", "eth0",
                "netns", ns.name)  # fmt: skip
            _ip("-n", hub, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"p{i}", "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", "eth0")
            _ip("-n", ns.name, "link", "set", "eth0", "up")
            _ip("-n", ns.name, "link", "set", "lo", "up")
            _ip("-n", ns.name, "route", "add", "224.0.0.0/4", "dev", "eth0")
            spaces.append(ns)
        yield spaces
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
