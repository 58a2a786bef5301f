"""The agent on a device: announce what it offers, keep heartbeats going, obey the owner's limits.

Lifecycle (Sparkplug B rules): connect with a signed Last Will (``offline`` + this connection's
``bdseq``) → wait for the coordinator's retained ``online`` state → if the broker enforces per-node
ACLs and we hold no credentials, ask to join and reconnect with the credentials the coordinator sealed
to our key → publish the birth (retained, signed claims) and ``online`` → heartbeats with telemetry →
answer commands (``rebirth``, ``settings``, ``redirect``). A new coordinator epoch triggers a rebirth.
Births, claims and states go through the on-disk outbox (QoS 1, survive restarts); heartbeats are live
data (QoS 0) and are sent only when the outbox is empty so they never overtake an earlier message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomqtt
import msgspec
from nacl.exceptions import CryptoError
from nacl.public import SealedBox

from prsm_edge import __version__
from prsm_edge.errors import PrsmEdgeError, RejectedMessage
from prsm_edge.identity import Identity, SeqStore, load_or_create
from prsm_edge.io import tpm_registration
from prsm_edge.io.clock import now_ms
from prsm_edge.io.pins import PinStore
from prsm_edge.io.session import ConnectParams, Session
from prsm_edge.io.store import Outbox
from prsm_edge.node.detect import read_sensors
from prsm_edge.node.homeassistant_controls import HaControls
from prsm_edge.node.leases import LeaseDesk
from prsm_edge.node.owner_api import PAUSED_REASON, NodeApi, OwnerOptions, local_server
from prsm_edge.node.prover import Attestor, ProofWork, Prover, machine_rates
from prsm_edge.protocol import proofs, topics
from prsm_edge.protocol.backoff import Backoff
from prsm_edge.protocol.envelope import open_envelope
from prsm_edge.protocol.guardrails import Governor
from prsm_edge.protocol.membership import parse_token, token_proof
from prsm_edge.protocol.messages import (
    ApiRequest,
    ApiResponse,
    BandwidthChunk,
    BenchmarkChallenge,
    CoordState,
    Heartbeat,
    Message,
    NodeBirth,
    NodeCommand,
    NodeState,
    ResourceClaim,
    ResourceSpec,
    ResourceType,
)
from prsm_edge.protocol.offer import Guardrails, Readings
from prsm_edge.protocol.replay import CommandGuard
from prsm_edge.protocol.verifier import claim_hash

__all__ = ["SEAT_WATCH_S", "Agent", "AgentOptions", "Redirected", "Sample"]

log = logging.getLogger(__name__)

SEAT_WATCH_S: Final = 120.0  # how long a panel seat keeps its subject's proof topic (covers a check)
_MAX_WATCHED: Final = 64  # subjects watched at once (a node sits on a few panels a round)

_MAX_PROVING = 2  # challenges proved at once; more wait their turn or miss their deadline
_KEEP_CHALLENGE_IDS = 1024


class Redirected(PrsmEdgeError):
    """The group refused us (full) or told us to go elsewhere."""

    def __init__(self, why: str, to_key: bytes = b"", to_group: str = "") -> None:
        super().__init__(why)
        self.to_key = to_key  # the coordinator the pinned one handed us to (empty: none)
        self.to_group = to_group


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry reading."""

    cpu_util: float
    mem_util: float
    readings: Readings = field(default_factory=Readings)


