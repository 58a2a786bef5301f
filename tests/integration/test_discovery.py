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
from nacl.signing import SigningKey
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from prsm_edge.io.discovery import Advertiser, Browser, DiscoveryError, discover
from prsm_edge.protocol.envelope import node_id_for
from prsm_edge.protocol.formation import (
    SERVICE_TYPE,
    GroupAdvert,
    elect,
    instance_name,
    should_yield,
    sign_advert,
)
from tests.integration import netns

ROOT = Path(__file__).resolve().parents[2]
Snapshot = list[dict[str, Any]]


def key(name: str) -> SigningKey:
    """A fixed key per name, so parent and child processes agree on it."""
    return SigningKey(name.encode().ljust(32, b"."))


def coord(name: str) -> str:
    return node_id_for(bytes(key(name).verify_key))


def _advert(**kw: Any) -> GroupAdvert:
    base: dict[str, Any] = dict(
        site="lab", group="g1", coordinator=coord("c"), epoch=3, version=1, members=5, port=1883,
        max_members=120, capacity=42, ws_port=9001,
    )  # fmt: skip
    base.update(kw)
    return GroupAdvert(**base)


def _key_of(ad: GroupAdvert) -> SigningKey:
    return next(key(n) for n in "abcdefgh" if coord(n) == ad.coordinator)


def _json(ad: GroupAdvert) -> dict[str, Any]:
    fields = dataclasses.asdict(ad)
    fields.update(hosts=list(ad.hosts), public_key=ad.public_key.hex(), signature=ad.signature.hex())
    return fields


def _unsigned(ad: GroupAdvert) -> GroupAdvert:
    return dataclasses.replace(ad, public_key=b"", signed_at=0, signature=b"", key_fingerprint="")


# ---------------------------------------------------------------------------------------------- child roles


async def _child_advertise(address: str, spec: str) -> None:
    fields = json.loads(spec)
    advert = _from([fields])[0]
    loop = asyncio.get_running_loop()
    async with Advertiser(advert, interfaces=[address], key=_key_of(advert)) as adv:
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
            current = [_json(a) for a in browser.snapshot()]
            if current != last:
                sys.stdout.write(json.dumps(current) + "\n")
                sys.stdout.flush()
                last = current

            def changed(ads: list[GroupAdvert], seen: Snapshot = current) -> bool:
                return [_json(a) for a in ads] != seen

            await browser.wait_until(changed, 5)


# ---------------------------------------------------------------------------------------------- loopback


async def test_loopback_advert_is_found_updated_and_withdrawn() -> None:
    ad = _advert(hosts=("127.0.0.1",))
    async with Browser(["127.0.0.1"]) as browser:
        async with Advertiser(ad, ["127.0.0.1"], key=key("c")) as adv:
            found = await browser.wait_for(lambda a: a.coordinator == ad.coordinator, 5)
            assert found == [adv.advert] and _unsigned(found[0]) == ad
            await adv.update(dataclasses.replace(ad, members=9))
            seen = await browser.wait_for(lambda a: a.members == 9, 5)
            assert [a.members for a in seen] == [9]
        assert await browser.wait_until(lambda ads: ads == [], 5), browser.snapshot()


async def test_discover_returns_current_adverts_on_loopback() -> None:
    ad = _advert(group="g7", coordinator=coord("d"), hosts=("127.0.0.1",))
    async with Advertiser(ad, ["127.0.0.1"], key=key("d")) as adv:
        assert adv.advert in await discover(1.0, ["127.0.0.1"])


async def test_second_announcement_of_one_coordinator_and_group_is_refused() -> None:
    ad = _advert(coordinator=coord("e"), hosts=("127.0.0.1",))
    async with Advertiser(ad, ["127.0.0.1"], key=key("e")):
        with pytest.raises(DiscoveryError, match="already announced"):
            async with Advertiser(dataclasses.replace(ad, members=1), ["127.0.0.1"], key=key("e")):
                pass


