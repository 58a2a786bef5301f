"""The coordinator's economy: settlement every period, leases, listings, the ledger's published head.

It drives the sans-IO parts (:mod:`~prsm_edge.protocol.earnings`, :mod:`~prsm_edge.protocol.allocation`,
:mod:`~prsm_edge.protocol.leases`, :mod:`~prsm_edge.protocol.market`) with the group's members, the
verifier's levels and the clock, and performs their effects: ledger entries made durable (group commit)
*before* anything that acknowledges them is published, then the chain head (retained), listings
(retained) and lease offers.

Settlement. Periods are aligned to the wall clock (``period_ms``), and every credit's idempotency key
names its period and node (``earn:{period start}:{node}``), so a settlement that is repeated (after a
crash, a restart or a redelivered trigger) finds its keys already in the ledger and credits nothing
twice. Base-rate changes are ledger entries too (``rate:{period start}:{resource}``), signed and chained
like credits. Leases live in memory: a coordinator restart releases them (their nodes are offered new
ones); verified work not yet settled when the process dies is lost, never paid twice.
"""

from __future__ import annotations

import logging
import math
import statistics
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import msgspec

from prsm_edge.errors import LocalError
from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol import advice, topics
from prsm_edge.protocol.allocation import Allocation, Candidate, Task, allocate
from prsm_edge.protocol.earnings import (
    DEFAULT_RATES,
    BaseRate,
    EarningsPolicy,
    GroupFacts,
    NodeFacts,
    RatePolicy,
    ResourceUse,
    settle,
)
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.leases import LeaseBook, LeaseError, Released
from prsm_edge.protocol.ledger import Ledger, LedgerError, LedgerKind
from prsm_edge.protocol.market import listing, market_summary
from prsm_edge.protocol.messages import (
    MICRO,
    TRUST_SCORE,
    LedgerEntry,
    LedgerHead,
    MarketListing,
    NodeCommand,
    ResourceSpec,
    ResourceType,
    VerificationLevel,
)
from prsm_edge.protocol.verifier import Verifier

__all__ = ["Economy", "EconomyConfig", "load_regions", "region_bonus", "verifier_performance"]

log = logging.getLogger(__name__)


def load_regions() -> dict[str, float]:
    """The region table shipped with the package: region code → geographic bonus."""
    text = resources.files("prsm_edge.coordinator").joinpath("regions.toml").read_text(encoding="utf-8")
    table = tomllib.loads(text).get("regions", {})
    return {str(k): float(v["bonus"]) for k, v in table.items()}


def region_bonus(region: str) -> float:
    """The bonus of ``region`` (1.0 for none or an unknown one)."""
    if not region:
        return 1.0
    bonus = load_regions().get(region)
    if bonus is None:
        raise LocalError(f"unknown region {region!r}; see regions.toml for the codes (UN M49 sub-regions)")
    return bonus


@dataclass(frozen=True, slots=True)
class EconomyConfig:
    """How the group's economy runs."""

    period_ms: int = 3_600_000
    region: str = ""
    policy: EarningsPolicy = field(default_factory=EarningsPolicy)
    rates: Mapping[ResourceType, int] = field(default_factory=lambda: dict(DEFAULT_RATES))
    answer_ms: int = 15_000
    renew_ms: int = 60_000


