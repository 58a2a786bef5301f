"""A long-lived MQTT session: connect, subscribe, read, publish from a durable outbox, reconnect.

One :class:`Session` runs one task group per connection (reader, outbox pump, reconnect watch) and
rebuilds the connection with capped, jittered backoff when it fails. Before each connection attempt the
``prepare`` callback supplies fresh credentials and a freshly signed Last Will (its ``bdseq`` changes
per connection). Incoming messages are bounded in size before anything decodes them and queued in a
bounded queue. QoS 1 publications go through the on-disk :class:`~prsm_edge.io.store.Outbox` and are
deleted only after the broker's PUBACK, so they survive a broker or agent restart.

A session built with ``send_queue=N`` never waits for a broker in :meth:`Session.publish`: the
publication joins a bounded queue (full: refused and counted) and a sender task hands it to the client in
order, keeping at most ``send_window`` acknowledgements outstanding. A handler that publishes therefore
never holds up the reading of the next message, whose arrival time may matter (a proof's deadline).
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
_READ_SLICE: Final = 16  # messages handled back to back before the event loop gets a turn
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


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


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
        send_queue: int = 0,
        send_window: int = 100,
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
        self._inbox: asyncio.Queue[aiomqtt.Message] | None = None  # the current client's incoming queue
        self._wake = asyncio.Event()
        self._reconnect = asyncio.Event()
        self.send_window = max(1, send_window)
        # Publications waiting for the sender task (send_queue > 0); None: publish() waits for the broker.
        self._outgoing: asyncio.Queue[_Outgoing] | None = (
            asyncio.Queue(maxsize=send_queue) if send_queue > 0 else None
        )
        self.refused_outgoing = 0  # the send queue was full
        self.unacknowledged = 0  # sent from the queue, but the broker's acknowledgement never came
        self._in_flight = 0  # taken from the send queue, acknowledgement not yet in

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
        """Publish now if connected (False if not: the message is dropped). For live-only data.

        With a send queue this never waits: True means queued for the sender (False: not connected, or
        the queue is full); without one it waits for the broker's acknowledgement (QoS 1).
        """
        client = self._client
        if client is None:
            return False
        if self._outgoing is not None:
            try:
                self._outgoing.put_nowait(_Outgoing(topic, payload, qos, retain))
            except asyncio.QueueFull:
                self.refused_outgoing += 1
                if self.refused_outgoing % 1000 == 1:
                    log.warning(
                        "%s: send queue full (%d); %d publications refused so far",
                        self.client_id,
                        self._outgoing.maxsize,
                        self.refused_outgoing,
                    )
                return False
            return True
        try:
            await _publish(client, topic, payload, qos, retain, 10)
        except aiomqtt.MqttError as exc:
            log.debug("publish to %s failed: %s", topic, exc)
            return False
        return True

    async def flush(self, within_s: float = 5.0) -> bool:
        """Wait until every queued publication is sent and acknowledged (True), or ``within_s`` passes."""
        queue = self._outgoing
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while queue is not None and (not queue.empty() or self._in_flight) and self._client is not None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
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
                queue_type=self._inbox_type(),
                max_inflight_messages=self.send_window if self._outgoing is not None else None,
                timeout=10,
            )
            if self._outgoing is not None:
                client.pending_calls_threshold = self.send_window + 10  # the window is expected
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
                self._drop_outgoing()
            if requested:
                continue
            delay = self.backoff.next_delay(self.rng(), auth_failure=auth_failure)
            log.debug("%s: next attempt in %.2f s", self.client_id, delay)
            await asyncio.sleep(delay)

    def _inbox_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's hook for its incoming queue: a plain bounded queue this session can also read."""
        session = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                session._inbox = self

        return Inbox

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
                if self._outgoing is not None:
                    tg.create_task(self._send(client, self._outgoing), name=f"{self.client_id}-send")
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
        """Hand incoming messages to the handler, a slice at a time.

        aiomqtt's iterator costs a task and a wait per message; messages already queued behind the one
        it returns are taken directly, at most ``_READ_SLICE`` before control goes back to the event
        loop, so a burst is cheaper to read and still cannot hold the loop for long.
        """
        async for message in client.messages:
            await self._deliver(message)
            inbox = self._inbox
            for _ in range(_READ_SLICE - 1):
                if inbox is None or inbox.empty():
                    break
                await self._deliver(inbox.get_nowait())

    async def _deliver(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if len(payload) > MAX_INCOMING_BYTES:
            self.oversized += 1
            log.debug("dropping a %d-byte message on %s", len(payload), message.topic.value)
            return
        try:
            await self.handler(message.topic.value, bytes(payload))
        except PrsmEdgeError as exc:
            log.warning("handling a message on %s failed: %s", message.topic.value, exc)

    def _drop_outgoing(self) -> None:
        """The connection is gone: what it had not sent yet is dropped, as an unqueued publish would be."""
        queue = self._outgoing
        if queue is None or queue.empty():
            return
        lost, self._in_flight = 0, 0
        while not queue.empty():
            queue.get_nowait()
            lost += 1
        log.debug("%s: %d queued publications dropped with the connection", self.client_id, lost)

    async def _send(self, client: aiomqtt.Client, queue: asyncio.Queue[_Outgoing]) -> None:
        """Hand queued publications to the client in order; their acknowledgements are awaited aside.

        Each publication gets its own small task, created in queue order: a task's first step hands the
        packet to paho before its first await, so packets leave in the order they were queued.
        """
        window = asyncio.Semaphore(self.send_window)
        async with asyncio.TaskGroup() as tg:
            while True:
                item = await queue.get()
                self._in_flight += 1
                await window.acquire()
                tg.create_task(self._send_one(client, item, window))

    async def _send_one(self, client: aiomqtt.Client, item: _Outgoing, window: asyncio.Semaphore) -> None:
        try:
            await _publish(client, item.topic, item.payload, item.qos, item.retain, 10)
        except aiomqtt.MqttError as exc:
            self.unacknowledged += 1
            log.debug("%s: publish to %s not acknowledged: %s", self.client_id, item.topic, exc)
        finally:
            self._in_flight -= 1
            window.release()

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