async def test_browser_ignores_and_counts_malformed_adverts() -> None:
    bad = AsyncServiceInfo(
        SERVICE_TYPE, f"bad@x.{SERVICE_TYPE}", port=1883, properties={"site": "lab", "grp": "G/1"},
        server="bad-host.local.", parsed_addresses=["127.0.0.1"],
    )  # fmt: skip
    good = _advert(group="ok", coordinator=coord("f"), hosts=("127.0.0.1",))
    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        async with Browser(["127.0.0.1"]) as browser:
            await (await zc.async_register_service(bad))
            async with Advertiser(good, ["127.0.0.1"], key=key("f")) as adv:
                assert await browser.wait_for(lambda a: a.group == "ok", 5) == [adv.advert]
                assert await browser.wait_until(lambda _: browser.rejected >= 1, 3)
                assert browser.snapshot() == [adv.advert]
    finally:
        await zc.async_close()


def _info(ad: GroupAdvert) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE, f"{instance_name(ad)}.{SERVICE_TYPE}", port=ad.port, properties=ad.to_txt(),
        server=f"h-{ad.group}.local.", parsed_addresses=["127.0.0.1"],
    )  # fmt: skip


async def test_browser_refuses_unsigned_forged_and_stale_adverts() -> None:
    """A LAN stranger's advert never reaches the formation rules unless its coordinator's key signed it,
    recently: no advert with made-up numbers, none with another key, none replayed an hour later."""
    now = int(time.time())
    unsigned = _advert(group="unsigned", coordinator=coord("a"), members=199, max_members=10**6)
    signed = sign_advert(_advert(group="forged", coordinator=coord("b"), members=3), key("b"), now)
    forged = dataclasses.replace(signed, members=199, max_members=10**6)  # numbers changed after signing
    # signed by the stranger's own key but naming the victim coordinator
    impostor = dataclasses.replace(
        sign_advert(_advert(group="imp", coordinator=coord("c")), key("c"), now),
        public_key=bytes(key("d").verify_key),
    )
    stale = sign_advert(_advert(group="stale", coordinator=coord("e")), key("e"), now - 3600)
    good = _advert(group="good", coordinator=coord("f"), hosts=("127.0.0.1",))
    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        async with Browser(["127.0.0.1"]) as browser:
            for bad in (unsigned, forged, impostor, stale):
                await (await zc.async_register_service(_info(bad)))
            async with Advertiser(good, ["127.0.0.1"], key=key("f")) as adv:
                assert await browser.wait_for(lambda a: a.group == "good", 5) == [adv.advert]
                assert await browser.wait_until(lambda _: browser.rejected >= 4, 5), browser.rejected
                assert browser.snapshot() == [adv.advert]
    finally:
        await zc.async_close()


async def test_a_kept_advert_goes_stale_unless_it_is_re_signed() -> None:
    """Records linger in mDNS caches: the browser drops what its coordinator stopped re-signing."""
    ad = _advert(group="fade", coordinator=coord("g"), hosts=("127.0.0.1",))
    clock = [time.time()]
    async with (
        Browser(["127.0.0.1"], clock=lambda: clock[0], max_age_s=600) as browser,
        Advertiser(ad, ["127.0.0.1"], key=key("g"), refresh_s=3600),
    ):
        assert await browser.wait_for(lambda a: a.group == "fade", 5)
        clock[0] += 601
        assert browser.snapshot() == []


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
    return json.dumps(_json(ad))


def _from(snapshot: Snapshot) -> list[GroupAdvert]:
    return [
        GroupAdvert(**{**d, "hosts": tuple(d["hosts"]), "public_key": bytes.fromhex(d["public_key"]),
                       "signature": bytes.fromhex(d["signature"])})
        for d in snapshot
    ]  # fmt: skip


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
            assert [_unsigned(a) for a in first] == [dataclasses.replace(ad, hosts=(ns_a.address,))]
            assert first[0].public_key == bytes(key("c").verify_key)

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
    big = _advert(coordinator=coord("b"), members=12, epoch=2)
    small = _advert(coordinator=coord("a"), members=4, epoch=1)
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
