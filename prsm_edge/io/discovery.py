"""LAN discovery of local groups over mDNS/DNS-SD (python-zeroconf's asyncio API).

A coordinator announces its group as a ``_prsm._tcp.local.`` service whose TXT record carries a
:class:`~prsm_edge.protocol.formation.GroupAdvert`; nodes browse for it and apply the formation rules.
mDNS only finds groups: liveness comes from MQTT Last Will, since mDNS records linger up to their TTL.

Interfaces: ``interfaces`` is a list of local IP addresses to bind to; ``None`` means every IPv4
interface (``InterfaceChoice.All``). ``InterfaceChoice.Default`` is never used, because it fails with
``OSError: [Errno 19]`` on hosts without a default route.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Self

import ifaddr
from nacl.signing import SigningKey
from zeroconf import InterfaceChoice, IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from prsm_edge.errors import LocalError
from prsm_edge.protocol.formation import (
    ADVERT_MAX_AGE_S,
    SERVICE_TYPE,
    BadAdvert,
    GroupAdvert,
    instance_name,
    sign_advert,
    verify_advert,
)

__all__ = ["SERVICE_TYPE", "Advertiser", "Browser", "DiscoveryError", "discover"]

log = logging.getLogger(__name__)

MAX_ADVERTS: Final = 1024
RESOLVE_TIMEOUT_MS: Final = 3000
_QUEUE_SIZE: Final = 256
REFRESH_S: Final = 60.0  # the advert is re-signed this often, well inside ADVERT_MAX_AGE_S


class DiscoveryError(LocalError):
    """mDNS could not be started on the requested interfaces."""


def _local_ipv4(include_loopback: bool) -> list[str]:
    addrs: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not ip.is_IPv4 or not isinstance(ip.ip, str):
                continue
            if not include_loopback and ipaddress.ip_address(ip.ip).is_loopback:
                continue
            if ip.ip not in addrs:
                addrs.append(ip.ip)
    return addrs


def _open(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    """An AsyncZeroconf on ``interfaces``, or on all IPv4 interfaces, falling back to loopback."""
    try:
        if interfaces is not None:
            for addr in interfaces:
                ipaddress.ip_address(addr)
            return AsyncZeroconf(interfaces=list(interfaces))
        try:
            return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
        except (OSError, RuntimeError) as exc:
            log.warning("mDNS on all interfaces failed (%s); falling back to 127.0.0.1", exc)
            return AsyncZeroconf(interfaces=["127.0.0.1"])
    except (OSError, RuntimeError, ValueError) as exc:
        raise DiscoveryError(f"cannot start mDNS on interfaces {interfaces or 'all'}: {exc}") from exc


async def _close(zc: AsyncZeroconf) -> None:
    """Close ``zc``; if the task is cancelled while it says goodbye, still close its sockets.

    ``async_close`` sends goodbye packets before it closes the sockets, so a cancellation in between
    (a task group shutting down, a timeout) would leave the mDNS sockets open until garbage collection.
    """
    try:
        await zc.async_close()
    except asyncio.CancelledError:
        zc.zeroconf.close()  # synchronous: no goodbyes, but the sockets and engine are shut
        raise


class Advertiser:
    """Announces one coordinator's group advert, signed by its key, for as long as the context is open.

    The advert is re-signed with the time every ``refresh_s`` seconds, so browsers can refuse a stale
    copy replayed later (:data:`~prsm_edge.protocol.formation.ADVERT_MAX_AGE_S`).
    """

    def __init__(
        self,
        advert: GroupAdvert,
        interfaces: Sequence[str] | None = None,
        *,
        key: SigningKey,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._clock = clock
        self._refresh_s = refresh_s
        self._advert = self._sign(advert)
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._refresher: asyncio.Task[None] | None = None

    def _sign(self, advert: GroupAdvert) -> GroupAdvert:
        return sign_advert(advert, self._key, int(self._clock()))

    @property
    def advert(self) -> GroupAdvert:
        """The advert currently announced."""
        return self._advert

    def _addresses(self) -> list[str]:
        if self._advert.hosts:
            return list(self._advert.hosts)
        if self._interfaces is not None:
            return list(self._interfaces)
        return _local_ipv4(include_loopback=False) or _local_ipv4(include_loopback=True)

    def _make_info(self, advert: GroupAdvert) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance_name(advert)}.{SERVICE_TYPE}",
            port=advert.port,
            properties=advert.to_txt(),
            server=f"prsm-{advert.coordinator[:40]}.local.",
            parsed_addresses=self._addresses(),
        )

    async def __aenter__(self) -> Self:
        self._info = self._make_info(self._advert)
        self._zc = _open(self._interfaces)
        try:
            # Instance names are unique per (group, coordinator): a clash means this coordinator already
            # runs elsewhere, which renaming would hide, so no allow_name_change.
            await (await self._zc.async_register_service(self._info, allow_name_change=False))
        except NonUniqueNameException as exc:
            await _close(self._zc)
            self._zc = None
            raise DiscoveryError(f"{self._info.name} is already announced by another process") from exc
        except BaseException:
            await _close(self._zc)
            self._zc = None
            raise
        log.info("announcing %s on %s", self._info.name, self._info.parsed_addresses())
        self._refresher = asyncio.create_task(self._refresh(), name="prsm-advert-refresh")
        return self

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.update(self._advert)
            except (OSError, RuntimeError, LocalError) as exc:
                log.warning("could not re-sign the group advert (browsers will drop it when stale): %s", exc)

    async def update(self, advert: GroupAdvert) -> None:
        """Re-announce with changed TXT values (member count, epoch, capacity)."""
        if self._zc is None or self._info is None:
            raise DiscoveryError("Advertiser.update() called outside its context")
        if instance_name(advert) != instance_name(self._advert) or advert.port != self._advert.port:
            raise DiscoveryError("update() may change TXT values only, not the group, coordinator or port")
        self._advert = self._sign(advert)
        self._info = self._make_info(self._advert)
        await (await self._zc.async_update_service(self._info))

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        zc, info = self._zc, self._info
        self._zc = self._info = None
        refresher, self._refresher = self._refresher, None
        try:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            if zc is not None and info is not None:
                await (await zc.async_unregister_service(info))
        finally:
            if zc is not None:
                await _close(zc)


class Browser:
    """Keeps the current group adverts seen on the LAN (bounded), resolved with their addresses.

    Only adverts signed by the coordinator they name, and signed recently, are kept: an unsigned, forged
    or stale advert is counted in ``rejected`` and never reaches the formation rules.
    """

    def __init__(
        self,
        interfaces: Sequence[str] | None = None,
        max_adverts: int = MAX_ADVERTS,
        *,
        clock: Callable[[], float] = time.time,
        max_age_s: float = ADVERT_MAX_AGE_S,
    ) -> None:
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._clock = clock
        self._max_age_s = max_age_s
        self._max = max_adverts
        self._adverts: dict[str, GroupAdvert] = {}
        self._changed = asyncio.Event()
        self._queue: asyncio.Queue[str] = asyncio.Queue(_QUEUE_SIZE)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._worker: asyncio.Task[None] | None = None
        self.rejected = 0  # adverts refused as malformed

    def snapshot(self) -> list[GroupAdvert]:
        """The adverts currently known and not yet stale, ordered by service name."""
        oldest = self._clock() - self._max_age_s
        return [self._adverts[k] for k in sorted(self._adverts) if self._adverts[k].signed_at >= oldest]

    async def wait_for(self, predicate: Callable[[GroupAdvert], bool], timeout: float) -> list[GroupAdvert]:  # noqa: ASYNC109
        """The adverts matching ``predicate``, as soon as one exists or when ``timeout`` ends (maybe [])."""
        await self.wait_until(lambda ads: any(predicate(a) for a in ads), timeout)
        return [a for a in self.snapshot() if predicate(a)]

    async def wait_until(self, condition: Callable[[list[GroupAdvert]], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``condition(snapshot())`` holds; False if ``timeout`` ends first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not condition(self.snapshot()):
                    await self._changed.wait()
        return condition(self.snapshot())

    def _notify(self) -> None:
        """Wake every waiter once; later waits block until the next change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            if self._adverts.pop(name, None) is not None:
                log.info("group advert %s withdrawn", name)
                self._notify()
            return
        try:
            self._queue.put_nowait(name)
        except asyncio.QueueFull:
            log.warning("discovery queue full; dropping update of %s until it is announced again", name)

    async def _resolve(self, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("could not resolve %s", name)
            return
        if info.port is None:
            return
        try:
            advert = GroupAdvert.from_txt(name, info.parsed_addresses(), info.port, info.properties)
            verify_advert(advert, self._clock(), self._max_age_s)
        except BadAdvert as exc:
            self.rejected += 1
            log.warning("ignoring group advert: %s", exc)
            return
        if name not in self._adverts and len(self._adverts) >= self._max:
            log.warning("already %d group adverts; ignoring %s", self._max, name)
            return
        self._adverts[name] = advert
        self._notify()

    async def _work(self) -> None:
        while True:
            await self._resolve(await self._queue.get())

    async def __aenter__(self) -> Self:
        self._zc = _open(self._interfaces)
        self._worker = asyncio.create_task(self._work(), name="prsm-discovery-resolver")
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            if self._worker is not None:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        finally:
            if self._zc is not None:
                await _close(self._zc)
            self._zc = self._browser = self._worker = None


async def discover(timeout: float, interfaces: Sequence[str] | None = None) -> list[GroupAdvert]:  # noqa: ASYNC109
    """Browse for ``timeout`` seconds and return every group advert seen."""
    async with Browser(interfaces) as browser:
        await asyncio.sleep(timeout)
        return browser.snapshot()
