"""A group coordinator's side of federation: serve the requests its region sends down the bridge.

``region-task``: a task the region routed here is placed on one member (the group's allocation engine;
until the economy's engine lands, :func:`~prsm_edge.protocol.placement.minimal_placement`), leased to it
(``cmd/lease``), answered with the signed lease, and reported up the gateway's ordered stream
(``fed/report``), so the region learns of it even if the bridged answer is lost.
``region-drill``: open the asked leaves of the claims root in the group's last summary.
Evidence: every slash the group's ledger records (with the node's own signed artifacts) goes up the
gateway's stream too.

The region is pinned: configured, or the first requester seen; requests from another key are refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from prsm_edge.errors import LocalError, RejectedMessage
from prsm_edge.io.clock import now_ms
from prsm_edge.io.session import Session
from prsm_edge.protocol import topics
from prsm_edge.protocol.claims import openings_to_wire
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Group
from prsm_edge.protocol.ledger import LedgerKind
from prsm_edge.protocol.messages import (
    RESOURCE_UNITS,
    ApiRequest,
    ApiResponse,
    Lease,
    LedgerEntry,
    NodeCommand,
    ResourceSpec,
    ResourceType,
)
from prsm_edge.protocol.placement import TaskSpec, minimal_placement, parse_task

__all__ = ["REGION_METHODS", "Engine", "RegionRequests"]

log = logging.getLogger(__name__)

# The group's allocation engine, when it has one: the placements (node, amounts, rate per hour) it made.
Engine = Callable[[TaskSpec], Awaitable[list[tuple[str, dict[ResourceType, float], int]]]]

REGION_METHODS: Final = frozenset({"region-task", "region-drill"})
_MAX_LEASES: Final = 10_000


class RegionRequests:
    """Answers ``region-*`` API calls for one group coordinator."""

    def __init__(
        self,
        group: Group,
        signer: Signer,
        session: Session,
        region: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.group = group
        self.engine = engine
        self.signer = signer
        self.session = session
        self.region = region
        self.leases: OrderedDict[str, tuple[Lease, bytes]] = OrderedDict()

    async def serve(self, requester: str, request: ApiRequest) -> None:
        """Answer one request from the region (refusals are answered too, with the reason)."""
        result: dict[str, object] = {}
        error = ""
        try:
            if self.region is None:
                self.region = requester
                log.info("pinned %s as this group's region coordinator", requester)
            if requester != self.region:
                raise LocalError(f"{requester} is not this group's region coordinator")
            if request.method == "region-task":
                result = await self._task(request)
            else:
                result = self._drill(request)
        except (LocalError, RejectedMessage) as exc:
            error = str(exc)
            log.info("region request %s refused: %s", request.txid, error)
        c = self.group.config
        resp = ApiResponse(txid=request.txid, method=request.method, ok=not error, result=result, error=error)
        topic = topics.api(topics.Kind.API_RESP, c.site, c.group, request.method, requester)
        await self.session.publish(topic, self.signer.seal(resp, now_ms()), qos=1)

    async def report_evidence(self, entries: Iterable[LedgerEntry]) -> None:
        """Hand slashes (signed ledger entries carrying the node's own artifacts) to the gateway's stream."""
        c = self.group.config
        for entry in entries:
            if entry.kind == LedgerKind.SLASH.value:
                await self.session.publish(
                    topics.fed_report(c.site, c.group), self.signer.seal(entry, now_ms()), qos=1
                )

    def _busy(self, now: int) -> frozenset[str]:
        return frozenset(lease.node for lease, _ in self.leases.values() if lease.end_ms > now)

    async def _task(self, request: ApiRequest) -> dict[str, object]:
        task = parse_task(request.params)
        known = self.leases.get(task.task_id)
        if known is not None:
            return {"lease": known[1]}  # asked again (a retry): the same lease
        now = now_ms()
        if self.engine is not None:
            placements = await self.engine(task)  # the group's allocation engine offers its own leases
            how = "engine"
        else:
            member = minimal_placement(self.group.members.values(), task, self.group.level, self._busy(now))
            if member is None:
                raise LocalError("no member here can take the task now")
            placements = [(member.node, dict(task.resources), task.max_rate_micro)]
            how = "minimal"
        if not placements:
            raise LocalError("no member here can take the task now")
        c = self.group.config
        envelopes = []
        for node, amounts, rate in placements:
            lease = Lease(
                lease_id=hashlib.sha256(f"{task.task_id}/{node}/{now}".encode()).hexdigest()[:32],
                task_id=task.task_id,
                node=node,
                resources=[
                    ResourceSpec(type=kind, capacity=amount, unit=RESOURCE_UNITS[kind])
                    for kind, amount in sorted(amounts.items())
                ],
                start_ms=now,
                end_ms=now + task.duration_ms,
                rate_micro_per_hour=rate,
            )
            envelope = self.signer.seal(lease, now)
            envelopes.append(envelope)
            self.leases[task.task_id] = (lease, envelope)
            if self.engine is None:
                cmd = NodeCommand(verb="lease", node=node, args={"lease": envelope})
                await self.session.publish(
                    topics.node_cmd(c.site, c.group, node, "lease"), self.signer.seal(cmd, now), qos=1
                )
            # The ordered stream is the lease report the region can count on; the answer may be lost.
            await self.session.publish(topics.fed_report(c.site, c.group), envelope, qos=1)
        while len(self.leases) > _MAX_LEASES:
            self.leases.popitem(last=False)
        log.info("task %s placed on %d member(s) (%s placement)", task.task_id, len(placements), how)
        return {"lease": envelopes[0], "leases": envelopes, "placement": how}

    def _drill(self, request: ApiRequest) -> dict[str, object]:
        claims = self.group.claims
        root = request.params.get("root")
        if root != claims.root:
            raise LocalError("that claims root is not the current summary's; drill into the newer one")
        indexes = request.params.get("indexes")
        if not isinstance(indexes, list) or not all(isinstance(i, int) for i in indexes):
            raise LocalError("indexes must be a list of integers")
        return openings_to_wire(claims.root, len(claims), claims.open(indexes))
