"""The agent's side of leases: check an offer against the owner's limits again, then accept or decline.

The coordinator allocated within the owner's terms as it knew them; the agent knows them first-hand
(its settings may have changed, a guardrail may hold capacity back now), so it checks every offer
itself: the lease is for this node and not yet over; what it asks, added to the leases already
accepted, fits what the owner offers now; it pays at least the owner's minimum hourly rate; no
guardrail holds capacity back. Each offer is answered once (a redelivered offer gets the same answer).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from prsm_edge.protocol.messages import Lease, ResourceSpec, ResourceType

__all__ = ["Decision", "LeaseDesk"]

MAX_REMEMBERED: Final = 1024
MAX_DURATION_MS: Final = 7 * 24 * 3_600_000


@dataclass(frozen=True, slots=True)
class Decision:
    """The agent's answer to one offer."""

    lease_id: str
    accept: bool
    reason: str = ""


class LeaseDesk:
    """The leases this agent accepted, and its answers to offers (bounded)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.accepted: dict[str, Lease] = {}
        self._answers: OrderedDict[str, Decision] = OrderedDict()

    def held(self, now_ms: int) -> dict[ResourceType, float]:
        """Capacity held by accepted leases that have not ended."""
        out: dict[ResourceType, float] = {}
        for lease_id, lease in list(self.accepted.items()):
            if lease.end_ms <= now_ms:
                del self.accepted[lease_id]
                continue
            for r in lease.resources:
                out[r.type] = out.get(r.type, 0.0) + r.capacity
        return out

    def end(self, lease_id: object) -> None:
        """The coordinator released a lease (expired, unrenewed): its capacity is free again."""
        if isinstance(lease_id, str):
            self.accepted.pop(lease_id, None)

    def decide(
        self,
        args: dict[str, Any],
        offered: list[ResourceSpec],
        *,
        offering: bool,
        min_hourly_rate_micro: int,
        now_ms: int,
    ) -> Decision:
        """Accept or decline the lease offer in ``args`` (a ``cmd/lease`` command's arguments)."""
        try:
            lease = msgspec.convert(args, Lease)
        except msgspec.ValidationError as exc:
            return Decision(str(args.get("lease_id", ""))[:64], False, f"malformed offer: {exc}")
        earlier = self._answers.get(lease.lease_id)
        if earlier is not None:
            return earlier
        decision = self._decide(lease, offered, offering, min_hourly_rate_micro, now_ms)
        self._answers[lease.lease_id] = decision
        while len(self._answers) > MAX_REMEMBERED:
            self._answers.popitem(last=False)
        if decision.accept:
            self.accepted[lease.lease_id] = lease
        return decision

    def _decide(
        self, lease: Lease, offered: list[ResourceSpec], offering: bool, min_rate: int, now_ms: int
    ) -> Decision:
        def no(reason: str) -> Decision:
            return Decision(lease.lease_id, False, reason)

        if lease.node != self.node_id:
            return no("the lease names another node")
        if lease.end_ms <= now_ms or lease.end_ms - lease.start_ms > MAX_DURATION_MS:
            return no("the lease is over or longer than 7 days")
        if not offering:
            return no("an owner guardrail holds capacity back now")
        if lease.rate_micro_per_hour < min_rate:
            return no(f"pays {lease.rate_micro_per_hour} µFTNS/h, below the owner's minimum {min_rate}")
        allowed = {r.type: r.capacity for r in offered}
        held = self.held(now_ms)
        for r in lease.resources:
            if not math.isfinite(r.capacity) or r.capacity <= 0:
                return no(f"{r.type.value}: amount {r.capacity} is not valid")
            if held.get(r.type, 0.0) + r.capacity > allowed.get(r.type, 0.0) + 1e-9:
                return no(
                    f"{r.type.value}: {r.capacity} more would exceed the owner's offer "
                    f"{allowed.get(r.type, 0.0)} ({held.get(r.type, 0.0)} already leased)"
                )
        return Decision(lease.lease_id, True)
