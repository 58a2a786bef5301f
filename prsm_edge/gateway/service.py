"""The gateway process: what a group's uplink needs beyond the Mosquitto bridge's plain relay.

It holds two MQTT sessions, one on the group's broker and one on the broker of the tier above (trying
its addresses in turn), and does three things the 2.0.11 bridge cannot promise:

* **Summaries as state.** The group's latest signed summary is kept (newest ``(epoch, seq)`` wins) and
  published retained upward, never queued: after an outage only the current picture goes up.
* **An ordered, de-duplicated stream with a TTL** for lease reports and evidence: every item the
  coordinator hands over on ``fed/report`` is numbered and stored in SQLite
  (:class:`~prsm_edge.io.stream_buffer.StreamBuffer`) until the tier above acknowledges it, sent one at
  a time in order, expired items dropped unsent, the backlog after an outage paced and flagged
  ``historical``.
* **Link state** (``prsm/v1/{site}/gw/{gateway}/state``, retained, signed; its Will is ``offline``), on
  both brokers.

Sparkplug's host rule: nothing goes up until the region's coordinator says ``online``; when it comes
(back) online, or asks for a rebirth, the gateway sends its birth (link state and current summary).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiomqtt

from prsm_edge.errors import PrsmEdgeError, RejectedMessage
from prsm_edge.identity import Identity, SeqStore
from prsm_edge.io.clock import now_ms
from prsm_edge.io.session import ConnectParams, Session, parse_url
from prsm_edge.io.stream_buffer import StreamBuffer
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import open_envelope
from prsm_edge.protocol.messages import (
    CoordState,
    GatewayState,
    GroupSummary,
    Lease,
    NodeCommand,
    UplinkRecord,
)
from prsm_edge.protocol.uplink import DEFAULT_TTL_MS, Pacer

__all__ = ["Gateway", "GatewayOptions"]

log = logging.getLogger(__name__)

_RETRY_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """How one gateway runs."""

    site: str
    group: str
    local_url: str
    uplink_urls: tuple[str, ...]
    region_site: str
    region: str
    workdir: Path
    ttl_ms: int = DEFAULT_TTL_MS
    replay_rate: float = 50.0  # records per second while draining a backlog
    replay_burst: int = 20
    max_buffered: int = 100_000
    state_interval_s: float = 10.0
    region_key: bytes | None = None  # pinned region coordinator key; None: pin the first one seen
    local_username: str | None = None
    local_password: str | None = None
    uplink_username: str | None = None
    uplink_password: str | None = None
    keepalive_s: int = 10
    # How long the coordinator's offline state (its Will) waits for an online one before it is reported:
    # a restart of the group's broker hands out the Will of a connection the coordinator re-makes at once.
    coordinator_grace_s: float = 10.0


@dataclass(slots=True)
class _Link:
    summary: bytes | None = None
    summary_order: tuple[int, int] = (-1, -1)
    coordinator_key: bytes = b""
    coordinator: str = "unknown"
    bridge: str = "unknown"
    region_key: bytes = b""
    region_epoch: int = -1
    region_online: bool = False
    up_since_ms: int = 0
    replayed: int = 0
    sent: int = 0
    births: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class Gateway:
    """One group's uplink to the tier above."""

    def __init__(self, identity: Identity, options: GatewayOptions) -> None:
        if not options.uplink_urls:
            raise PrsmEdgeError("a gateway needs at least one uplink broker address (--uplink URL)")
        self.identity = identity
        self.options = options
        self.gateway_id = identity.node_id
        options.workdir.mkdir(parents=True, exist_ok=True)
        self.signer = identity.signer(SeqStore(options.workdir / "gateway.seq"))
        self.buffer = StreamBuffer(options.workdir / "uplink.sqlite", options.max_buffered)
        self._bdseq_path = options.workdir / "bdseq"
        self.bdseq = self._read_bdseq()
        self.link = _Link(region_key=options.region_key or b"")
        self.pacer = Pacer(options.replay_rate, options.replay_burst)
        self._wake = asyncio.Event()
        self._offline_pending: asyncio.Task[None] | None = None
        self._address = 0
        self._attempted = 0
        self._attempted_once = False
        o = options
        self.local = Session(
            o.local_url,
            f"gw-{self.gateway_id}-local",
            handler=self._on_local,
            subscriptions=[
                (topics.summary(o.site, o.group), 1),
                (topics.coord_state(o.site, o.group), 1),
                (topics.fed_report(o.site, o.group), 1),
                (topics.gateway_bridge(o.site, self.gateway_id), 0),
            ],
            prepare=lambda: ConnectParams(o.local_username, o.local_password),
            on_connect=self._publish_state,
            clean_session=False,  # reports published while we are away wait in the broker for us
            max_queued=10_000,
            keepalive=o.keepalive_s,
        )
        self.uplink = Session(
            o.uplink_urls[0],
            f"gw-{self.gateway_id}",
            handler=self._on_uplink,
            subscriptions=[
                (topics.coord_state(o.region_site, o.region), 1),
                (topics.unit(topics.Kind.UNIT_REBIRTH, o.region_site, o.region, o.site, o.group), 1),
            ],
            prepare=self._prepare_uplink,
            on_connect=self._uplink_connected,
            goodbye=self._goodbye,
            clean_session=True,  # the region's retained state is what we need on every connect
            keepalive=o.keepalive_s,
        )

    # ---- link state --------------------------------------------------------------------------
    def _read_bdseq(self) -> int:
        try:
            return int(self._bdseq_path.read_text().strip() or "0")
        except (OSError, ValueError):
            return 0

    def _state(self, status: str) -> GatewayState:
        o, link = self.options, self.link
        return GatewayState(
            site=o.site,
            group=o.group,
            gateway=self.gateway_id,
            status="online" if status == "online" else "offline",
            bdseq=self.bdseq,
            uplink="up" if self.uplink.connected.is_set() and link.region_online else "down",
            coordinator=link.coordinator,
            bridge=link.bridge,
            buffered=len(self.buffer),
            dropped=self.buffer.dropped,
            expired=self.buffer.expired,
            replayed=link.replayed,
        )

    def _prepare_uplink(self) -> ConnectParams:
        o = self.options
        if self.uplink.connections == self._attempted and self._attempted_once:
            self._address = (self._address + 1) % len(o.uplink_urls)  # the last attempt failed: next one
            self.uplink.address = parse_url(o.uplink_urls[self._address])
        self._attempted, self._attempted_once = self.uplink.connections, True
        self.bdseq += 1
        tmp = self._bdseq_path.with_suffix(".tmp")
        tmp.write_text(str(self.bdseq))
        tmp.replace(self._bdseq_path)
        self.link.region_online = False
        will = aiomqtt.Will(
            topics.gateway_state(o.site, self.gateway_id),
            self.signer.seal(self._state("offline"), now_ms()),
            qos=1,
            retain=True,
        )
        return ConnectParams(o.uplink_username, o.uplink_password, will)

    def _goodbye(self) -> list[tuple[str, bytes]]:
        topic = topics.gateway_state(self.options.site, self.gateway_id)
        return [(topic, self.signer.seal(self._state("offline"), now_ms()))]

    async def _uplink_connected(self) -> None:
        self.link.up_since_ms = now_ms()
        log.info("gateway %s: uplink connected to %s", self.gateway_id, self.uplink.address.host)
        await self._publish_state()

    async def _publish_state(self) -> None:
        """Link state, retained, on both brokers (upward only once the region is online)."""
        topic = topics.gateway_state(self.options.site, self.gateway_id)
        payload = self.signer.seal(self._state("online"), now_ms())
        await self.local.publish(topic, payload, qos=1, retain=True)
        if self.link.region_online:
            await self.uplink.publish(topic, payload, qos=1, retain=True)

    async def _birth(self, why: str) -> None:
        self.link.births += 1
        log.info("gateway %s: birth to the region (%s)", self.gateway_id, why)
        await self._publish_state()
        await self._send_summary()
        self._wake.set()

    async def _send_summary(self) -> None:
        o = self.options
        if self.link.summary is None or not self.link.region_online:
            return
        topic = topics.unit(topics.Kind.UNIT_SUMMARY, o.region_site, o.region, o.site, o.group)
        await self.uplink.publish(topic, self.link.summary, qos=1, retain=True)

    # ---- from the group ----------------------------------------------------------------------
    async def _on_local(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        if topic == topics.gateway_bridge(self.options.site, self.gateway_id):
            self.link.bridge = "up" if payload.strip() == b"1" else "down"
            await self._publish_state()
            return
        try:
            opened = open_envelope(payload)
        except RejectedMessage as exc:
            log.warning("gateway %s: refused a message on %s: %s", self.gateway_id, topic, exc)
            return
        msg, o = opened.message, self.options
        if isinstance(msg, CoordState) and (msg.site, msg.group) == (o.site, o.group):
            if msg.public_key != opened.kid:
                return
            self.link.coordinator_key = opened.kid
            await self._coordinator_said(msg.status)
        elif isinstance(msg, GroupSummary) and (msg.site, msg.group) == (o.site, o.group):
            if self.link.coordinator_key and opened.kid != self.link.coordinator_key:
                log.warning("gateway %s: a summary not signed by the group's coordinator", self.gateway_id)
                return
            order = (msg.epoch, msg.seq)
            if order <= self.link.summary_order:
                return  # an older summary (a retained copy seen again): the newest wins
            self.link.summary, self.link.summary_order = payload, order
            await self._send_summary()
        elif topic == topics.fed_report(o.site, o.group):
            if self.link.coordinator_key and opened.kid != self.link.coordinator_key:
                log.warning("gateway %s: a report not signed by the group's coordinator", self.gateway_id)
                return
            kind = "lease" if isinstance(msg, Lease) else "evidence"
            now = now_ms()
            self.buffer.put(kind, payload, min(msg.ts, now) + self.options.ttl_ms, now)
            self._wake.set()

    # ---- from the tier above -----------------------------------------------------------------
    async def _on_uplink(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            opened = open_envelope(payload)
        except RejectedMessage as exc:
            log.warning("gateway %s: refused a message on %s: %s", self.gateway_id, topic, exc)
            return
        link, msg = self.link, opened.message
        if link.region_key and opened.kid != link.region_key:
            log.warning("gateway %s: a message on %s not signed by the region's key", self.gateway_id, topic)
            return
        if isinstance(msg, CoordState):
            if msg.public_key != opened.kid:
                return
            link.region_key = opened.kid  # pinned at first sight unless configured
            was_online, epoch = link.region_online, link.region_epoch
            link.region_online = msg.status == "online"
            link.region_epoch = msg.epoch
            if link.region_online and (not was_online or epoch != msg.epoch):
                await self._birth(f"region online, epoch {msg.epoch}")
            elif not link.region_online and was_online:
                log.info("gateway %s: the region's coordinator is offline; holding", self.gateway_id)
        elif isinstance(msg, NodeCommand) and msg.verb == "rebirth" and link.region_online:
            await self._birth(f"requested: {msg.args.get('why', '')}")

    # ---- the stream --------------------------------------------------------------------------
    async def _pump(self) -> None:
        o = self.options
        topic = topics.unit(topics.Kind.UNIT_STREAM, o.region_site, o.region, o.site, o.group)
        while True:
            if not (self.uplink.connected.is_set() and self.link.region_online):
                self._wake.clear()
                await self._wait(_RETRY_S)
                continue
            item = self.buffer.head()
            if item is None:
                self._wake.clear()
                await self._wait(o.state_interval_s)
                continue
            now = now_ms()
            if now > item.expires_ms:
                self.buffer.expire(item.seq)
                continue
            historical = item.enqueued_ms < self.link.up_since_ms
            if historical:
                delay = self.pacer.delay_ms(now)
                if delay:
                    await asyncio.sleep(delay / 1000)
                    continue
            record = UplinkRecord(
                site=o.site,
                group=o.group,
                gateway=self.gateway_id,
                stream_seq=item.seq,
                kind=item.kind,
                expires_ms=item.expires_ms,
                item=item.item,
                historical=historical,
                skipped=max(0, item.seq - self.buffer.last_acked - 1),
            )
            if await self.uplink.publish(topic, self.signer.seal(record, now_ms()), qos=1):
                self.buffer.ack(item.seq)
                self.link.sent += 1
                self.link.replayed += historical
            else:
                await asyncio.sleep(_RETRY_S)

    async def _wait(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.options.state_interval_s)
            await self._publish_state()

    async def _coordinator_said(self, status: str) -> None:
        """Take the group coordinator's state; an ``offline`` after ``online`` counts after the grace."""
        pending = self._offline_pending
        if status == "offline" and self.link.coordinator == "online" and self.options.coordinator_grace_s > 0:
            if pending is None or pending.done():
                self._offline_pending = asyncio.create_task(
                    self._offline_after(self.options.coordinator_grace_s)
                )
            return
        if pending is not None:
            pending.cancel()  # it came back (or said so again) within the grace: no flap reported upward
            self._offline_pending = None
        if self.link.coordinator != status:
            self.link.coordinator = status
            await self._publish_state()

    async def _offline_after(self, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        log.info("gateway %s: the group's coordinator stayed offline for %.0f s", self.gateway_id, grace_s)
        self.link.coordinator = "offline"
        await self._publish_state()

    async def run(self) -> None:
        """Run until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.local.run(), name="gateway-local")
                tg.create_task(self.uplink.run(), name="gateway-uplink")
                tg.create_task(self._pump(), name="gateway-stream")
                tg.create_task(self._heartbeat(), name="gateway-state")
        finally:
            if self._offline_pending is not None:
                self._offline_pending.cancel()
            self.buffer.close()
