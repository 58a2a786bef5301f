"""The coordinator process around the sans-IO :class:`~prsm_edge.protocol.group.Group`.

It owns the MQTT session (its Will is its retained ``offline`` state), the SQLite roster, the clock,
and the effects: signing and publishing, storing members, issuing broker credentials at join (when the
broker enforces per-node ACLs), and logging rejections once per reason per node.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiomqtt
from nacl.public import PublicKey, SealedBox
from nacl.signing import VerifyKey

from prsm_edge.errors import Reason
from prsm_edge.identity import Identity, SeqStore
from prsm_edge.io.session import ConnectParams, Session
from prsm_edge.io.store import RosterStore
from prsm_edge.protocol import topics
from prsm_edge.protocol.group import (
    Effect,
    GrantJoin,
    Group,
    GroupConfig,
    Publish,
    Rejection,
    StoreMember,
    Verification,
)
from prsm_edge.protocol.messages import ApiResponse

__all__ = ["Coordinator", "CoordinatorOptions", "CredentialIssuer", "seal_secret"]

log = logging.getLogger(__name__)


class CredentialIssuer(Protocol):
    """Creates broker credentials for a node (Mosquitto dynamic security)."""

    async def add_node(self, node_id: str, password: str) -> None: ...


def seal_secret(node_public_key: bytes, secret: bytes) -> bytes:
    """Encrypt ``secret`` so only the holder of the node's Ed25519 key can read it."""
    curve = VerifyKey(node_public_key).to_curve25519_public_key()
    return bytes(SealedBox(PublicKey(bytes(curve))).encrypt(secret))


@dataclass(frozen=True, slots=True)
class CoordinatorOptions:
    """How one coordinator runs."""

    site: str
    group: str
    broker_url: str
    workdir: Path
    max_members: int = 200
    heartbeat_timeout_s: float = 35.0
    summary_interval_s: float = 10.0
    tick_s: float = 1.0
    username: str | None = None
    password: str | None = None


def now_ms() -> int:
    """Wall-clock milliseconds (the protocol's timestamps)."""
    return time.time_ns() // 1_000_000


class Coordinator:
    """A level-1 (local group) coordinator."""

    def __init__(
        self,
        identity: Identity,
        options: CoordinatorOptions,
        *,
        issuer: CredentialIssuer | None = None,
        on_verification: Callable[[Verification], Awaitable[None]] | None = None,
    ) -> None:
        self.identity = identity
        self.options = options
        self.issuer = issuer
        self.on_verification = on_verification
        options.workdir.mkdir(parents=True, exist_ok=True)
        self.store = RosterStore(options.workdir / "roster.sqlite")
        self.signer = identity.signer(SeqStore(options.workdir / "coord.seq"))
        epoch = self.store.next_epoch()
        self.group = Group(
            GroupConfig(
                site=options.site,
                group=options.group,
                coordinator=identity.node_id,
                public_key=identity.public_key,
                epoch=epoch,
                max_members=options.max_members,
                heartbeat_timeout_ms=int(options.heartbeat_timeout_s * 1000),
                summary_interval_ms=int(options.summary_interval_s * 1000),
                acl=issuer is not None,
            )
        )
        self.group.restore(self.store.load())
        self._logged: set[tuple[Reason, str]] = set()
        self.ready = asyncio.Event()
        self.session = Session(
            options.broker_url,
            f"coord-{identity.node_id}",
            handler=self._on_message,
            subscriptions=[(topics.group_filter(options.site, options.group), 1)],
            prepare=self._prepare,
            on_connect=self._on_connect,
            goodbye=self._goodbye,
            clean_session=False,
            max_queued=20_000,
        )

    @property
    def epoch(self) -> int:
        """This run's epoch."""
        return self.group.config.epoch

    def _prepare(self) -> ConnectParams:
        topic, offline = self.group.state_message("offline")
        will = aiomqtt.Will(topic, self.signer.seal(offline, now_ms()), qos=1, retain=True)
        return ConnectParams(self.options.username, self.options.password, will)

    async def _on_connect(self) -> None:
        topic, online = self.group.state_message("online")
        await self.session.publish(topic, self.signer.seal(online, now_ms()), qos=1, retain=True)
        log.info(
            "coordinator %s online for %s/%s (epoch %d, %d known members)",
            self.identity.node_id,
            self.options.site,
            self.options.group,
            self.epoch,
            len(self.group.members),
        )
        self.ready.set()

    async def _on_message(self, topic: str, payload: bytes) -> None:
        await self._apply(self.group.receive(topic, payload, now_ms()))

    async def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Publish(topic=topic, message=message, retain=retain, qos=qos):
                    await self.session.publish(
                        topic, self.signer.seal(message, now_ms()), qos=qos, retain=retain
                    )
                case StoreMember(member=member):
                    self.store.save(member)
                case Rejection(reason=reason, node=node, detail=detail):
                    key = (reason, node)
                    level = logging.DEBUG if key in self._logged else logging.WARNING
                    if len(self._logged) < 10_000:
                        self._logged.add(key)
                    log.log(level, "rejected a message from %s: %s (%s)", node or "?", reason.value, detail)
                case GrantJoin():
                    await self._grant(effect)
                case Verification():
                    if self.on_verification is not None:
                        await self.on_verification(effect)

    async def _grant(self, grant: GrantJoin) -> None:
        o = self.options
        result: dict[str, object] = {"username": grant.node, "acl": self.issuer is not None}
        if self.issuer is not None:
            password = secrets.token_urlsafe(24)
            await self.issuer.add_node(grant.node, password)
            result["sealed_password"] = seal_secret(grant.public_key, password.encode())
        resp = ApiResponse(txid=grant.txid, method="join", ok=True, result=result)
        topic = topics.api(topics.Kind.API_RESP, o.site, o.group, "join", grant.node)
        await self.session.publish(topic, self.signer.seal(resp, now_ms()), qos=1)
        log.info("issued broker credentials to %s", grant.node)

    async def run(self) -> None:
        """Run until cancelled; publishes ``offline`` on the way out."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.session.run(), name="coordinator-session")
                tg.create_task(self._ticker(), name="coordinator-tick")
        finally:
            self.store.close()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            if self.session.connected.is_set():
                await self._apply(self.group.tick(now_ms()))

    def _goodbye(self) -> list[tuple[str, bytes]]:
        topic, offline = self.group.state_message("offline")
        return [(topic, self.signer.seal(offline, now_ms()))]
