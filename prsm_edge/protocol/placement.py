"""A task routed down from a region, and the group's minimal placement of it.

``TaskSpec`` is what a region asks a group for (carried in an ``ApiRequest``'s params, method
``region-task``). :func:`minimal_placement` is a deliberately small stand-in for the group's allocation
engine: it picks one online, offering member whose single claimed resources cover the request at or above
the required verification level, least utilised first. It ignores prices, owner schedules and partial
fits; the economy's allocation engine replaces it where present.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from prsm_edge.errors import Reason, RejectedMessage
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import ResourceType, VerificationLevel

__all__ = ["LEVEL_ORDER", "MAX_TASK_MS", "TaskSpec", "minimal_placement", "parse_task"]

MAX_TASK_MS: Final = 30 * 24 * 3600 * 1000
LEVEL_ORDER: Final[dict[VerificationLevel, int]] = {level: i for i, level in enumerate(VerificationLevel)}


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """What a task needs: amounts per resource type, the least trust, where it comes from, how long."""

    task_id: str
    resources: dict[ResourceType, float]
    min_level: VerificationLevel = VerificationLevel.SELF_REPORTED
    origin_site: str = ""
    duration_ms: int = 3_600_000
    max_rate_micro: int = 0  # per hour; 0: no limit


def parse_task(params: object) -> TaskSpec:
    """Check a task from the network: known types, finite positive amounts, a sane duration."""
    try:
        spec = msgspec.convert(params, TaskSpec)
    except msgspec.ValidationError as exc:
        raise RejectedMessage(Reason.MALFORMED, f"task does not fit the schema: {exc}") from None
    if not 1 <= len(spec.task_id) <= 64 or not spec.resources or len(spec.resources) > len(ResourceType):
        raise RejectedMessage(Reason.MALFORMED, "a task needs an id (1–64 chars) and at least one resource")
    for kind, amount in spec.resources.items():
        if not math.isfinite(amount) or amount <= 0 or amount > 1e7:
            raise RejectedMessage(Reason.IMPLAUSIBLE, f"{kind} amount {amount} is not a valid request")
    if not 1 <= spec.duration_ms <= MAX_TASK_MS or spec.max_rate_micro < 0:
        raise RejectedMessage(Reason.IMPLAUSIBLE, "duration must be 1 ms to 30 days, the rate non-negative")
    return spec


def minimal_placement(
    members: Iterable[Member],
    task: TaskSpec,
    level_of: Callable[[str], VerificationLevel],
    busy: frozenset[str] = frozenset(),
) -> Member | None:
    """The least-utilised member that alone covers ``task`` (None when none does)."""
    need = LEVEL_ORDER[task.min_level]
    best: tuple[float, str, Member] | None = None
    for m in members:
        if m.node in busy or not m.online or not m.offering or LEVEL_ORDER[level_of(m.node)] < need:
            continue
        caps = {spec.type: spec.capacity for spec in m.resources}
        covers = all(caps.get(kind, 0.0) >= amount for kind, amount in task.resources.items())
        if covers and (best is None or (m.cpu_util, m.node) < best[:2]):
            best = (m.cpu_util, m.node, m)
    return None if best is None else best[2]
