"""The regional coordinator process around the sans-IO :class:`~prsm_edge.protocol.region.Region`.

It owns the session on the region's broker (its Will is its retained ``offline`` state, so gateways hold
their births until it is back), the epoch counter, the clock, and the effects: signing and publishing,
logging refusals once per reason per unit, and resolving the callers of :meth:`place`, :meth:`submit`
and :meth:`drill`.

Allocation traffic (task and drill-down requests down, their answers up, ``submit`` requests from
clients) has a connection of its own, so it never queues behind thousands of summaries on one socket or
in one incoming queue; both connections publish through bounded send queues, so no handler waits for a
broker's acknowledgement before the next message is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from prsm_edge.coordinator.rollups import RegionRollupPublisher, RollupOptions, RollupStore
from prsm_edge.errors import Reason, TopicError
from prsm_edge.identity import Identity, SeqStore
from prsm_edge.io.clock import now_ms
from prsm_edge.io.heap import QuietHeap
from prsm_edge.io.session import ConnectParams, Session
from prsm_edge.io.store import RosterStore
from prsm_edge.io.unit_pins import PinStore
from prsm_edge.protocol import topics
from prsm_edge.protocol.group import Publish, Rejection
from prsm_edge.protocol.messages import GroupSummary, UnitState
from prsm_edge.protocol.placement import TaskSpec
from prsm_edge.protocol.region import (
    DrillVerdict,
    LeaseGranted,
    PinUnit,
    Region,
    RegionConfig,
    RegionEffect,
    StreamItem,
    TaskPlaced,
    TaskRefused,
    UnitChange,
)

__all__ = ["RegionCoordinator", "RegionOptions"]

log = logging.getLogger(__name__)

_SEND_QUEUE = 20_000  # publications waiting for a connection's sender (then refused, counted)
# What travels on the allocation connection: requests to units and answers to clients.
_TASK_KINDS = frozenset({topics.Kind.UNIT_API_REQ, topics.Kind.API_RESP})


def _is_task_traffic(topic: str) -> bool:
    try:
        return topics.parse(topic).kind in _TASK_KINDS
    except TopicError:
        return False


@dataclass(frozen=True, slots=True)
class RegionOptions:
    """How one regional coordinator runs."""

    site: str
    region: str
    broker_url: str
    workdir: Path
    tier: int = 2
    dead_after_s: float = 25.0
    summary_interval_s: float = 10.0
    tick_s: float = 1.0
    task_timeout_s: float = 5.0
    max_units: int = 20_000
    pinned: dict[tuple[str, str], bytes] | None = None
    username: str | None = None
    password: str | None = None
    quiet_heap: bool = False  # freeze long-lived objects each tick (io/heap.py): for a process of its own
    rollup: RollupOptions = dataclasses.field(default_factory=RollupOptions)  # trend rollup cadence


class RegionCoordinator:
    """A tier-2 (or higher) coordinator: its units are the summaries of the tier below."""

    def __init__(
        self, identity: Identity, options: RegionOptions, *, rng: random.Random | None = None
    ) -> None:
        self.identity = identity
        self.options = options
        self.rng = rng or random.Random()
        options.workdir.mkdir(parents=True, exist_ok=True)
        self.pins = PinStore(options.workdir / "pins.sqlite")
        store = RosterStore(options.workdir / "region.sqlite")
        epoch = store.next_epoch()
        store.close()
        self.signer = identity.signer(SeqStore(options.workdir / "region.seq"))
        self.region = Region(
            RegionConfig(
                site=options.site,
                region=options.region,
                coordinator=identity.node_id,
                public_key=identity.public_key,
                epoch=epoch,
                tier=options.tier,
                dead_after_ms=int(options.dead_after_s * 1000),
                summary_interval_ms=int(options.summary_interval_s * 1000),
                task_timeout_ms=int(options.task_timeout_s * 1000),
                max_units=options.max_units,
                pinned=options.pinned,
            )
        )
        self.region.restore_pins(self.pins.load())
        # Trend rollup of the region (coordinator/rollups.py), retained on its coord/rollup, stored.
        self.rollups = RegionRollupPublisher(
            options.site, options.region, RollupStore(options.workdir / "rollups.sqlite"), options.rollup
        )
        self.ready = asyncio.Event()
        self.listeners: list[Callable[[RegionEffect], None]] = []
        self._tasks: dict[str, asyncio.Future[LeaseGranted | TaskRefused]] = {}
        self._drills: dict[tuple[str, str], asyncio.Future[DrillVerdict]] = {}
        self._logged: set[tuple[Reason, str]] = set()
        self.heap = QuietHeap() if options.quiet_heap else None
        # Each unit's standing as we last published it (retained): its echo needs no second look.
        self._said: dict[str, bytes] = {}
        o = options
        tree = f"{topics.ROOT}/{o.site}/{o.region}"
        self.session = Session(
            o.broker_url,
            f"region-{identity.node_id}",
            handler=self._on_message,
            subscriptions=[
                # Standings first: on a (re)start their retained copies then arrive before the units'
                # summaries, while no unit is known yet, and are passed over unchecked; each unit's
                # birth publishes its standing afresh (instead of checking and restating 5,000 old ones).
                (topics.unit_filter(o.site, o.region, "state"), 1),  # to restate an overwritten one
                (topics.unit_filter(o.site, o.region, "summary"), 1),
                (topics.unit_filter(o.site, o.region, "stream"), 1),
                (f"{topics.ROOT}/+/gw/+/state", 1),
            ],
            prepare=self._prepare,
            on_connect=self._on_connect,
            goodbye=self._goodbye,
            clean_session=False,
            max_queued=50_000,
            send_queue=_SEND_QUEUE,
        )
        # The allocation connection: same identity and credentials, no Will (the state is the main one's).
        self.tasks = Session(
            o.broker_url,
            f"region-{identity.node_id}-tasks",
            handler=self._on_message,
            subscriptions=[
                (f"{tree}/unit/+/+/api/+/resp/{identity.node_id}", 1),
                (f"{tree}/api/submit/req/+", 1),
            ],
            prepare=lambda: ConnectParams(o.username, o.password),
            clean_session=False,
            max_queued=10_000,
            send_queue=_SEND_QUEUE,
        )

    @property
    def epoch(self) -> int:
        """This run's epoch."""
        return self.region.config.epoch

    def _prepare(self) -> ConnectParams:
        topic, offline = self.region.state_message("offline")
        will = aiomqtt.Will(topic, self.signer.seal(offline, now_ms()), qos=1, retain=True)
        return ConnectParams(self.options.username, self.options.password, will)

    async def _on_connect(self) -> None:
        await self.tasks.connected.wait()  # allocation answers need their connection before we are online
        topic, online = self.region.state_message("online")
        await self.session.publish(topic, self.signer.seal(online, now_ms()), qos=1, retain=True)
        # The units' retained standing again, in case the broker lost its retained store.
        await self._apply([self.region.unit_state(u) for u in list(self.region.units.values())])
        log.info(
            "region coordinator %s online for %s/%s (tier %d, epoch %d)",
            self.identity.node_id,
            self.options.site,
            self.options.region,
            self.options.tier,
            self.epoch,
        )
        self.ready.set()

    def _goodbye(self) -> list[tuple[str, bytes]]:
        topic, offline = self.region.state_message("offline")
        return [(topic, self.signer.seal(offline, now_ms()))]

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if self._said.get(topic) == payload:
            return  # our own retained word coming back from the broker, byte for byte: nothing to check
        await self._apply(self.region.receive(topic, payload, now_ms()))

    async def _apply(self, effects: list[RegionEffect]) -> None:
        for effect in effects:
            for listener in self.listeners:
                listener(effect)
            match effect:
                case Publish(topic=topic, message=message, retain=retain, qos=qos):
                    session = self.tasks if _is_task_traffic(topic) else self.session
                    payload = self.signer.seal(message, now_ms())
                    said, room = self._said, len(self._said) < self.options.max_units
                    if isinstance(message, UnitState) and (topic in said or room):
                        said[topic] = payload  # one per unit: the last standing we published
                    await session.publish(topic, payload, qos=qos, retain=retain)
                case Rejection(reason=reason, node=unit, detail=detail):
                    key = (reason, unit)
                    level = logging.DEBUG if key in self._logged else logging.WARNING
                    if len(self._logged) < 10_000:
                        self._logged.add(key)
                    log.log(level, "refused a message from %s: %s (%s)", unit or "?", reason.value, detail)
                case PinUnit(site=site, group=group, key=key):
                    self.pins.save(site, group, key)
                case UnitChange(site=site, group=group, alive=alive, why=why):
                    log.info("unit %s/%s is %s (%s)", site, group, "alive" if alive else "DEAD", why)
                case TaskPlaced(task_id=task_id, site=site, group=group, attempt=attempt):
                    log.debug("task %s placed on %s/%s (attempt %d)", task_id, site, group, attempt + 1)
                case LeaseGranted(task_id=task_id) | TaskRefused(task_id=task_id):
                    future = self._tasks.pop(task_id, None)
                    if future is not None and not future.done():
                        future.set_result(effect)
                case DrillVerdict(site=site, group=group):
                    drill = self._drills.pop((site, group), None)
                    if drill is not None and not drill.done():
                        drill.set_result(effect)
                case StreamItem(site=site, group=group, kind=kind, historical=historical):
                    log.debug("%s/%s reported %s%s", site, group, kind, " (historical)" if historical else "")

    async def place(self, task: TaskSpec) -> TaskPlaced | TaskRefused:
        """The region's decision, at once: the group chosen and its capacity reserved (or why none).

        The group's lease confirms the placement later (a :class:`LeaseGranted` effect for the listeners;
        :meth:`submit` waits for it); a refusal there moves the task to the next candidate.
        """
        effects = self.region.submit(task, now_ms(), self.rng)
        await self._apply(effects)  # publications are queued: nothing here waits for a broker
        for effect in effects:
            if isinstance(effect, TaskPlaced | TaskRefused) and effect.task_id == task.task_id:
                return effect
        return TaskRefused(task.task_id, "this task is already being placed")

    async def submit(self, task: TaskSpec, wait_s: float = 15.0) -> LeaseGranted | TaskRefused:
        """Route a task to a group and wait for its lease (or the refusal)."""
        future: asyncio.Future[LeaseGranted | TaskRefused] = asyncio.get_running_loop().create_future()
        self._tasks[task.task_id] = future
        await self._apply(self.region.submit(task, now_ms(), self.rng))
        try:
            async with asyncio.timeout(wait_s):
                return await future
        finally:
            self._tasks.pop(task.task_id, None)

    async def drill(self, site: str, group: str, indexes: list[int], wait_s: float = 10.0) -> DrillVerdict:
        """Ask a group to open these leaves of its summary's claims and check them."""
        future: asyncio.Future[DrillVerdict] = asyncio.get_running_loop().create_future()
        self._drills[(site, group)] = future
        await self._apply(self.region.drill(site, group, indexes, now_ms()))
        try:
            async with asyncio.timeout(wait_s):
                return await future
        finally:
            self._drills.pop((site, group), None)

    async def run(self) -> None:
        """Run until cancelled; publishes ``offline`` on the way out."""
        try:
            await self._run()
        finally:
            self.pins.close()
            self.rollups.store.close()
            if self.heap is not None:
                self.heap.close()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.tasks.run(), name="region-tasks")
            tg.create_task(self.session.run(), name="region-session")
            tg.create_task(self._ticker(), name="region-tick")

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            if self.session.connected.is_set():
                await self._apply(self.region.tick(now_ms()))
                await self._apply(list(self.rollups.tick(self._rollup_units, now_ms())))
            if self.heap is not None:
                self.heap.tick()

    def _rollup_units(self) -> list[tuple[GroupSummary, bool]]:
        return [(u.summary, u.alive) for u in self.region.units.values()]
