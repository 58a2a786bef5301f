"""Real mDNS discovery: on loopback in-process, and across network namespaces between separate processes.

The namespace tests build a private bridged segment (10.77.0.0/24, see ``netns.py``) and never touch the
host's interfaces. Run as a script, this module is the child process: ``advertise`` or ``browse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from prsm_edge.io.discovery import Advertiser, Browser, DiscoveryError, discover
from prsm_edge.protocol.formation import SERVICE_TYPE, GroupAdvert, elect, should_yield
from tests.integration import netns

ROOT = Path(__file__).resolve().parents[2]
Snapshot = list[dict[str, Any]]


def _advert(**kw: Any) -> GroupAdvert:
    base: dict[str, Any] = dict(
        site="lab", group="g1", coordinator="c" * 20, epoch=3, version=1, members=5, port=1883,
        max_members=120, capacity=42, key_fingerprint="ab12cd34ef56ab78", ws_port=9001,
    )  # fmt: skip
    base.update(kw)
    return GroupAdvert(**base)


# ---------------------------------------------------------------------------------------------- child roles


async def _child_advertise(address: str, spec: str) -> None:
    fields = json.loads(spec)
    advert = GroupAdvert(**fields)
    loop = asyncio.get_running_loop()
    async with Advertiser(advert, interfaces=[address]) as adv:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if line == "quit":
                break
            members = int(line.split()[1])
            await adv.update(dataclasses.replace(adv.advert, members=members))
            sys.stdout.write("updated\n")
            sys.stdout.flush()


async def _child_browse(address: str) -> None:
    async with Browser(interfaces=[address]) as browser:
        last: Snapshot | None = None
        while True:
            current = [dataclasses.asdict(a) for a in browser.snapshot()]
            if current != last:
                sys.stdout.write(json.dumps(current) + "\n")
                sys.stdout.flush()
                last = current

            def changed(ads: list[GroupAdvert], seen: Snapshot = current) -> bool:
                return [dataclasses.asdict(a) for a in ads] != seen

            await browser.wait_until(changed, 5)


# ---------------------------------------------------------------------------------------------- loopback


async def test_loopback_advert_is_found_updated_and_withdrawn() -> None:
    ad = _advert(hosts=("127.0.0.1",))
    async with Browser(["127.0.0.1"]) as browser:
        async with Advertiser(ad, ["127.0.0.1"]) as adv:
            found = await browser.wait_for(lambda a: a.coordinator == ad.coordinator, 5)
            assert found == [ad]
            await adv.update(dataclasses.replace(ad, members=9))
            seen = await browser.wait_for(lambda a: a.members == 9, 5)
            assert [a.members for a in seen] == [9]
        assert await browser.wait_until(lambda ads: ads == [], 5), browser.snapshot()


async def test_discover_returns_current_adverts_on_loopback() -> None:
    ad = _advert(group="g7", coordinator="d" * 20, hosts=("127.0.0.1",))
    async with Advertiser(ad, ["127.0.0.1"]):
        assert ad in await discover(1.0, ["127.0.0.1"])


async def test_second_announcement_of_one_coordinator_and_group_is_refused() -> None:
    ad = _advert(coordinator="e" * 17, hosts=("127.0.0.1",))
    async with Advertiser(ad, ["127.0.0.1"]):
        with pytest.raises(DiscoveryError, match="already announced"):
            async with Advertiser(dataclasses.replace(ad, members=1), ["127.0.0.1"]):
                pass


async def test_browser_ignores_and_counts_malformed_adverts() -> None:
    bad = AsyncServiceInfo(
        SERVICE_TYPE, f"bad@x.{SERVICE_TYPE}", port=1883, properties={"site": "lab", "grp": "G/1"},
        server="bad-host.local.", parsed_addresses=["127.0.0.1"],
    )  # fmt: skip
    good = _advert(group="ok", coordinator="f" * 17, hosts=("127.0.0.1",))
    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        async with Browser(["127.0.0.1"]) as browser:
            await (await zc.async_register_service(bad))
            async with Advertiser(good, ["127.0.0.1"]):
                assert await browser.wait_for(lambda a: a.group == "ok", 5) == [good]
                assert await browser.wait_until(lambda _: browser.rejected >= 1, 3)
                assert browser.snapshot() == [good]
    finally:
        await zc.async_close()


# ---------------------------------------------------------------------------------------------- namespaces

_skip = netns.available()


@pytest.fixture(scope="module")
def lab() -> Iterator[list[netns.Namespace]]:
    with netns.lab(3) as spaces:
        yield spaces


class Child:
    """A child process inside a namespace, read line by line with deadlines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"child exited: {err.decode(errors='replace')[-2000:]}")
        return raw.decode().strip()

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def until(self, cond: Callable[[Snapshot], bool], timeout: float) -> Snapshot:
        """Read browser snapshots until one satisfies ``cond``."""
        deadline = time.monotonic() + timeout
        last: Snapshot = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s; last snapshot {last}")
            with contextlib.suppress(TimeoutError):
                last = json.loads(await self.line(remaining))
                if cond(last):
                    return last


