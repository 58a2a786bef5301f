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
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import msgspec
from nacl.public import PublicKey, SealedBox
from nacl.signing import VerifyKey

from prsm_edge.coordinator.api import CoordinatorApi, Forward, Relay, Respond, readonly_server
from prsm_edge.coordinator.economy import Economy, EconomyConfig, verifier_performance
from prsm_edge.coordinator.federation import REGION_METHODS, RegionRequests
from prsm_edge.coordinator.homeassistant import HomeAssistant, HomeAssistantOptions
from prsm_edge.coordinator.membership import Admissions, MembershipStore
from prsm_edge.coordinator.rollups import RollupOptions, RollupPublisher, RollupStore
from prsm_edge.errors import LocalError, PrsmEdgeError, Reason
from prsm_edge.identity import Identity, SeqStore
from prsm_edge.io import attest, tpm_registration
from prsm_edge.io.clock import now_ms
from prsm_edge.io.replaystore import PersistentReplayGuard
from prsm_edge.io.session import ConnectParams, Session
from prsm_edge.io.store import EvidenceStore, LedgerStore, RosterStore
from prsm_edge.protocol import cbor, topics
from prsm_edge.protocol.allocation import Allocation, Task
from prsm_edge.protocol.api import METHODS
from prsm_edge.protocol.envelope import PAYLOAD_LIMITS, Signer
from prsm_edge.protocol.group import (
    ApiCall,
    ApiReply,
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
from prsm_edge.protocol.membership import JoinPolicy, evictable
from prsm_edge.protocol.messages import (
    TRUST_SCORE,
    ApiRequest,
    ApiResponse,
    BandwidthChunk,
    BenchmarkProof,
    GroupSummary,
    NodeCommand,
    ProofOpening,
    ResourceType,
    VerificationVote,
)
from prsm_edge.protocol.placement import TaskSpec
from prsm_edge.protocol.verifier import (
    LevelChange,
    RecordContainment,
    RecordEvidence,
    RecordLedger,
    RecordSampling,
    RecordSlashEvidence,
    RunCheck,
    Verifier,
    VerifierConfig,
    VerifierEffect,
    VerifyQuote,
)

__all__ = ["Coordinator", "CoordinatorOptions", "CredentialIssuer", "seal_secret"]

log = logging.getLogger(__name__)

_NO_PRICE_LIMIT = 10**12  # µFTNS/h: a routed task that names no maximum price


class CredentialIssuer(Protocol):
    """Creates broker credentials for a node (Mosquitto dynamic security)."""

    async def add_node(self, node_id: str, password: str) -> None: ...

    async def remove_node(self, node_id: str) -> None: ...


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
    homeassistant: HomeAssistantOptions | None = None  # None: no Home Assistant discovery (the default)
    join_policy: JoinPolicy = dataclasses.field(
        default_factory=JoinPolicy
    )  # who may join, how fast, and when absent members are evicted
    dead_after_s: float = 600.0  # an offline member silent this long no longer holds one of the seats
    economy: EconomyConfig | None = None  # None: hourly settlement, no region bonus
    tpm_ca_dir: Path | None = None  # TPM manufacturer CAs whose EKs may attest (None: none trusted)
    region: str | None = None  # the region coordinator's node id; None: the first one that asks
    http_port: int | None = None  # serve the API's reads over HTTP on 127.0.0.1 (0: any free port)
    rollup: RollupOptions = dataclasses.field(default_factory=RollupOptions)  # trend rollup cadence


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
        self.ledger_store = LedgerStore(options.workdir / "ledger.sqlite", Signer(identity.signing_key))
        self.evidence_store = EvidenceStore(options.workdir / "evidence.sqlite")
        self.ledger = Ledger(self.ledger_store.load())
        self.signer = identity.signer(SeqStore(options.workdir / "coord.seq"))
        epoch = self.store.next_epoch()
        self.replay_guard = PersistentReplayGuard(
            options.workdir / "replay.sqlite", now_ms(), max_signers=options.max_members * 4
        )
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
                dead_after_ms=int(options.dead_after_s * 1000),
                join_policy=options.join_policy.name,
            ),
            levels=lambda member: self.verifier.level(member),
            guard=self.replay_guard,
            credited=lambda member: self.verifier.credited(member),  # counted as measured, not claimed
        )
        self.group.restore(self.store.load())
        self.membership = MembershipStore(options.workdir / "membership.sqlite")
        self.admissions = Admissions(
            options.join_policy,
            self.membership,
            issuer,
            self._answer_join,
            known=lambda node: node in self.group.members,
        )
        if options.join_policy.name != "open":
            self.group.admit = self.admissions.admitted
        vconfig = dataclasses.replace(
            options.verification or VerifierConfig(site=options.site, group=options.group, coordinator=""),
            coordinator=identity.node_id,
        )
        self.verifier = Verifier(vconfig, self.ledger, secret=self.rng.randbytes(32))
        self.economy = Economy(
            options.site,
            options.group,
            self.ledger,
            self.ledger_store,
            level_of=self.group.level,  # read from the verifier, never copied
            performance_of=verifier_performance(self.verifier),
            config=options.economy,
            credited_of=self.verifier.credited,  # paid for what was measured, not what was claimed
        )
        # What was proven before a restart still counts (while current); levels follow from it.
        self.verifier.restore_evidence(self.evidence_store.load(), now_ms())
        self.verifier.restore_sampling(self.evidence_store.load_sampling())
        self.verifier.restore_containment(self.evidence_store.load_containment(), now_ms())
        # Re-execution runs beside the event loop, a few at a time, so arrivals are stamped promptly.
        self._checks = asyncio.Semaphore(2)
        # Only an AK bound to a certified EK by credential activation is asked for quotes.
        self.registrar = tpm_registration.TpmRegistrar(options.workdir / "tpm.sqlite", options.tpm_ca_dir)
        self.api = CoordinatorApi(self.group, self.verifier, self._member_view)
        self.api.economy = self.economy  # earnings, analytics and advice (coordinator/economy.py)
        # Trend rollups (coordinator/rollups.py): sampled from the group, published retained, stored.
        self.rollup_store = RollupStore(options.workdir / "rollups.sqlite")
        self.rollups = RollupPublisher(
            options.site, options.group, self.rollup_store, options.rollup, self.ledger
        )
        # The first commitment waits for members to arrive, so round 1 has verifiers to seat.
        self._warmup_s = min(5.0, vconfig.round_ms / 4000)
        self._started = time.monotonic()
        self._next_round = self._started
        self._warm_count, self._warm_since = -1, self._started
        self._logged: set[tuple[Reason, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        self.homeassistant = (
            None
            if options.homeassistant is None
            else HomeAssistant(options.site, options.group, options.homeassistant)
        )
        subscriptions = [(topics.group_filter(options.site, options.group), 1)]
        if self.homeassistant is not None:
            subscriptions.append((self.homeassistant.status_topic, 1))
        self.session = Session(
            options.broker_url,
            f"coord-{identity.node_id}",
            handler=self._on_message,
            subscriptions=subscriptions,
            prepare=self._prepare,
            on_connect=self._on_connect,
            goodbye=self._goodbye,
            clean_session=False,
            max_queued=20_000,
            send_queue=10_000,  # publishing never waits for a PUBACK: arrivals are stamped as they come
        )
        self.federation = RegionRequests(
            self.group, self.signer, self.session, options.region, engine=self._place_for_region
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
        if self.options.verify:
            # Checks open across a broker outage could not be answered: void them, fail nobody.
            self.verifier.void(now_ms(), "the coordinator lost its broker connection")
            if self.verifier.beacon is not None:
                await self._apply([self.verifier.beacon])
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
        arrived = now_ms()  # stamped before any other work: a proof's lateness is judged on this
        if topic.endswith("/bw") and not self._bandwidth_admits(topic, len(payload)):
            return  # no bandwidth check open for that node, or past its bytes: dropped unread
        if self.homeassistant is not None and topic == self.homeassistant.status_topic:
            self.homeassistant.on_status(payload)
            return
        await self._apply(self.group.receive(topic, payload, arrived))
        parts = topic.split("/")
        if payload and len(parts) == 8 and parts[4] == "api" and parts[6] == "req":
            # Anyone may ask to join, retained or not: clear the topic, so a flood of retained requests
            # is not kept by the broker (a no-op when the request was not retained).
            await self.session.publish(topic, b"", qos=0, retain=True)

    async def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Publish(topic=topic, message=message, retain=retain, qos=qos):
                    if isinstance(message, GroupSummary):
                        message = msgspec.structs.replace(
                            message, market=self.economy.market(self.group.members)
                        )
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
                    refused = self.admissions.submit(effect)  # never waits on the broker here
                    if refused is not None:
                        await refused
                case Verification(node=node, message=message, at_ms=at_ms, raw=raw):
                    await self._verification(node, message, at_ms or now_ms(), raw)
                case ApiCall(node=node, request=request, envelope=envelope):
                    await self._api(node, request, envelope)
                case ApiReply(node=node, response=response, envelope=envelope):
                    await self._api_effects(self.api.reply(node, response, envelope))

    def _bandwidth_admits(self, topic: str, size: int) -> bool:
        parts = topic.split("/")  # prsm/v1/{site}/{group}/node/{node}/bw
        return len(parts) == 7 and parts[4] == "node" and self.verifier.bandwidth.admits(parts[5], size)

    async def _verification(
        self,
        node: str,
        message: BenchmarkProof | ProofOpening | VerificationVote | BandwidthChunk,
        at_ms: int,
        raw: bytes,
    ) -> None:
        member = self.group.members.get(node)
        if member is None or not self.options.verify:
            return
        match message:
            case BenchmarkProof():
                member = self.registrar.view(member)
                await self._apply_verifier(self.verifier.on_proof(member, message, at_ms, raw))
            case ProofOpening():
                await self._apply_verifier(self.verifier.on_opening(message, at_ms, raw))
            case BandwidthChunk():
                await self._apply_verifier(self.verifier.on_chunk(message, at_ms))
            case VerificationVote():
                if self.homeassistant is not None:
                    self.homeassistant.on_vote(message)
                await self._apply_verifier(self.verifier.on_vote(message))

    async def _apply_verifier(self, effects: list[VerifierEffect]) -> None:
        for effect in effects:
            match effect:
                case Publish():
                    await self._apply([effect])
                case LevelChange(node=node, level=level):
                    log.info("%s now holds %s", node, level.value)
                    self.group.level_changed(node)
                case RecordLedger(entries=entries):
                    self.ledger_store.append(entries)
                    await self.federation.report_evidence(entries)
                case RecordEvidence(node=node, claim=claim, record=record):
                    self.evidence_store.save(node, claim, record)
                case RecordSampling(node=node, record=sampling):
                    self.evidence_store.save_sampling(node, sampling)
                case RecordContainment(node=node, workloads=workloads):
                    self.evidence_store.save_containment(node, workloads)
                case RecordSlashEvidence(digest=digest, node=node, evidence=evidence):
                    self.evidence_store.save_slash(digest, node, evidence)
                case RunCheck():
                    self._spawn(self._run_check(effect))
                case VerifyQuote():
                    verified = await asyncio.to_thread(_check_quote, effect)
                    await self._apply_verifier(
                        self.verifier.attestation_result(effect.node, verified, now_ms(), effect.claim_hash)
                    )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_check(self, request: RunCheck) -> None:
        """Re-execute the opened segments in a worker thread (bounded), then hand over the verdict."""
        async with self._checks:
            verdict = await asyncio.to_thread(request.run)
        await self._apply_verifier(self.verifier.check_result(request.challenge_id, verdict))

    async def _api(self, node: str, request: ApiRequest, envelope: bytes) -> None:
        if request.method in REGION_METHODS:  # the region, through the gateway's bridge
            await self.federation.serve(node, request)
            return
        if request.method in METHODS:  # the owner/operator API (coordinator/api.py)
            await self._api_effects(self.api.call(node, request, envelope, now_ms()))
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
                case "lease":  # the agent's answer to a lease offer
                    result = self.economy.lease_answer(node, request.params, now_ms())
                case "ledger":  # the member's own signed entries, the newest that fit, and the head
                    signed: list[bytes] = []
                    for data in reversed(self.ledger_store.signed(node)):
                        if sum(map(len, signed)) + len(data) > 48_000 or len(signed) >= 100:
                            break
                        signed.insert(0, data)
                    head = self.economy.head_message()
                    result = {"entries": signed, "count": head.count, "head": head.head}
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

    async def _api_effects(self, effects: list[Respond | Relay | Forward]) -> None:
        o = self.options
        for effect in effects:
            match effect:
                case Respond(client=client, response=response):
                    topic = topics.api(topics.Kind.API_RESP, o.site, o.group, response.method, client)
                    await self.session.publish(topic, self.signer.seal(response, now_ms()), qos=1)
                case Relay(node=node, command=command):
                    topic = topics.node_cmd(o.site, o.group, node, command.verb)
                    await self.session.publish(topic, self.signer.seal(command, now_ms()), qos=1)
                case Forward(client=client, method=method, envelope=envelope):
                    topic = topics.api(topics.Kind.API_RESP, o.site, o.group, method, client)
                    await self.session.publish(topic, envelope, qos=1)

    def _member_view(self, member: Member) -> dict[str, Any]:
        """What the API's ``status`` adds to the roster: trust, balance, stake, attestation, leases."""
        return self._trust_status(member) | {"leases": self.economy.status(member.node)["leases"]}

    def _trust_status(self, member: Member) -> dict[str, object]:
        now = now_ms()
        required = self.verifier.required_stake(member, now)
        level = self.verifier.level(member, now)
        return {
            "level": level.value,
            "trust": TRUST_SCORE[level],
            "covers": list(self.verifier.covers(member, now)),
            "credited": {w: round(r, 3) for w, r in self.verifier.credited_rates(member).items()},
            "overclaims": self.verifier.overclaims(member),
            "balance_micro": self.ledger.balance(member.node),
            "stake_micro": self.ledger.stake(member.node),
            "required_stake_micro": required.required_micro,
            "capacity_multiplier": required.capacity_multiplier,
            "risk_factor": required.risk_factor,
            "attestation": self.registrar.status(member),
        }

    async def submit(self, task: Task, strategy: str = "hybrid_optimal") -> Allocation:
        """Allocate ``task`` in this group and offer its leases (``AllocationRefused`` names why not)."""
        alloc, effects = self.economy.submit(self.group.members, task, now_ms(), strategy)
        await self._apply(list(effects))
        return alloc

    async def _place_for_region(self, spec: TaskSpec) -> list[tuple[str, dict[ResourceType, float], int]]:
        """A task routed here by the region, allocated by the group's engine (its leases offered)."""
        task = Task(
            task_id=spec.task_id,
            amounts=dict(spec.resources),
            duration_ms=spec.duration_ms,
            max_price_micro_per_hour=spec.max_rate_micro or _NO_PRICE_LIMIT,
            min_level=spec.min_level,
        )
        alloc = await self.submit(task)
        return [(p.node, dict(p.amounts), p.rate_micro_per_hour) for p in alloc.placements]

    async def push_limits(self, node: str, limits: dict[str, float]) -> None:
        """Ask ``node`` to offer at most these fractions of its owner's offer (it never offers more)."""
        o = self.options
        cmd = NodeCommand(verb="settings", node=node, args={"limit": limits})
        await self.session.publish(
            topics.node_cmd(o.site, o.group, node, "settings"), self.signer.seal(cmd, now_ms()), qos=1
        )

    async def redirect_all(self, reason: str, *, to_key: bytes = b"", to_group: str = "") -> None:
        """Tell every member to leave and look for another group (this coordinator is stopping).

        With ``to_key``, members pinned to this coordinator hand their pin on to that coordinator.
        """
        o = self.options
        args: dict[str, object] = {"reason": reason}
        if to_key:
            args |= {"to_key": to_key, "to_group": to_group}
        for node in list(self.group.members):
            cmd = NodeCommand(verb="redirect", node=node, args=args)
            await self.session.publish(
                topics.node_cmd(o.site, o.group, node, "redirect"), self.signer.seal(cmd, now_ms()), qos=1
            )
        await self.session.flush()  # out before the caller stops us

    def deposit(self, account: str, amount_micro: int, key: str, memo: str = "operator deposit") -> None:
        """Credit ``account`` in the group's ledger (idempotent by ``key``)."""
        for effect in self.verifier.deposit(account, amount_micro, key, now_ms(), memo):
            if isinstance(effect, RecordLedger):
                self.ledger_store.append(effect.entries)

    async def _answer_join(self, grant: GrantJoin, ok: bool, error: str) -> None:
        """Answer a join (run by the admissions worker): credentials sealed to the node's key, or why not."""
        o = self.options
        result: dict[str, object] = {}
        if ok:
            result = {"username": grant.node, "acl": self.issuer is not None}
            if self.issuer is not None:
                password = secrets.token_urlsafe(24)
                await self.issuer.add_node(grant.node, password)
                result["sealed_password"] = seal_secret(grant.public_key, password.encode())
        resp = ApiResponse(txid=grant.txid, method="join", ok=ok, result=result, error=error)
        topic = topics.api(topics.Kind.API_RESP, o.site, o.group, "join", grant.node)
        await self.session.publish(topic, self.signer.seal(resp, now_ms()), qos=1)
        if ok:
            log.info("admitted %s%s", grant.node, " and issued broker credentials" if self.issuer else "")

    def _evict(self, now: int) -> None:
        """Evict members absent for longer than the policy allows: roster, record and broker login."""
        policy = self.options.join_policy
        seen = [(m.node, m.online, m.last_seen_ms) for m in self.group.members.values()]
        for node in evictable(seen, now, policy.evict_after_ms):
            if self.group.remove(node):
                self.store.delete(node)
                self.admissions.revoke(node)
                log.info("evicted %s: absent for more than %.0f s", node, policy.evict_after_ms / 1000)

    async def run(self) -> None:
        """Run until cancelled; publishes ``offline`` on the way out."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.session.run(), name="coordinator-session")
                tg.create_task(self._ticker(), name="coordinator-tick")
                http = self.options.http_port
                server = None if http is None else readonly_server(self.api, "127.0.0.1", http, now_ms)
                if server is not None:
                    tg.create_task(server, name="coordinator-http")
                tg.create_task(self.admissions.run(), name="coordinator-admissions")
        finally:
            for task in list(self._tasks):
                task.cancel()
            self.store.close()
            self.ledger_store.close()
            self.membership.close()
            self.replay_guard.close()
            self.evidence_store.close()
            self.registrar.close()
            self.rollup_store.close()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            if not self.session.connected.is_set():
                continue
            now = now_ms()
            self._evict(now)
            await self._apply(self.group.tick(now))
            if self.homeassistant is not None:
                members = self.group.members.values()
                ha_messages = self.homeassistant.tick(
                    members, now, level=self.group.level, balance_micro=self.ledger.balance
                )
                for ha in ha_messages:
                    await self.session.publish(ha.topic, ha.payload, qos=1, retain=ha.retain)
            await self._api_effects(self.api.tick(now))
            await self._apply(list(await self.economy.tick(self.group.members, now)))
            rollup = self.rollups.tick(
                self.group.members, now, level_of=self.group.level, market=self.economy.market
            )
            await self._apply(list(rollup))
            if not self.options.verify:
                continue
            try:
                await self._verification_tick(now)
            except Exception:  # a supervisor boundary: log it and keep the coordinator serving
                # One member's bad data must never stop verification of the others (nor the coordinator).
                log.exception("a verification tick failed; verification goes on at the next tick")

    async def _verification_tick(self, now: int) -> None:
        members = self.group.members
        viewed = {node: self.registrar.view(m) for node, m in members.items()}
        await self._apply_verifier(self.verifier.tick(viewed, now, self.rng))
        if self.verifier.beacon is None:
            # Round 1's verifiers are those online at this first commitment: wait until arrivals settle
            # (no change for the warm-up), at most one round.
            mono, online = time.monotonic(), self.group.online_count
            if online != self._warm_count:
                self._warm_count, self._warm_since = online, mono
            settled = online > 0 and mono - self._warm_since >= self._warmup_s
            if settled or mono - self._started >= self.verifier.config.round_ms / 1000:
                await self._apply([self.verifier.opening_beacon(members.values())])
                self._next_round = mono + self._warmup_s
            return
        if time.monotonic() >= self._next_round:
            self._next_round = time.monotonic() + self.verifier.config.round_ms / 1000
            current = list(viewed.values())
            await self._apply_verifier(self.verifier.observe_claims(current, now))
            await self._apply_verifier(self.verifier.start_round(current, now, self.rng))

    def _goodbye(self) -> list[tuple[str, bytes]]:
        topic, offline = self.group.state_message("offline")
        return [(topic, self.signer.seal(offline, now_ms()))]