def sensor_sample() -> Sample:
    """This machine's load and sensors now (absent sensors stay ``None``)."""
    s = read_sensors()
    return Sample(cpu_util=s.cpu_util, mem_util=s.mem_util, readings=s.readings())


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """Everything an agent needs to run; built from settings, detection and the firmware profile."""

    site: str
    group: str
    broker_url: str
    workdir: Path
    resources: list[ResourceSpec]
    device_class: str = "generic"
    hw_fingerprint: str = ""
    heartbeat_interval_s: float = 10.0
    keepalive_s: int = 10
    guardrails: Guardrails = field(default_factory=Guardrails)
    can_coordinate: bool = False
    security_level: str = "standard"
    min_hourly_rate_micro: int = 0  # as Settings.minimum_hourly_rate: take what the market pays
    uptime_commitment: float = 0.95
    priority_level: int = 5
    sample: Callable[[], Sample] = sensor_sample
    # Verification: the per-core rate claimed for the CPU offer (proofs.RATE_KEYS; None: measure at start,
    # with the memory and storage fill rates), the other workloads' rates when given instead of measured,
    # how proofs are computed (None: the node's own; tests substitute cheats), and a TPM attestation key.
    cpu_rate: float | None = None
    rates: dict[str, float] = field(default_factory=dict)
    prover: Prover | None = None
    attestor: Attestor | None = None
    # The owner's API: settings, pairing, the local HTTP server (node/owner_api.py).
    owner: OwnerOptions = field(default_factory=OwnerOptions)
    # Who may lead us: the site's pinned coordinator keys (settings), else the key pinned at first join,
    # kept in pins_path (default: pins.json in workdir; auto-formation keeps it in the node's home).
    trusted_coordinators: frozenset[bytes] = frozenset()
    pins_path: Path | None = None
    join_token: str | None = None  # an enrolment token from the group's host (join policy "token")