@contextlib.asynccontextmanager
async def child(ns: netns.Namespace, *args: str) -> AsyncIterator[Child]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ns.cmd([sys.executable, "-m", "tests.integration.test_discovery", *args])
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Child(proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _spec(ad: GroupAdvert) -> str:
    fields = dataclasses.asdict(ad)
    fields["hosts"] = list(ad.hosts)
    return json.dumps(fields)


def _from(snapshot: Snapshot) -> list[GroupAdvert]:
    return [GroupAdvert(**{**d, "hosts": tuple(d["hosts"])}) for d in snapshot]


@pytest.mark.netns
@pytest.mark.skipif(_skip is not None, reason=_skip or "")
async def test_browser_in_other_namespace_sees_advert_update_and_goodbye(lab: list[netns.Namespace]) -> None:
    ns_a, ns_b, _ = lab
    ad = _advert()
    async with child(ns_b, "browse", ns_b.address) as browser:
        assert json.loads(await browser.line(10)) == []
        async with child(ns_a, "advertise", ns_a.address, _spec(ad)) as adv:
            assert await adv.line(10) == "ready"
            first = _from(await browser.until(lambda s: len(s) == 1, 5))
            # every TXT value crossed the wire, and the address is the advertiser's namespace address
            assert first == [dataclasses.replace(ad, hosts=(ns_a.address,))]

            await adv.send("n 77")
            assert await adv.line(5) == "updated"
            updated = _from(await browser.until(lambda s: len(s) == 1 and s[0]["members"] == 77, 5))
            assert updated[0].coordinator == ad.coordinator and updated[0].epoch == ad.epoch

            await adv.send("quit")
            assert await adv.proc.wait() == 0
        # the goodbye (TTL 0) removes the advert well before its TTL would have expired
        start = time.monotonic()
        await browser.until(lambda s: s == [], 5)
        assert time.monotonic() - start < 3


@pytest.mark.netns
@pytest.mark.skipif(_skip is not None, reason=_skip or "")
async def test_two_coordinators_of_one_group_are_both_seen_and_one_yields(
    lab: list[netns.Namespace],
) -> None:
    ns_a, ns_b, ns_c = lab
    big = _advert(coordinator="b" * 20, members=12, epoch=2)
    small = _advert(coordinator="a" * 20, members=4, epoch=1)
    async with (
        child(ns_c, "browse", ns_c.address) as browser,
        child(ns_a, "advertise", ns_a.address, _spec(big)) as adv_a,
        child(ns_b, "advertise", ns_b.address, _spec(small)) as adv_b,
    ):
        assert await adv_a.line(10) == "ready"
        assert await adv_b.line(10) == "ready"
        seen = _from(await browser.until(lambda s: len(s) == 2, 5))
        by_coord = {a.coordinator: a for a in seen}
        assert by_coord[big.coordinator].hosts == (ns_a.address,)
        assert by_coord[small.coordinator].hosts == (ns_b.address,)
        assert {a.key for a in seen} == {("lab", "g1")}
        # the election every node computes from what it sees: more members wins
        assert elect(seen).coordinator == big.coordinator
        assert should_yield(by_coord[small.coordinator], seen)
        assert not should_yield(by_coord[big.coordinator], seen)


if __name__ == "__main__":
    role, address, *rest = sys.argv[1:]
    if role == "advertise":
        asyncio.run(_child_advertise(address, rest[0]))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_child_browse(address))
