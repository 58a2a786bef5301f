"""The demo's market: tasks that keep the group's CPU leased, and work reports under those leases.

Real verified work comes from task results (the workloads work); here, on one machine with no tasks to
run, the demo reports 90 % of each active lease's capacity × time as served, and says so. Everything
after that — allocation under the owners' limits, agents accepting leases, settlement every period into
the signed ledger, bonuses only for verified levels — is the shipping code.
"""

from __future__ import annotations

import asyncio
import logging

from prsm_edge.coordinator.service import Coordinator
from prsm_edge.errors import LocalError
from prsm_edge.io.clock import now_ms
from prsm_edge.protocol.allocation import Task
from prsm_edge.protocol.leases import LeaseState
from prsm_edge.protocol.messages import ResourceType

log = logging.getLogger(__name__)

CPU = ResourceType.COMPUTE_CPU
BUSY = 0.9  # the share of a lease's capacity × time the demo reports as served


async def drive(coord: Coordinator, task_s: float = 30.0) -> None:
    """Keep most free CPU leased and report simulated work every second, until cancelled."""
    eco = coord.economy
    tasks = 0
    last = now_ms()
    while True:
        await asyncio.sleep(1.0)
        now = now_ms()
        members = coord.group.members
        free = sum(c.free(CPU) for c in eco.candidates(members) if c.online and c.offering)
        if free >= 0.01:
            tasks += 1
            task = Task(f"demo-{tasks}", {CPU: round(free * 0.8, 3)}, int(task_s * 1000), 10**12)
            try:
                await coord.submit(task)
            except LocalError as exc:
                log.debug("demo task not placed: %s", exc)
        hours = (now - last) / 3_600_000
        last = now
        for rec in eco.leases.open_leases():
            if rec.state is LeaseState.ACTIVE:
                units = {t: v * hours * BUSY for t, v in rec.amounts.items()}
                eco.record_work(rec.lease.lease_id, rec.lease.node, units, now)
