"""The coordinator process around the sans-IO :class:`~prsm_edge.protocol.group.Group`.

It owns the MQTT session (its Will is its retained ``offline`` state), the SQLite roster, the clock,
and the effects: signing and publishing, storing members, issuing broker credentials at join (when the
broker enforces per-node ACLs), and logging rejections once per reason per node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiomqtt
import msgspec
from nacl.public import PublicKey, SealedBox
from nacl.signing import VerifyKey

from prsm_edge.coordinator.federation import REGION_METHODS, RegionRequests
from prsm_edge.errors import LocalError, PrsmEdgeError, Reason
from prsm_edge.identity import Identity, SeqStore
from prsm_edge.io import attest, tpm_registration
from prsm_edge.io.clock import now_ms
from prsm_edge.io.session import ConnectParams, Session
from prsm_edge.io.store import LedgerStore, RosterStore
from prsm_edge.protocol import cbor, topics
from prsm_edge.protocol.envelope import PAYLOAD_LIMITS
from prsm_edge.protocol.group import (
    ApiCall,
    Effect,
    GrantJoin,
    Group,
    GroupConfig,
    Member,
    Publish,
    Rejection,
    StoreMember,
    Verification,
)
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import (
    ApiRequest,
    ApiResponse,
    BenchmarkProof,
    NodeCommand,
    ProofOpening,
    VerificationVote,
)
from prsm_edge.protocol.verifier import (
    LevelChange,
    RecordLedger,
    Verifier,
    VerifierConfig,
    VerifierEffect,
    VerifyQuote,
)

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
    verify: bool = True
    verification: VerifierConfig | None = None  # None: the defaults for this site/group
    tpm_ca_dir: Path | None = None  # TPM manufacturer CAs whose EKs may attest (None: none trusted)
    region: str | None = None  # the region coordinator's node id; None: the first one that asks


def _check_quote(request: VerifyQuote) -> bool:
    """Verify a TPM quote carried in a proof (runs tpm2_checkquote; call from a thread)."""
    try:
        quote = msgspec.convert(cbor.loads(request.quote, PAYLOAD_LIMITS), attest.Quote)
        attest.verify_quote(request.attestation_key, quote, request.nonce, request.claim_hash)
    except (PrsmEdgeError, msgspec.ValidationError) as exc:
        log.warning("attestation of %s refused: %s", request.node, exc)
        return False
    return True


class Coordinator:
    """A level-1 (local group) coordinator."""

    def __init__(
        self,
        identity: Identity,
        options: CoordinatorOptions,
        *,
        issuer: CredentialIssuer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.options = options
        self.issuer = issuer
        self.rng = rng or random.SystemRandom()
        options.workdir.mkdir(parents=True, exist_ok=True)
        self.store = RosterStore(options.workdir / "roster.sqlite")
        self.ledger_store = LedgerStore(options.workdir / "ledger.sqlite")
        self.ledger = Ledger(self.ledger_store.load())
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
        vconfig = dataclasses.replace(
            options.verification or VerifierConfig(site=options.site, group=options.group, coordinator=""),
            coordinator=identity.node_id,
        )
        self.verifier = Verifier(vconfig, self.ledger, secret=self.rng.randbytes(32))
        # Only an AK bound to a certified EK by credential activation is asked for quotes.
        self.registrar = tpm_registration.TpmRegistrar(options.workdir / "tpm.sqlite", options.tpm_ca_dir)
        self._next_round = time.monotonic() + 1.0
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
        self.federation = RegionRequests(self.group, self.signer, self.session, options.region)

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
        if self.options.verify:
            await self._apply([self.verifier.opening_beacon()])
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
                case Verification(node=node, message=message):
                    await self._verification(node, message)
                case ApiCall(node=node, request=request):
                    await self._api(node, request)

    async def _verification(
        self, node: str, message: BenchmarkProof | ProofOpening | VerificationVote
    ) -> None:
        member = self.group.members.get(node)
        if member is None:
            return
        match message:
            case BenchmarkProof():
                member = self.registrar.view(member)
                await self._apply_verifier(self.verifier.on_proof(member, message, now_ms()))
            case ProofOpening():
                await self._apply_verifier(self.verifier.on_opening(message, now_ms()))
            case VerificationVote():
                await self._apply_verifier(self.verifier.on_vote(message))

    async def _apply_verifier(self, effects: list[VerifierEffect]) -> None:
        for effect in effects:
            match effect:
                case Publish():
                    await self._apply([effect])
                case LevelChange(node=node, level=level):
                    log.info("%s now holds %s", node, level.value)
                    await self._apply(self.group.set_level(node, level))
                case RecordLedger(entries=entries):
                    self.ledger_store.append(entries)
                    await self.federation.report_evidence(entries)
                case VerifyQuote():
                    verified = await asyncio.to_thread(_check_quote, effect)
                    await self._apply_verifier(
                        self.verifier.attestation_result(effect.node, verified, now_ms())
                    )

    async def _api(self, node: str, request: ApiRequest) -> None:
        if request.method in REGION_METHODS:  # the region, through the gateway's bridge
            await self.federation.serve(node, request)
            return
        o = self.options
        result: dict[str, object] = {}
        error = ""
        member = self.group.members.get(node)
        try:
            if member is None:
                raise LocalError("not a member of this group")
            match request.method:
                case "stake":
                    amount = request.params.get("amount_micro")
                    if not isinstance(amount, int) or amount <= 0:
                        raise LocalError("amount_micro must be a positive integer")
                    await self._apply_verifier(
                        self.verifier.stake(member, amount, f"stake:{node}:{request.txid}", now_ms())
                    )
                    result = self._trust_status(member)
                case "status":
                    result = self._trust_status(member)
                case tpm_registration.REGISTER | tpm_registration.ACTIVATE:
                    result = await self.registrar.serve(member, request.method, request.params, now_ms())
                    for lost in self.registrar.drain_revoked():
                        await self._apply_verifier(self.verifier.attestation_result(lost, False, now_ms()))
                case _:
                    raise LocalError(f"unknown method {request.method!r}")
        except LocalError as exc:
            error = str(exc)
        resp = ApiResponse(txid=request.txid, method=request.method, ok=not error, result=result, error=error)
        topic = topics.api(topics.Kind.API_RESP, o.site, o.group, request.method, node)
        await self.session.publish(topic, self.signer.seal(resp, now_ms()), qos=1)

    def _trust_status(self, member: Member) -> dict[str, object]:
        required = self.verifier.required_stake(member, now_ms())
        return {
            "level": member.level.value,
            "trust": member.trust,
            "balance_micro": self.ledger.balance(member.node),
            "stake_micro": self.ledger.stake(member.node),
            "required_stake_micro": required.required_micro,
            "capacity_multiplier": required.capacity_multiplier,
            "risk_factor": required.risk_factor,
            "attestation": self.registrar.status(member),
        }

    async def push_limits(self, node: str, limits: dict[str, float]) -> None:
        """Ask ``node`` to offer at most these fractions of its owner's offer (it never offers more)."""
        o = self.options
        cmd = NodeCommand(verb="settings", node=node, args={"limit": limits})
        await self.session.publish(
            topics.node_cmd(o.site, o.group, node, "settings"), self.signer.seal(cmd, now_ms()), qos=1
        )

    async def redirect_all(self, reason: str) -> None:
        """Tell every member to leave and look for another group (this coordinator is stopping)."""
        o = self.options
        for node in list(self.group.members):
            cmd = NodeCommand(verb="redirect", node=node, args={"reason": reason})
            await self.session.publish(
                topics.node_cmd(o.site, o.group, node, "redirect"), self.signer.seal(cmd, now_ms()), qos=1
            )

    def deposit(self, account: str, amount_micro: int, key: str, memo: str = "operator deposit") -> None:
        """Credit ``account`` in the group's ledger (idempotent by ``key``)."""
        for effect in self.verifier.deposit(account, amount_micro, key, now_ms(), memo):
            if isinstance(effect, RecordLedger):
                self.ledger_store.append(effect.entries)

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
            self.ledger_store.close()
            self.registrar.close()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            if not self.session.connected.is_set():
                continue
            now = now_ms()
            await self._apply(self.group.tick(now))
            if not self.options.verify:
                continue
            members = self.group.members
            await self._apply_verifier(self.verifier.tick(members, now))
            if time.monotonic() >= self._next_round:
                self._next_round = time.monotonic() + self.verifier.config.round_ms / 1000
                current = [self.registrar.view(m) for m in members.values()]
                await self._apply_verifier(self.verifier.observe_claims(current, now))
                await self._apply_verifier(self.verifier.start_round(current, now, self.rng))

    def _goodbye(self) -> list[tuple[str, bytes]]:
        topic, offline = self.group.state_message("offline")
        return [(topic, self.signer.seal(offline, now_ms()))]