def _number(value: object, default: float, low: float, high: float) -> float:
    """A caller's number, checked: finite and within [low, high] (``default`` when absent)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise LocalError(f"expected a number, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise LocalError(f"expected a number, not {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise LocalError(f"{number} is outside {low:g}–{high:g}")
    return number


PerformanceOf = Callable[[str], tuple[int, float]]  # node → (consecutive verified results, measured rate)


def verifier_performance(verifier: Verifier) -> PerformanceOf:
    """Read a node's run of consecutive verified results and its credited per-core CPU rate (what its
    checks measured, never above its claim) from the verifier."""

    def of(node: str) -> tuple[int, float]:
        return verifier.sampler.record_of(node).run, verifier.measured_per_lane(node, "cpu")

    return of


CreditOf = Callable[[Member], list[ResourceSpec]]


def _claimed(member: Member) -> list[ResourceSpec]:
    return member.resources


class Economy:
    """Settlement, leases and listings of one group, around its one ledger."""

    def __init__(
        self,
        site: str,
        group: str,
        ledger: Ledger,
        store: LedgerStore,
        *,
        level_of: Callable[[str], VerificationLevel],
        performance_of: PerformanceOf = lambda _node: (0, 0.0),
        config: EconomyConfig | None = None,
        credited_of: CreditOf = _claimed,
    ) -> None:
        self.site, self.group = site, group
        self.ledger = ledger
        self.store = store
        self.level_of = level_of
        self.performance_of = performance_of
        self.credited_of = credited_of  # what the verifier measured (capacity_t is never the raw claim)
        self.config = config or EconomyConfig()
        self.geographic = region_bonus(self.config.region)
        self.leases = LeaseBook(answer_ms=self.config.answer_ms, renew_ms=self.config.renew_ms)
        self.rates = {t: BaseRate(t, RatePolicy.around(r)) for t, r in self.config.rates.items()}
        self._restore_rates()
        self.hourly: dict[str, float] = {}  # µFTNS/h of each node's last credit
        self._listed: dict[str, MarketListing] = {}
        self._head_published = b""
        self._last_market: dict[str, Any] = {}
        self._settled = self._last_settled_period()

    # ---- state from the ledger ---------------------------------------------------------------
    def _restore_rates(self) -> None:
        for entry in self.ledger.entries:
            if entry.kind == LedgerKind.RATE and entry.account.startswith("market:"):
                try:
                    t = ResourceType(entry.account.removeprefix("market:"))
                except ValueError:
                    continue
                if t in self.rates:
                    self.rates[t] = BaseRate(t, self.rates[t].policy, entry.amount_micro)

    def _last_settled_period(self) -> int:
        last = -1
        for entry in self.ledger.entries:
            if entry.key.startswith(("earn:", "rate:")):
                try:
                    last = max(last, int(entry.key.split(":")[1]))
                except ValueError:
                    continue
        return last

    @property
    def settled_through(self) -> int:
        """Start (ms) of the last period already settled (−1 if none)."""
        return self._settled

    def current_rates(self) -> dict[ResourceType, int]:
        """The base rate of every resource type now (µFTNS per unit-hour)."""
        return {t: r.rate for t, r in self.rates.items()}

    # ---- settlement --------------------------------------------------------------------------
    def settle_entries(self, members: Mapping[str, Member], period_start: int) -> list[LedgerEntry]:
        """Credit every node for the period starting at ``period_start`` (idempotent by key)."""
        c = self.config
        hours = c.period_ms / 3_600_000
        served = self.leases.take_served()
        facts = []
        for node, per in sorted(served.items()):
            member = members.get(node)
            if member is None:
                continue
            streak, measured = self.performance_of(node)
            offered = self._offered(member)
            uses = tuple(
                ResourceUse(t, offered.get(t, 0.0), v)
                for t, v in sorted(per.items())
                if offered.get(t, 0) > 0
            )
            owner = member.hw_fingerprint or member.node
            facts.append(NodeFacts(node, owner, self.level_of(node), uses, streak, measured))
        rates_now = self.current_rates()
        # The group's measured throughput: every member the verifier has measured, not only those paid now.
        rates = [self.performance_of(n)[1] for n in members]
        median = statistics.median([r for r in rates if r > 0 and math.isfinite(r)] or [0.0])
        group = GroupFacts(rates_now, self.geographic, median)
        before = len(self.ledger)
        for earning in settle(facts, group, hours, c.policy):
            key = f"earn:{period_start}:{earning.node}"
            if self.ledger.get(key) is not None:
                continue  # settled before (a repeat after a restart): never twice
            self.ledger.append(
                earning.node,
                earning.amount_micro,
                LedgerKind.CREDIT,
                key,
                period_start + c.period_ms,
                memo=f"earnings for {hours:g} h from {period_start}",
                inputs=earning.inputs,
            )
            self.hourly[earning.node] = earning.amount_micro / hours
        worked: dict[ResourceType, float] = {}
        for per in served.values():
            for t, v in per.items():
                worked[t] = worked.get(t, 0.0) + v / hours
        self._update_rates(members, period_start, hours, worked)
        return self.ledger.since(before)

    def _offered(self, member: Member) -> dict[ResourceType, float]:
        """Capacity per resource type as credited (credit by measurement), not as claimed."""
        out: dict[ResourceType, float] = {}
        for r in self.credited_of(member):
            out[r.type] = out.get(r.type, 0.0) + r.capacity
        return out

    def _as_credited(self, member: Member) -> Member:
        """The member as the market sees it: its resources as credited."""
        credited = self.credited_of(member)
        return member if credited is member.resources else replace(member, resources=credited)

    def _update_rates(
        self,
        members: Mapping[str, Member],
        period_start: int,
        hours: float,
        worked: Mapping[ResourceType, float],
    ) -> None:
        """Step each base rate: supply is what online members offer; demand is the larger of the
        capacity open leases hold now and the verified work served per hour in the period."""
        supply: dict[ResourceType, float] = {}
        for m in members.values():
            if m.online and m.offering:
                for t, capacity in self._offered(m).items():
                    supply[t] = supply.get(t, 0.0) + capacity
        held = self.leases.demand()
        demand = {t: max(held.get(t, 0.0), worked.get(t, 0.0)) for t in set(held) | set(worked)}
        for t, controller in self.rates.items():
            if t not in supply and t not in demand:
                continue
            key = f"rate:{period_start}:{t.value}"
            if self.ledger.get(key) is not None:
                continue  # this period's step is recorded already: a replay must not step again
            change = controller.update(supply.get(t, 0.0), demand.get(t, 0.0), hours)
            self.ledger.append(
                f"market:{t.value}",
                change.new,
                LedgerKind.RATE,
                key,
                period_start + self.config.period_ms,
                memo=change.kept or "base rate step",
                inputs={
                    "old": change.old,
                    "supply": round(change.supply, 6),
                    "demand": round(change.demand, 6),
                    "hours": change.hours,
                    "kept": change.kept,
                },
            )

    async def tick(self, members: Mapping[str, Member], now_ms: int) -> list[Publish]:
        """Settle a finished period, expire and renew leases, and say what to publish."""
        effects: list[Publish] = []
        online = [n for n, m in members.items() if m.online]
        for node, m in members.items():
            if m.online:
                self.leases.renew(node, m.last_seen_ms)
        for released in self.leases.expire(now_ms, online):
            if released.why != "node_dead":  # a dead node hears nothing; it forgets leases at their end
                cmd = NodeCommand(
                    verb="lease_end",
                    node=released.node,
                    args={"lease_id": released.lease_id, "why": released.why},
                )
                effects.append(
                    Publish(topics.node_cmd(self.site, self.group, released.node, "lease_end"), cmd)
                )
        period = self.config.period_ms
        last_done = now_ms // period * period - period
        if last_done > self._settled:
            new = self.settle_entries(members, last_done)
            self._settled = last_done
            if new:
                await self.store.append_durable(new)  # durable before it is acknowledged anywhere
                log.info("settled the period from %d: %d ledger entries", last_done, len(new))
        head = self.head_message()
        if head.head != self._head_published:
            self._head_published = head.head
            effects.append(Publish(topics.coord_ledger(self.site, self.group), head, retain=True))
        effects += self.listings(members)
        return effects

    def head_message(self) -> LedgerHead:
        """The chain head to publish (retained)."""
        return LedgerHead(group=self.group, count=len(self.ledger), head=self.ledger.head)

    def listings(self, members: Mapping[str, Member]) -> list[Publish]:
        """Listings that changed since they were last published."""
        out = []
        for node, m in members.items():
            msg = listing(self._as_credited(m), self.level_of(node), self.leases.held(node))
            if self._listed.get(node) != msg:
                self._listed[node] = msg
                out.append(Publish(topics.market_listing(self.site, self.group, node), msg, retain=True))
        return out

    def market(self, members: Mapping[str, Member]) -> dict[str, Any]:
        """The ``market`` part of the group summary."""
        summary = market_summary(
            [self._as_credited(m) for m in members.values()],
            self.leases.demand(),
            self.current_rates(),
            self.hourly,
        )
        if len(members) > 1 or not self._last_market:
            self._last_market = summary  # the whole group's picture, for advice
        return summary

    # ---- leases ------------------------------------------------------------------------------
    def candidates(self, members: Mapping[str, Member]) -> list[Candidate]:
        """Every member as allocation sees it."""
        out = []
        for node, m in members.items():
            level = self.level_of(node)
            _streak, measured = self.performance_of(node)
            out.append(
                Candidate(
                    node=node,
                    level=level,
                    offered=self._offered(m),
                    held=self.leases.held(node),
                    online=m.online,
                    offering=m.offering,
                    min_hourly_rate_micro=m.min_hourly_rate_micro,
                    security_level=m.security_level,
                    priority_level=m.priority_level,
                    uptime_commitment=m.uptime_commitment,
                    temperature_c=m.temperature_c,
                    max_temperature_c=m.max_temperature_c,
                    power_w=m.power_w,
                    max_power_w=m.max_power_w,
                    performance=measured or 1.0,
                )
            )
        return out

    def submit(
        self, members: Mapping[str, Member], task: Task, now_ms: int, strategy: str = "hybrid_optimal"
    ) -> tuple[Allocation, list[Publish]]:
        """Allocate ``task`` and offer its leases to the chosen nodes (``AllocationRefused`` names why)."""
        alloc = allocate(task, self.candidates(members), self.current_rates(), strategy)
        offered = {n: self._offered(m) for n, m in members.items()}
        leases = self.leases.offer(alloc, offered, now_ms, task.duration_ms)
        effects = []
        for lease in leases:
            cmd = NodeCommand(verb="lease", node=lease.node, args=msgspec.to_builtins(lease))
            effects.append(Publish(topics.node_cmd(self.site, self.group, lease.node, "lease"), cmd))
        return alloc, effects

    def lease_answer(self, node: str, params: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
        """An agent's signed answer to a lease offer (``lease_id``, ``accept``, ``reason``)."""
        lease_id, accept = params.get("lease_id"), params.get("accept")
        if not isinstance(lease_id, str) or not isinstance(accept, bool):
            raise LocalError("a lease answer needs lease_id (text) and accept (true/false)")
        reason = str(params.get("reason", ""))[:200]
        try:
            released = self.leases.answer(lease_id, node, accept, now_ms, reason)
        except LeaseError as exc:
            raise LocalError(str(exc)) from None
        for r in released:
            log.info("lease %s for task %s released: %s", r.lease_id, r.task_id, r.why)
        return {"lease_id": lease_id, "state": self.leases.leases[lease_id].state.value}

    def record_work(
        self, lease_id: str, node: str, units: Mapping[ResourceType, float], now_ms: int
    ) -> dict[ResourceType, float]:
        """Verified work served under a lease (fed by whatever verified the task's results)."""
        return self.leases.record_work(lease_id, node, units, now_ms)

    def release_node(self, node: str, now_ms: int) -> list[Released]:
        """Release a dead node's leases at once."""
        return self.leases.release_node(node, now_ms)

    # ---- what an owner sees ------------------------------------------------------------------
    def status(self, node: str) -> dict[str, Any]:
        """A node's balance, last hourly earnings and open leases."""
        return {
            "balance_micro": self.ledger.balance(node),
            "hourly_micro": round(self.hourly.get(node, 0.0)),
            "leases": [
                {
                    "lease_id": r.lease.lease_id,
                    "task_id": r.lease.task_id,
                    "state": r.state.value,
                    "resources": {t.value: v for t, v in r.amounts.items()},
                    "end_ms": r.lease.end_ms,
                    "rate_micro_per_hour": r.lease.rate_micro_per_hour,
                }
                for r in self.leases.open_leases(node)
            ],
            "ledger_head": self.ledger.head.hex(),
        }

    def credits(self, node: str) -> list[tuple[int, int]]:
        """A node's credits (time, µFTNS), net of reversals."""
        out = []
        for e in self.ledger.entries:
            if e.account == node and e.kind == LedgerKind.CREDIT:
                out.append((e.at_ms, e.amount_micro))
            elif e.account == node and e.kind == LedgerKind.REVERSAL:
                out.append((e.at_ms, -e.amount_micro))
        return out

    def earnings_report(
        self, member: Member, now_ms: int, span_ms: int, price_per_kwh_micro: int
    ) -> advice.EarningsReport:
        """Gross, electricity and net over the last ``span_ms`` for ``member``, with a prediction."""
        return advice.earnings_report(
            self.credits(member.node),
            (now_ms - span_ms, now_ms),
            member.power_w,
            member.max_power_w,
            price_per_kwh_micro,
        )

    # ---- the API's readers (prsm_edge.coordinator.api.EconomyReader) ------------------------
    def earnings(self, member: Member, now_ms: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """Balance, leases, and gross/electricity/net over a span (default a day) with a prediction."""
        span = _number(params.get("span_ms"), 86_400_000.0, 60_000.0, 366 * 86_400_000.0)
        settings = params.get("settings")
        price = params.get("electricity_price_per_kwh")
        if price is None and isinstance(settings, Mapping):
            price = settings.get("electricity_price_per_kwh")
        price_micro = round(_number(price, 0.0, 0.0, 1_000_000.0) * MICRO)
        report = self.earnings_report(member, now_ms, int(span), price_micro)
        return {
            **self.status(member.node),
            "gross_micro": report.gross_micro,
            "electricity_kwh": report.electricity_kwh,
            "electricity_micro": report.electricity_micro,
            "net_micro": report.net_micro,
            "hours": report.hours,
            "predicted_next_day_micro": report.predicted_next_day_micro,
            "prediction_method": report.method,
            "power_source": report.power_source,
        }

    def analytics(self, member: Member, now_ms: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """The node's credits per period (with their formula inputs) and the group's market."""
        periods = int(_number(params.get("periods"), 24.0, 1.0, 500.0))
        credits = [
            {"at_ms": e.at_ms, "amount_micro": e.amount_micro, "inputs": dict(e.inputs)}
            for e in self.ledger.entries
            if e.account == member.node and e.kind == LedgerKind.CREDIT
        ][-periods:]
        return {
            "node": member.node,
            "level": self.level_of(member.node).value,
            "credits": credits,
            "market": self.market({member.node: member}) | {"group": self._last_market},
        }

    def advice(self, member: Member, now_ms: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """Suggestions from the group's demand and prices and the node's record (its own settings and
        detected capacity come in ``params``, since only the node knows them)."""
        raw_settings = params.get("settings", {})
        raw_detected = params.get("detected", {})
        settings = {
            str(k): float(v)
            for k, v in (raw_settings.items() if isinstance(raw_settings, Mapping) else [])
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        detected: dict[ResourceType, float] = {}
        for k, v in raw_detected.items() if isinstance(raw_detected, Mapping) else []:
            try:
                detected[ResourceType(k)] = _number(v, 0.0, 0.0, 1e9)
            except ValueError:
                continue
        last = next(
            (
                e.inputs
                for e in reversed(self.ledger.entries)
                if e.account == member.node and e.kind == "credit"
            ),
            None,
        )
        level = self.level_of(member.node)
        multiplier = TRUST_SCORE[level]
        if last:
            multiplier = float(last.get("reputation", multiplier)) * float(last.get("geographic", 1.0))
            multiplier *= float(last.get("performance", 1.0))
        record = advice.NodeRecord(level, settings, detected, multiplier)
        suggestions = advice.suggest(record, self._last_market or self.market({}))
        return {
            "suggestions": [
                {
                    "setting": s.setting,
                    "current": s.current,
                    "value": s.proposed,
                    "reason": s.reason,
                    "ftns_per_day": s.ftns_per_day,
                }
                for s in suggestions
            ],
            "market": self._last_market,
        }

    async def correct(self, key: str, now_ms: int, memo: str) -> LedgerEntry:
        """Reverse the credit under ``key`` (a correction, never an edit); durable on return."""
        before = len(self.ledger)
        try:
            entry = self.ledger.reverse(key, now_ms, memo=memo)
        except LedgerError as exc:
            raise LocalError(str(exc)) from None
        await self.store.append_durable(self.ledger.since(before))
        return entry