class Agent:
    """One node's agent connected to one group."""

    def __init__(self, options: AgentOptions, identity: Identity | None = None) -> None:
        self.options = options
        options.workdir.mkdir(parents=True, exist_ok=True)
        self.identity = identity or load_or_create(options.workdir)
        self.node_id = self.identity.node_id
        self.signer = self.identity.signer(SeqStore(options.workdir / "node.seq"))
        self.outbox = Outbox(options.workdir / "outbox.sqlite")
        self._bdseq_path = options.workdir / "node.bdseq"
        self.bdseq = self._read_bdseq()
        self.coordinator: CoordState | None = None
        self.resources = list(options.resources)
        self.governor = Governor.for_limits(options.guardrails)  # hysteresis and hold over the limits
        self.offering = True
        self.throttle = ""
        self.born = asyncio.Event()
        self.births = 0
        self.redirect: str | None = None
        self.redirect_to: tuple[bytes, str] = (b"", "")
        self._redirected = asyncio.Event()
        self.pins = PinStore(options.pins_path or options.workdir / "pins.json")
        self.commands = CommandGuard()
        self.refused_coordinators = 0  # coordinator states from keys this node does not follow
        self._challenges: OrderedDict[str, None] = OrderedDict()
        self._proving = asyncio.Semaphore(_MAX_PROVING)
        self._state_seq: dict[bytes, int] = {}
        self._join_backoff = Backoff(initial=1.0, cap=30.0)
        self._coord_ts = 0  # the newest timestamp signed by our coordinator: its clock, for freshness
        self._creds_path = options.workdir / "broker-credentials.json"
        self._started = time.monotonic()
        self._pending_join: str | None = None
        self.clock_problem = ""  # set when the coordinator says our clock is off: what to do about it
        self.work = ProofWork(
            self.node_id,
            prover=options.prover,
            attestor=options.attestor,
            claim_hash=lambda: claim_hash(self.node_id, self.resources),
            workdir=options.workdir,
        )
        self._api_waiters: dict[str, asyncio.Future[ApiResponse]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rates: dict[str, int] = {}
        self.leases = LeaseDesk(self.node_id)
        self._watching: dict[str, int] = {}  # subjects of our panel seats -> seats (bounded)
        self.owner_api = NodeApi(self, options.owner)
        self.paused = PAUSED_REASON if self.owner_api.paused else ""
        self.ha_controls = HaControls(self)  # Home Assistant's controls: off unless the owner allows them
        o = options
        self.session = Session(
            o.broker_url,
            self.node_id,
            handler=self._on_message,
            subscriptions=[
                (topics.coord_state(o.site, o.group), 1),
                (f"{topics.ROOT}/{o.site}/{o.group}/node/{self.node_id}/cmd/+", 1),
                # A joiner may read only join responses; a member reads all of its responses (a join
                # response matching both is handled once: its transaction is closed by the first).
                (topics.api(topics.Kind.API_RESP, o.site, o.group, "join", self.node_id), 1),
                (topics.api_responses_filter(o.site, o.group, self.node_id), 1),
                # Peers' proofs: only the subjects of our panel seats, while seated (_watch_subject).
                *self.ha_controls.subscriptions(),
            ],
            prepare=self._prepare,
            on_connect=self._on_connect,
            goodbye=self._goodbye,
            outbox=self.outbox,
            keepalive=o.keepalive_s,
        )

    # ---- connection --------------------------------------------------------------------------
    def _read_bdseq(self) -> int:
        try:
            return int(self._bdseq_path.read_text(encoding="ascii").strip() or "0")
        except (FileNotFoundError, ValueError):
            return 0

    def _credentials(self) -> tuple[str | None, str | None]:
        try:
            data = json.loads(self._creds_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None, None
        if data.get("broker") != self.options.broker_url or data.get("group") != self.options.group:
            return None, None
        return str(data["username"]), str(data["password"])

    def _prepare(self) -> ConnectParams:
        self.bdseq += 1
        self._bdseq_path.write_text(str(self.bdseq), encoding="ascii")
        self.born.clear()
        self.coordinator = None
        o = self.options
        will_msg = NodeState(node=self.node_id, status="offline", bdseq=self.bdseq)
        # seq 0: the Will is signed now but delivered (if ever) later; receivers tie it to the session by
        # bdseq, and a sequence number spent on it would look like a gap in the live stream.
        will = aiomqtt.Will(
            topics.node(topics.Kind.NODE_STATE, o.site, o.group, self.node_id),
            self.signer.seal(will_msg, now_ms(), seq=0),
            qos=1,
            retain=True,
        )
        username, password = self._credentials()
        return ConnectParams(username, password, will)

    async def _on_connect(self) -> None:
        log.debug("%s connected (bdseq %d); waiting for the coordinator", self.node_id, self.bdseq)

    def _goodbye(self) -> list[tuple[str, bytes]]:
        o = self.options
        msg = NodeState(node=self.node_id, status="offline", bdseq=self.bdseq)
        return [
            (
                topics.node(topics.Kind.NODE_STATE, o.site, o.group, self.node_id),
                self.signer.seal(msg, now_ms()),
            )
        ]

    # ---- panel seats -------------------------------------------------------------------------
    async def _watch_subject(self, subject: str) -> None:
        """Receive ``subject``'s proofs while we sit on its panel, not every peer's all the time.

        Every agent watching every proof topic made each one receive the whole group's proofs, openings
        and votes (about 30 times the traffic of the panels it sits on).
        """
        o = self.options
        if not topics.valid_segment(subject):
            return
        count = self._watching.get(subject, 0)
        if count == 0 and len(self._watching) >= _MAX_WATCHED:
            log.warning("%s: on too many panels at once; not watching %s", self.node_id, subject)
            return
        self._watching[subject] = count + 1
        if count == 0:
            await self.session.subscribe(topics.node(topics.Kind.NODE_PROOF, o.site, o.group, subject))
        task = asyncio.create_task(self._unwatch_later(subject))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unwatch_later(self, subject: str) -> None:
        await asyncio.sleep(SEAT_WATCH_S)
        count = self._watching.get(subject, 0) - 1
        if count > 0:
            self._watching[subject] = count
            return
        self._watching.pop(subject, None)
        o = self.options
        await self.session.unsubscribe(topics.node(topics.Kind.NODE_PROOF, o.site, o.group, subject))

    # ---- incoming ----------------------------------------------------------------------------
    async def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        if self.ha_controls.handles(topic):  # plain JSON from Home Assistant (node/homeassistant_controls.py)
            await self.ha_controls.on_message(topic, payload)
            return
        try:
            parsed = topics.parse(topic)
            opened = open_envelope(payload)
        except (RejectedMessage, PrsmEdgeError) as exc:
            log.debug("ignoring a message on %s: %s", topic, exc)
            return
        msg = opened.message
        if parsed.kind is topics.Kind.NODE_PROOF:
            if parsed.node != self.node_id and opened.signer == parsed.node:
                vote = await self.work.observe(opened.signer, msg, now_ms())
                if vote is not None:
                    self._send(topics.Kind.NODE_PROOF, vote)
            return
        if parsed.kind is topics.Kind.COORD_STATE and isinstance(msg, CoordState):
            if opened.signer != msg.coordinator or opened.kid != msg.public_key:
                log.warning("ignoring a coordinator state not signed by the coordinator it names")
                return
            if msg.site != self.options.site or msg.group != self.options.group:
                return
            if not self._may_lead(opened.kid):
                return
            if msg.seq < self._state_seq.get(opened.kid, -1):
                log.debug("%s: ignoring an older coordinator state (seq %d)", self.node_id, msg.seq)
                return  # an older state of the same coordinator (a replayed retained copy)
            self._state_seq[opened.kid] = msg.seq
            self._coord_ts = max(self._coord_ts, msg.ts)
            await self._coordinator_state(msg)
            return
        coord = self.coordinator
        if coord is None or opened.signer != coord.coordinator:
            log.debug("ignoring %s from %s: not our coordinator", type(msg).__name__, opened.signer)
            return
        try:
            # Freshness on the coordinator's own clock (its newest state or command), not ours: a node
            # with a wrong clock must still hear the coordinator (a challenge, or cmd/clock saying so).
            self.commands.check(opened.signer, msg.seq, msg.ts, max(self._coord_ts, msg.ts))
            self._coord_ts = max(self._coord_ts, msg.ts)
        except RejectedMessage as exc:
            log.debug("ignoring %s from the coordinator: %s", type(msg).__name__, exc)
            return
        if parsed.kind is topics.Kind.NODE_CMD and isinstance(msg, NodeCommand) and msg.node == self.node_id:
            await self._command(msg)
        elif parsed.kind is topics.Kind.API_RESP and isinstance(msg, ApiResponse):
            if msg.method == "join":
                await self._join_response(msg)
            else:
                self._api_answer(msg)

    def _may_lead(self, key: bytes) -> bool:
        """True if the coordinator with ``key`` may lead this node; pins it on first contact.

        The site's settings (``trusted_coordinators``) decide when they list keys; else the key pinned at
        this node's first join of the group; a node that never joined the group trusts on first use.
        """
        o = self.options
        if o.trusted_coordinators:
            allowed = key in o.trusted_coordinators
        else:
            pin = self.pins.get(o.site, o.group)
            allowed = pin is None or pin == key
        if not allowed:
            self.refused_coordinators += 1
            level = logging.WARNING if self.refused_coordinators == 1 else logging.DEBUG
            log.log(
                level,
                "%s: ignoring a coordinator of %s/%s with key %s…: not the pinned coordinator",
                self.node_id,
                o.site,
                o.group,
                key.hex()[:16],
            )
            return False
        if self.pins.get(o.site, o.group) is None:
            self.pins.pin(o.site, o.group, key)
        return True

    async def _coordinator_state(self, msg: CoordState) -> None:
        log.debug("%s: coordinator %s is %s (epoch %d)", self.node_id, msg.coordinator, msg.status, msg.epoch)
        if msg.status != "online":
            log.info("coordinator %s is offline; waiting", msg.coordinator)
            self.coordinator = None
            self.born.clear()
            return
        previous = self.coordinator
        self.coordinator = msg
        if previous is not None and previous.epoch == msg.epoch and previous.coordinator == msg.coordinator:
            return  # a periodic refresh of the same coordinator run
        username, _ = self._credentials()
        if username is None and (msg.acl or msg.join_policy != "open"):
            await self._request_join()  # the join policy admits us (and an ACL'd broker issues a login)
        else:
            self._birth()

    async def _request_join(self) -> None:
        o = self.options
        txid = secrets.token_hex(8)
        self._pending_join = txid
        params: dict[str, object] = {}
        if o.join_token:
            params.update(token_proof(parse_token(o.join_token), self.node_id, txid))
        req = ApiRequest(txid=txid, method="join", requester=self.node_id, params=params)
        topic = topics.api(topics.Kind.API_REQ, o.site, o.group, "join", self.node_id)
        await self.session.publish(topic, self.signer.seal(req, now_ms()), qos=1)
        log.info("%s asked to join %s/%s", self.node_id, o.site, o.group)

    async def _join_response(self, msg: ApiResponse) -> None:
        if msg.method != "join" or msg.txid != self._pending_join:
            return
        if not msg.ok and msg.error.startswith("pending_approval"):
            log.info("%s: waiting for the group's host to approve this node", self.node_id)
            return  # the approval answers this same transaction
        self._pending_join = None
        if not msg.ok and msg.error.startswith(("rate_limited", "busy")):
            delay = self._join_backoff.next_delay(random.random())
            log.info("%s: the group is busy admitting others; asking again in %.1f s", self.node_id, delay)
            task = asyncio.create_task(self._join_again(delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if not msg.ok:
            self._leave(f"the group refused to admit this node: {msg.error or 'refused'}")
            return
        sealed = msg.result.get("sealed_password")
        if not isinstance(sealed, bytes):
            self._birth()  # no ACL: nothing to store
            return
        try:
            box = SealedBox(self.identity.signing_key.to_curve25519_private_key())
            password = box.decrypt(sealed).decode()
        except (CryptoError, UnicodeDecodeError) as exc:
            log.warning("could not open the credentials from the coordinator: %s", exc)
            return
        creds = {"broker": self.options.broker_url, "group": self.options.group}
        creds |= {"username": self.node_id, "password": password}
        tmp = self._creds_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(self._creds_path)
        log.info("%s received broker credentials; reconnecting with them", self.node_id)
        self.session.request_reconnect()

    async def _join_again(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.coordinator is not None and self._pending_join is None and self._credentials()[0] is None:
            await self._request_join()

    async def _command(self, cmd: NodeCommand) -> None:
        match cmd.verb:
            case "rebirth":
                if self.clock_problem and cmd.args.get("why") == "not a member":
                    log.debug("%s: not re-announcing until the clock is fixed", self.node_id)
                    return
                log.info("%s: rebirth requested (%s)", self.node_id, cmd.args.get("why", ""))
                self._birth()
            case "clock":
                self._clock_off(str(cmd.args.get("detail", "")), str(cmd.args.get("window_ms", "")))
            case "settings":
                self._apply_limits(cmd.args.get("limit"))
            case "redirect":
                self._follow(cmd.args)
            case "challenge":
                if not self._new_challenge(cmd.args):
                    return
                # Proving takes seconds: run it beside the message loop, not in it.
                task = asyncio.create_task(self._prove(cmd.args))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case "bandwidth":  # move the challenge's chunks through the broker at the claimed rate
                if self._new_challenge(cmd.args):
                    task = asyncio.create_task(self.work.send_bandwidth(cmd.args, self._send_chunk))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            case "open":
                opening = self.work.open(cmd.args)
                if opening is not None:
                    self._send(topics.Kind.NODE_PROOF, opening)
            case "verify":
                subject = self.work.sit(cmd.args)
                if subject is not None:
                    await self._watch_subject(subject)
            case "lease":
                self._answer_lease(cmd.args)
            case "lease_end":
                self.leases.end(cmd.args.get("lease_id"))
            case "owner":  # an owner's signed change, relayed; it may wait on the coordinator: a task
                if len(self._tasks) < 64:
                    task = asyncio.create_task(self.owner_api.relayed(cmd.args))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            case _:
                log.info("%s: ignoring unknown command %r", self.node_id, cmd.verb)

    def _clock_off(self, detail: str, window_ms: str) -> None:
        """The coordinator refused our messages as stale: say so, with the fix, instead of looping."""
        first = not self.clock_problem
        self.clock_problem = (
            f"this device's clock is outside the group's replay window ({window_ms} ms): {detail}; "
            "turn on time synchronisation (e.g. `timedatectl set-ntp true`, or chrony/ntpd) and restart"
        )
        log.log(logging.ERROR if first else logging.DEBUG, "%s: %s", self.node_id, self.clock_problem)
        if first:
            self._retry_birth_later()

    def _retry_birth_later(self) -> None:
        """Re-announce once a minute while the clock is off, in case it has been fixed meanwhile."""

        async def later() -> None:
            await asyncio.sleep(60.0)
            self.clock_problem = ""
            self._birth()

        task = asyncio.create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _apply_limits(self, limits: object) -> None:
        """A coordinator's push: offer at most these fractions (0–1) of what the owner offers, per type.

        The owner's settings stay the ceiling: a push can hold capacity back, never offer more than
        the owner allowed. A push with any value outside 0–1 is refused whole.
        """
        if not isinstance(limits, dict) or not all(isinstance(k, str) for k in limits):
            log.warning("%s: ignoring a settings push without a 'limit' map", self.node_id)
            return
        fractions: dict[str, float] = {}
        for key, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                log.warning(
                    "%s: refusing a settings push: %s=%r is not a fraction 0–1", self.node_id, key, value
                )
                return
            fractions[key] = float(value)
        scaled = [
            msgspec.structs.replace(r, capacity=round(r.capacity * fractions.get(r.type.value, 1.0), 3))
            for r in self.options.resources
        ]
        log.info("%s: coordinator limits applied: %s", self.node_id, fractions)
        self.update_resources(scaled, reason="coordinator limit within the owner's settings")

    def _new_challenge(self, args: dict[str, object]) -> bool:
        """True for a challenge to us not seen before and not yet past its deadline (one task each)."""
        try:
            ch = msgspec.convert(args.get("challenge"), BenchmarkChallenge)
        except msgspec.ValidationError as exc:
            log.warning("%s: ignoring a malformed challenge: %s", self.node_id, exc)
            return False
        if ch.node != self.node_id or ch.challenge_id in self._challenges:
            return False
        self._challenges[ch.challenge_id] = None
        while len(self._challenges) > _KEEP_CHALLENGE_IDS:
            self._challenges.popitem(last=False)
        if self._coord_ts > ch.deadline_ms:  # on the coordinator's clock, which set the deadline
            log.info("%s: challenge %s arrived after its deadline", self.node_id, ch.challenge_id)
            return False
        return True

    def _answer_lease(self, args: dict[str, Any]) -> None:
        """Re-check a lease offer against the owner's limits; answer with a signed ``lease`` request."""
        o = self.options
        decision = self.leases.decide(
            args,
            self.resources,
            offering=self.offering,
            min_hourly_rate_micro=o.min_hourly_rate_micro,
            now_ms=now_ms(),
        )
        log.info(
            "%s: lease %s %s %s",
            self.node_id,
            decision.lease_id,
            "accepted" if decision.accept else "declined",
            decision.reason,
        )
        params = {"lease_id": decision.lease_id, "accept": decision.accept, "reason": decision.reason}
        req = ApiRequest(txid=secrets.token_hex(8), method="lease", requester=self.node_id, params=params)
        self.session.enqueue(
            topics.api(topics.Kind.API_REQ, o.site, o.group, "lease", self.node_id),
            self.signer.seal(req, now_ms()),
        )

    async def _prove(self, args: dict[str, object]) -> None:
        async with self._proving:
            proof = await self.work.challenge(args, now_ms)
        if proof is not None:
            self._send(topics.Kind.NODE_PROOF, proof)

    def _follow(self, args: dict[str, object]) -> None:
        """A redirect from our pinned coordinator; it may hand the pin on to the coordinator it names."""
        reason = str(args.get("reason", ""))[:200]
        to_key, to_group = args.get("to_key"), args.get("to_group")
        valid = isinstance(to_group, str) and topics.valid_segment(to_group)
        if isinstance(to_key, bytes) and len(to_key) == 32 and isinstance(to_group, str) and valid:
            self.pins.pin(self.options.site, to_group, to_key)
            self.redirect_to = (to_key, to_group)
        self._leave(f"the coordinator redirected this node: {reason}")

    def _api_answer(self, msg: ApiResponse) -> None:
        waiter = self._api_waiters.pop(msg.txid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def call(self, method: str, params: dict[str, object], wait_s: float = 10.0) -> ApiResponse:
        """Call a coordinator API method (e.g. ``stake``) and wait for its answer."""
        o = self.options
        txid = secrets.token_hex(8)
        waiter: asyncio.Future[ApiResponse] = asyncio.get_running_loop().create_future()
        self._api_waiters[txid] = waiter
        req = ApiRequest(txid=txid, method=method, requester=self.node_id, params=params)
        self.session.enqueue(
            topics.api(topics.Kind.API_REQ, o.site, o.group, method, self.node_id),
            self.signer.seal(req, now_ms()),
        )
        try:
            async with asyncio.timeout(wait_s):
                return await waiter
        finally:
            self._api_waiters.pop(txid, None)

    def _leave(self, why: str) -> None:
        """Stop this agent: :meth:`run` raises :class:`Redirected` so the caller can look elsewhere."""
        log.warning("%s: %s", self.node_id, why)
        self.redirect = why
        self._redirected.set()

    async def _watch_redirect(self) -> None:
        await self._redirected.wait()
        raise Redirected(self.redirect or "redirected", *self.redirect_to)

    # ---- outgoing ----------------------------------------------------------------------------
    def _topic(self, kind: topics.Kind) -> str:
        return topics.node(kind, self.options.site, self.options.group, self.node_id)

    def _send(self, kind: topics.Kind, msg: Message, *, retain: bool = False) -> None:
        self.session.enqueue(self._topic(kind), self.signer.seal(msg, now_ms()), retain=retain)

    async def _send_chunk(self, chunk: BandwidthChunk) -> bool:
        """Publish one bandwidth chunk now (QoS 0, not through the outbox: it is measured live)."""
        payload = self.signer.seal(chunk, now_ms())
        return await self.session.publish(self._topic(topics.Kind.NODE_BANDWIDTH), payload)

    def _birth(self) -> None:
        o = self.options
        birth = NodeBirth(
            node=self.node_id,
            bdseq=self.bdseq,
            public_key=self.identity.public_key,
            device_class=o.device_class,
            software=f"prsm-edge {__version__}",
            hw_fingerprint=o.hw_fingerprint,
            resources=self.resources,
            security_level=o.security_level,
            min_hourly_rate_micro=o.min_hourly_rate_micro,
            uptime_commitment=o.uptime_commitment,
            can_coordinate=o.can_coordinate,
            priority_level=o.priority_level,
            max_temperature_c=o.guardrails.max_cpu_temperature,
            max_power_w=o.guardrails.max_power_consumption,
            attestation_key=o.attestor.public_key if o.attestor is not None else b"",
            ha_controls=self.ha_controls.enabled,
        )
        self._send(topics.Kind.NODE_BIRTH, birth, retain=True)
        self._send(
            topics.Kind.NODE_STATE,
            NodeState(node=self.node_id, status="online", bdseq=self.bdseq),
            retain=True,
        )
        self.births += 1
        self.born.set()

    def reannounce(self) -> None:
        """Publish the birth again (terms carried only in the birth changed)."""
        self._birth()

    def update_resources(self, resources: list[ResourceSpec], reason: str = "") -> None:
        """Offer different capacity (the owner changed settings); sent as a signed claim."""
        self.resources = self._with_rate(resources)
        if self.births:  # before the first birth there is nothing to update: the birth carries it
            self._send(
                topics.Kind.NODE_CLAIM,
                ResourceClaim(node=self.node_id, resources=self.resources, reason=reason),
            )

    def heartbeat(self) -> Heartbeat:
        """Sample telemetry and apply the owner's guardrails."""
        sample = self.options.sample()
        local = time.localtime()
        decision = self.governor.update(
            sample.readings, now_ms(), local.tm_wday, local.tm_hour * 60 + local.tm_min
        )
        if decision.changed:
            log.warning(
                "%s: %s",
                self.node_id,
                f"holding capacity back: {decision.reason}" if decision.reason else "offering again",
            )
        # The owner's pause (owner API) outranks every other reason while it lasts.
        self.offering = decision.offering and not self.paused
        self.throttle = self.paused or decision.reason
        r = sample.readings
        return Heartbeat(
            node=self.node_id,
            cpu_util=round(sample.cpu_util, 4),
            mem_util=round(sample.mem_util, 4),
            temperature_c=r.temperature_c,
            power_w=r.power_w,
            on_battery=r.on_battery,
            battery_pct=r.battery_pct,
            offering=self.offering,
            throttle=self.throttle,
            uptime_s=round(time.monotonic() - self._started, 1),
        )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_interval_s)
            if not self.born.is_set() or len(self.outbox):
                continue
            hb = self.heartbeat()
            await self.session.publish(
                self._topic(topics.Kind.NODE_TELEMETRY), self.signer.seal(hb, now_ms())
            )
            await self.ha_controls.publish_state()  # Home Assistant sees owner changes too (when on)

    async def _calibrate(self) -> None:
        """Put the rate of each workload (claimed, or measured now) into the offer it proves.

        Measured only when no CPU rate was given: the per-core CPU rate with one lane a claimed core, and
        the memory and storage fill rates where those are offered (a table of about 0.4 s each); once
        per process (``machine_rates``), however many agents it runs.
        """
        rates = dict(self.options.rates)
        measure = self.options.cpu_rate is None
        offered = {r.type for r in self.resources}
        if measure:
            cores = max(
                (int(r.capacity) for r in self.resources if r.type is ResourceType.COMPUTE_CPU), default=1
            )
            lanes = max(1, min(cores, 256))
            rates["cpu"] = await asyncio.to_thread(machine_rates, "cpu", lanes)
            if proofs.RESOURCE_OF["memory"] in offered and "memory" not in rates:
                rates["memory"] = await asyncio.to_thread(machine_rates, "memory")
            if proofs.RESOURCE_OF["storage"] in offered and "storage" not in rates:
                folder = self.options.workdir / "proofs"
                folder.mkdir(parents=True, exist_ok=True)
                rates["storage"] = await asyncio.to_thread(machine_rates, "storage", 1, folder)
        elif self.options.cpu_rate:
            rates["cpu"] = self.options.cpu_rate
        self._rates = {w: round(r) for w, r in rates.items() if w in proofs.RATE_KEYS and r > 0}
        self.resources = self._with_rate(self.resources)

    def _with_rate(self, resources: list[ResourceSpec]) -> list[ResourceSpec]:
        out = list(resources)
        for workload, rate in self._rates.items():
            rtype, key = proofs.RESOURCE_OF[workload], proofs.RATE_KEYS[workload]
            out = [
                msgspec.structs.replace(r, details={**r.details, key: rate}) if r.type is rtype else r
                for r in out
            ]
        return out

    async def run(self) -> None:
        """Run until cancelled (graceful leave: ``offline`` is published) or redirected."""
        await self._calibrate()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.session.run(), name=f"{self.node_id}-session")
                tg.create_task(self._heartbeats(), name=f"{self.node_id}-heartbeat")
                tg.create_task(self._watch_redirect(), name=f"{self.node_id}-redirect")
                a = self.options.attestor
                if a is not None and a.registration is not None and a.activate is not None:
                    reg = tpm_registration.keep_registered(self, a.registration, a.activate)
                    tg.create_task(reg, name=f"{self.node_id}-tpm-registration")
                server = local_server(self.owner_api)
                if server is not None:
                    tg.create_task(server, name=f"{self.node_id}-local-api")
        except* Redirected as group:
            raise group.exceptions[0] from None
        finally:
            for task in list(self._tasks):  # proofs in flight must not outlive the outbox they write to
                task.cancel()
            self.outbox.close()
