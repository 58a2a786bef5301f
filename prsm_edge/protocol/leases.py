"""Leases, sans-IO: a member's capacity granted to one task for a time, never double-booked.

States: ``offered`` → (the agent accepts) ``active`` → ``released``; ``offered`` → (the agent declines,
or does not answer within ``answer_ms``) ``released``. An active lease is renewed by the node's
heartbeats (:meth:`LeaseBook.renew`) and released when it reaches its end, when the node misses
``renew_ms`` of heartbeats, or when the node dies (goes offline). Capacity counts as held from the
moment a lease is offered, so two allocations in flight can never book the same capacity: for every
node and resource type, the sum held by its open leases never exceeds what its owner allowed when the
lease was offered (:meth:`LeaseBook.offer` refuses otherwise). A lease id names exactly one task for
its whole life.

Work is counted only as verified unit-hours reported against an active lease
(:meth:`LeaseBook.record_work`), capped by what the lease holds × the time it was active, and taken
out once per settlement (:meth:`LeaseBook.take_served`); a lease that idles earns nothing.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prsm_edge.errors import LocalError
from prsm_edge.protocol.allocation import Allocation
from prsm_edge.protocol.messages import RESOURCE_UNITS, Lease, ResourceSpec, ResourceType

__all__ = ["LeaseBook", "LeaseError", "LeaseRecord", "LeaseState", "Released"]

MAX_LEASES: Final = 10_000
_EPS: Final = 1e-9


class LeaseState(enum.StrEnum):
    """Where a lease is in its life."""

    OFFERED = "offered"
    ACTIVE = "active"
    RELEASED = "released"


class LeaseError(LocalError):
    """A lease operation was refused (double booking, unknown lease, wrong node, full book)."""


@dataclass(slots=True)
class LeaseRecord:
    """One lease and its state."""

    lease: Lease
    amounts: dict[ResourceType, float]
    state: LeaseState = LeaseState.OFFERED
    offered_ms: int = 0
    active_ms: int | None = None  # when the agent accepted it
    renewed_ms: int = 0
    released_ms: int = 0
    why: str = ""
    served: dict[ResourceType, float] = field(default_factory=dict)  # verified unit-hours, whole life
    unsettled: dict[ResourceType, float] = field(default_factory=dict)  # not yet taken by a settlement

    @property
    def open(self) -> bool:
        """Whether it holds capacity (offered or active)."""
        return self.state is not LeaseState.RELEASED


@dataclass(frozen=True, slots=True)
class Released:
    """A lease that ended, and why (``declined``, ``unanswered``, ``expired``, ``node_dead``, ...)."""

    lease_id: str
    node: str
    task_id: str
    why: str


class LeaseBook:
    """Every lease of one group."""

    def __init__(
        self, *, answer_ms: int = 15_000, renew_ms: int = 60_000, max_leases: int = MAX_LEASES
    ) -> None:
        self.answer_ms = answer_ms
        self.renew_ms = renew_ms
        self.max_leases = max_leases
        self.leases: dict[str, LeaseRecord] = {}
        self._open: dict[str, dict[str, None]] = {}  # node → its open lease ids, oldest first (derived)
        self._counter = 0

    # ---- reading -----------------------------------------------------------------------------
    def held(self, node: str) -> dict[ResourceType, float]:
        """Capacity of ``node`` held by its open leases, per type."""
        out: dict[ResourceType, float] = {}
        for lease_id in self._open.get(node, ()):
            for t, v in self.leases[lease_id].amounts.items():
                out[t] = out.get(t, 0.0) + v
        return out

    def open_leases(self, node: str | None = None) -> list[LeaseRecord]:
        """Open leases (of ``node`` when given), oldest first."""
        if node is not None:
            return [self.leases[i] for i in self._open.get(node, {})]
        return [r for r in self.leases.values() if r.open]

    def demand(self) -> dict[ResourceType, float]:
        """Capacity held by every open lease, per type (the group's current demand)."""
        out: dict[ResourceType, float] = {}
        for ids in self._open.values():
            for lease_id in ids:
                for t, v in self.leases[lease_id].amounts.items():
                    out[t] = out.get(t, 0.0) + v
        return out

    # ---- changes -----------------------------------------------------------------------------
    def offer(
        self,
        alloc: Allocation,
        offered: Mapping[str, Mapping[ResourceType, float]],
        now_ms: int,
        duration_ms: int,
    ) -> list[Lease]:
        """Open one lease per placement; refuse all of them if any would double-book a node."""
        for p in alloc.placements:
            allowed = offered.get(p.node, {})
            held = self.held(p.node)
            for t, v in p.amounts.items():
                if not math.isfinite(v) or v <= 0 or held.get(t, 0.0) + v > allowed.get(t, 0.0) + _EPS:
                    raise LeaseError(
                        f"{p.node} cannot lease {v} {t.value}: {held.get(t, 0.0)} of {allowed.get(t, 0.0)} "
                        "is already held"
                    )
        self._prune()
        if len(self.leases) + len(alloc.placements) > self.max_leases:
            raise LeaseError(f"the lease book is full ({self.max_leases}); try again later")
        out = []
        for p in alloc.placements:
            self._counter += 1
            seed = f"{alloc.task_id}|{p.node}|{now_ms}|{self._counter}".encode()
            lease_id = "l" + hashlib.sha256(seed).hexdigest()[:20]
            lease = Lease(
                lease_id=lease_id,
                task_id=alloc.task_id,
                node=p.node,
                resources=[
                    ResourceSpec(type=t, capacity=round(v, 6), unit=RESOURCE_UNITS[t])
                    for t, v in sorted(p.amounts.items())
                ],
                start_ms=now_ms,
                end_ms=now_ms + duration_ms,
                rate_micro_per_hour=p.rate_micro_per_hour,
            )
            self.leases[lease_id] = LeaseRecord(lease, dict(p.amounts), offered_ms=now_ms)
            self._open.setdefault(p.node, {})[lease_id] = None
            out.append(lease)
        return out

    def _get(self, lease_id: str, node: str) -> LeaseRecord:
        rec = self.leases.get(lease_id)
        if rec is None or rec.lease.node != node:
            raise LeaseError(f"no lease {lease_id!r} for {node}")
        return rec

    def answer(self, lease_id: str, node: str, accept: bool, now_ms: int, why: str = "") -> list[Released]:
        """The agent accepted or declined an offered lease (answers to other states change nothing)."""
        rec = self._get(lease_id, node)
        if rec.state is not LeaseState.OFFERED:
            return []
        if accept:
            rec.state = LeaseState.ACTIVE
            rec.active_ms = rec.renewed_ms = now_ms
            return []
        return [self._release(rec, now_ms, f"declined: {why}" if why else "declined")]

    def renew(self, node: str, now_ms: int) -> None:
        """A heartbeat from ``node`` renews its active leases."""
        for lease_id in self._open.get(node, ()):
            rec = self.leases[lease_id]
            if rec.state is LeaseState.ACTIVE:
                rec.renewed_ms = now_ms

    def release_node(self, node: str, now_ms: int, why: str = "node_dead") -> list[Released]:
        """Release every open lease of ``node`` (it died or left)."""
        return [self._release(r, now_ms, why) for r in self.open_leases(node)]

    def expire(self, now_ms: int, online: Iterable[str]) -> list[Released]:
        """Release leases past their end, unanswered offers, unrenewed leases and those of dead nodes."""
        alive = set(online)
        out = []
        for rec in [self.leases[i] for ids in self._open.values() for i in ids]:  # a copy: releases edit it
            if rec.lease.node not in alive:
                out.append(self._release(rec, now_ms, "node_dead"))
            elif now_ms >= rec.lease.end_ms:
                out.append(self._release(rec, now_ms, "expired"))
            elif rec.state is LeaseState.OFFERED and now_ms - rec.offered_ms > self.answer_ms:
                out.append(self._release(rec, now_ms, "unanswered"))
            elif rec.state is LeaseState.ACTIVE and now_ms - rec.renewed_ms > self.renew_ms:
                out.append(self._release(rec, now_ms, "not_renewed"))
        return out

    def _release(self, rec: LeaseRecord, now_ms: int, why: str) -> Released:
        rec.state = LeaseState.RELEASED
        rec.released_ms = now_ms
        rec.why = why
        ids = self._open.get(rec.lease.node)
        if ids is not None:
            ids.pop(rec.lease.lease_id, None)
            if not ids:
                del self._open[rec.lease.node]
        return Released(rec.lease.lease_id, rec.lease.node, rec.lease.task_id, why)

    def record_work(
        self, lease_id: str, node: str, units: Mapping[ResourceType, float], now_ms: int
    ) -> dict[ResourceType, float]:
        """Count verified unit-hours served under an active (or just-ended) lease; what was counted.

        Each type is capped by what the lease holds × the hours it has been active, so a report can
        never claim more work than the lease allowed.
        """
        rec = self._get(lease_id, node)
        if rec.active_ms is None:
            raise LeaseError(f"lease {lease_id} was never accepted; no work can be served under it")
        end = rec.released_ms if rec.state is LeaseState.RELEASED else now_ms
        hours = max(0.0, (min(end, rec.lease.end_ms) - rec.active_ms) / 3_600_000)
        counted: dict[ResourceType, float] = {}
        for t, v in units.items():
            if not math.isfinite(v) or v <= 0 or t not in rec.amounts:
                continue
            room = rec.amounts[t] * hours - rec.served.get(t, 0.0)
            take = max(0.0, min(v, room))
            if take > 0:
                rec.served[t] = rec.served.get(t, 0.0) + take
                rec.unsettled[t] = rec.unsettled.get(t, 0.0) + take
                counted[t] = take
        return counted

    def take_served(self) -> dict[str, dict[ResourceType, float]]:
        """Verified unit-hours served per node since the last call (for one settlement)."""
        out: dict[str, dict[ResourceType, float]] = {}
        for rec in self.leases.values():
            if rec.unsettled:
                per = out.setdefault(rec.lease.node, {})
                for t, v in rec.unsettled.items():
                    per[t] = per.get(t, 0.0) + v
                rec.unsettled = {}
        return out

    def _prune(self) -> None:
        """Forget released leases with nothing left to settle, oldest first, when the book is large."""
        if len(self.leases) < self.max_leases // 2:
            return
        for lease_id, rec in list(self.leases.items()):
            if not rec.open and not rec.unsettled:
                del self.leases[lease_id]
            if len(self.leases) < self.max_leases // 2:
                break
