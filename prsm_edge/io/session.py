"""A long-lived MQTT session: connect, subscribe, read, publish from a durable outbox, reconnect.

One :class:`Session` runs one task group per connection (reader, outbox pump, reconnect watch) and
rebuilds the connection with capped, jittered backoff when it fails. Before each connection attempt the
``prepare`` callback supplies fresh credentials and a freshly signed Last Will (its ``bdseq`` changes
per connection). Incoming messages are bounded in size before anything decodes them and queued in a
bounded queue. QoS 1 publications go through the on-disk :class:`~prsm_edge.io.store.Outbox` and are
deleted only after the broker's PUBACK, so they survive a broker or agent restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiomqtt

from prsm_edge.errors import BrokerError, PrsmEdgeError
from prsm_edge.io.store import Outbox
from prsm_edge.protocol.backoff import Backoff

__all__ = ["BrokerAddress", "ConnectParams", "Session", "no_delay", "parse_url"]

log = logging.getLogger(__name__)

MAX_INCOMING_BYTES: Final = 64 * 1024
_AUTH_FAILURES: Final = {4, 5, 134, 135}  # bad user name or password / not authorised (3.1.1 and 5)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a broker listens."""

    host: str
    port: int
    transport: str = "tcp"
    path: str | None = None


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` (default 1883) or ``ws://host:port/path``; anything else is a BrokerError."""
    parts = urlsplit(url)
    if parts.scheme in ("mqtt", "tcp", ""):
        return BrokerAddress(parts.hostname or "127.0.0.1", parts.port or 1883)
    if parts.scheme in ("ws", "websockets"):
        return BrokerAddress(parts.hostname or "127.0.0.1", parts.port or 80, "websockets", parts.path or "/")
    raise BrokerError(f"unsupported broker URL {url!r}: use mqtt://HOST:PORT or ws://HOST:PORT/PATH")


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """What one connection attempt presents."""

    username: str | None = None
    password: str | None = None
    will: aiomqtt.Will | None = None


async def _publish(
    client: aiomqtt.Client, topic: str, payload: bytes, qos: int, retain: bool, limit: float
) -> None:
    """Publish and wait for the broker's acknowledgement for at most ``limit`` seconds.

    The limit is ours (``asyncio.timeout``), not aiomqtt's: aiomqtt implements its own with
    ``asyncio.wait_for``, which on Python 3.11 can swallow a cancellation that arrives as the publish
    completes (fixed in 3.12), leaving a loop that was told to stop running forever.
    """
    try:
        async with asyncio.timeout(limit):
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
    except TimeoutError:
        raise aiomqtt.MqttError(f"no acknowledgement for {topic} within {limit} s") from None


def no_delay(client: aiomqtt.Client) -> None:
    """Send small packets at once (TCP_NODELAY) on a connected client's TCP socket.

    paho leaves Nagle's algorithm on, so a PUBACK followed by a small PUBLISH waits for the peer's
    delayed ACK (~40 ms on Linux): every request/response round trip paid it.
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Reconnect(Exception):
    """Raised inside the connection's task group to start over at once."""


Handler = Callable[[str, bytes], Awaitable[None]]


class Session:
    """One client's connection to the broker, kept up until cancelled."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        handler: Handler,
        subscriptions: Sequence[tuple[str, int]] = (),
        prepare: Callable[[], ConnectParams] | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        goodbye: Callable[[], list[tuple[str, bytes]]] | None = None,
        outbox: Outbox | None = None,
        keepalive: int = 10,
        clean_session: bool = False,
        max_queued: int = 1000,
        backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.address = parse_url(url)
        self.client_id = client_id
        self.handler = handler
        self.subscriptions = list(subscriptions)
        self.prepare = prepare or ConnectParams
        self._login: str | None = None  # the username of the current connection (None: anonymous)
        self.on_connect = on_connect
        self.goodbye = goodbye
        self.outbox = outbox
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.max_queued = max_queued
        self.backoff = backoff or Backoff()
        self.rng = rng
        self.connected = asyncio.Event()
        self.connections = 0
        self.oversized = 0
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._reconnect = asyncio.Event()

    # ---- subscriptions made while running --------------------------------------------------------
    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Add a subscription: now if connected, and on every reconnect until :meth:`unsubscribe`."""
        if (topic, qos) not in self.subscriptions:
            self.subscriptions.append((topic, qos))
        client = self._client
        if client is not None:
            try:
                await client.subscribe(topic, qos)
            except aiomqtt.MqttError as exc:
                log.debug(
                    "%s: subscribing to %s failed (retried on reconnect): %s", self.client_id, topic, exc
                )

    async def unsubscribe(self, topic: str) -> None:
        """Drop a subscription (also one a persistent session kept from an earlier run)."""
        self.subscriptions = [(t, q) for t, q in self.subscriptions if t != topic]
        client = self._client
        if client is not None:
            try:
                await client.unsubscribe(topic)
            except aiomqtt.MqttError as exc:
                log.debug("%s: unsubscribing from %s failed: %s", self.client_id, topic, exc)

    # ---- publishing --------------------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        """Publish now if connected (False if not: the message is dropped). For live-only data."""
        client = self._client
        if client is None:
            return False
        try:
            await _publish(client, topic, payload, qos, retain, 10)
        except aiomqtt.MqttError as exc:
            log.debug("publish to %s failed: %s", topic, exc)
            return False
        return True

    def enqueue(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publication durably; it is sent (again after failures) until acknowledged."""
        if self.outbox is None:
            raise BrokerError("this session has no outbox for QoS 1 publications")
        self.outbox.put(topic, payload, retain=retain)
        self._wake.set()

    def request_reconnect(self) -> None:
        """Drop the current connection and connect again at once (e.g. with new credentials)."""
        self._reconnect.set()

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the session connected until cancelled."""
        while True:
            auth_failure = requested = False
            params = self.prepare()
            self._login = params.username
            client = aiomqtt.Client(
                self.address.host,
                self.address.port,
                identifier=self.client_id,
                username=params.username,
                password=params.password,
                will=params.will,
                keepalive=self.keepalive,
                clean_session=self.clean_session,
                transport="websockets" if self.address.transport == "websockets" else "tcp",
                websocket_path=self.address.path,
                protocol=aiomqtt.ProtocolVersion.V311,
                max_queued_incoming_messages=self.max_queued,
                timeout=10,
            )
            try:
                async with client:
                    await self._connected(client)
            except* _Reconnect:
                log.debug("%s: reconnecting on request", self.client_id)
                requested = True
            except* aiomqtt.MqttCodeError as group:
                codes = {int(getattr(e, "rc", 0) or 0) for e in group.exceptions}
                auth_failure = bool(codes & _AUTH_FAILURES)
                log.warning(
                    "%s: connection to %s failed: %s", self.client_id, self.address.host, group.exceptions[0]
                )
            except* aiomqtt.MqttError as group:
                log.info("%s: connection lost: %s", self.client_id, group.exceptions[0])
            finally:
                self._client = None
                self.connected.clear()
            if requested:
                continue
            delay = self.backoff.next_delay(self.rng(), auth_failure=auth_failure)
            log.debug("%s: next attempt in %.2f s", self.client_id, delay)
            await asyncio.sleep(delay)

    async def _connected(self, client: aiomqtt.Client) -> None:
        self._client = client
        no_delay(client)
        self.connections += 1
        self.backoff.reset()
        self._reconnect.clear()
        if self.subscriptions:
            granted = await client.subscribe(self.subscriptions)
            # An anonymous joiner is refused all but its join topics on purpose: only logins are news.
            level = logging.DEBUG if self._login is None else logging.WARNING
            _log_refused(level, self.client_id, self.subscriptions, granted)
        self.connected.set()
        log.debug("%s: connected to %s:%d", self.client_id, self.address.host, self.address.port)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(client), name=f"{self.client_id}-read")
                tg.create_task(self._watch_reconnect(), name=f"{self.client_id}-reconnect")
                if self.outbox is not None:
                    tg.create_task(self._pump(client, self.outbox), name=f"{self.client_id}-outbox")
                if self.on_connect is not None:
                    await self.on_connect()
        except asyncio.CancelledError:
            # Leaving on purpose: a clean DISCONNECT discards the Last Will, so say goodbye ourselves
            # (retained offline state) before the connection closes.
            if self.goodbye is not None:
                for topic, payload in self.goodbye():
                    try:
                        await _publish(client, topic, payload, 1, True, 2)
                    except aiomqtt.MqttError as exc:
                        log.debug("goodbye on %s not delivered: %s", topic, exc)
            raise

    async def _watch_reconnect(self) -> None:
        await self._reconnect.wait()
        raise _Reconnect

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if len(payload) > MAX_INCOMING_BYTES:
                self.oversized += 1
                log.debug("dropping a %d-byte message on %s", len(payload), message.topic.value)
                continue
            try:
                await self.handler(message.topic.value, bytes(payload))
            except PrsmEdgeError as exc:
                log.warning("handling a message on %s failed: %s", message.topic.value, exc)

    async def _pump(self, client: aiomqtt.Client, outbox: Outbox) -> None:
        while True:
            items = outbox.peek(50)
            if not items:
                self._wake.clear()
                await self._wake.wait()
                continue
            for item in items:
                await _publish(client, item.topic, item.payload, 1, item.retain, 10)
                outbox.ack(item.id)


def _log_refused(level: int, client_id: str, wanted: list[tuple[str, int]], granted: object) -> None:
    """Say which subscriptions the broker refused (its ACL): MQTT reports that only in the SUBACK."""
    codes = list(granted) if isinstance(granted, tuple | list) else []
    for (topic, _qos), code in zip(wanted, codes, strict=False):
        value = code if isinstance(code, int) else getattr(code, "value", 0)
        if value >= 0x80:
            log.log(
                level,
                "%s: the broker refused the subscription to %s (not allowed for this login)",
                client_id,
                topic,
            )
