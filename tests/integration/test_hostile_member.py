"""A joined member with its own broker credentials attacks verification from inside the group, on a real
Mosquitto with ACLs: honest members keep their levels and the coordinator keeps serving."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from prsm_edge.errors import Reason
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent, Sample
from prsm_edge.node.prover import calibrate_cpu_rate
from prsm_edge.protocol import topics
from prsm_edge.protocol.messages import MICRO, LedgerEntry, Message, VerificationLevel, VerificationVote
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running

pytestmark = pytest.mark.integration

L = VerificationLevel


class Hostile(Agent):
    """Votes five times on every panel it sits on, withholds its own openings, and sends NaN telemetry."""

    votes_sent = 0

    def _send(self, kind: topics.Kind, msg: Message, *, retain: bool = False) -> None:
        copies = 5 if isinstance(msg, VerificationVote) else 1
        for _ in range(copies):  # each copy freshly signed (a new sequence number): not a replay
            super()._send(kind, msg, retain=retain)
        if isinstance(msg, VerificationVote):
            self.votes_sent += copies


def _nan_every_third() -> Sample:
    tick = next(_COUNTER)
    return Sample(cpu_util=math.nan if tick % 3 == 0 else 0.1, mem_util=0.2)


_COUNTER = itertools.count()


async def test_a_hostile_member_changes_nothing_for_honest_ones(tmp_path: Path) -> None:
    require_mosquitto()
    rate = calibrate_cpu_rate(0.1)
    async with host_group(
        tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
    ) as host:
        coord, url = host.coordinator, host.broker.url
        assert host.broker.acl_enforced
        honest = [Agent(agent_options(url, tmp_path / f"h{i}", cpu_rate=rate)) for i in range(4)]
        # It copies h0's (public) hardware fingerprint.
        hostile = Hostile(
            agent_options(url, tmp_path / "x", cpu_rate=rate, hw_fingerprint="fp-h0", sample=_nan_every_third)
        )
        hostile.work.open = lambda args: None  # type: ignore[method-assign]  # withholds every opening
        g = coord.group
        async with running(coord, *honest) as tasks:
            await eventually(lambda: g.online_count == 4, timeout=15, what="honest members joined")
            async with running(hostile):
                await eventually(lambda: hostile.node_id in g.members, timeout=15, what="the hostile joined")
                for a in (*honest, hostile):
                    coord.deposit(a.node_id, 100 * MICRO, key=f"deposit:{a.node_id}")
                assert (await hostile.call("stake", {"amount_micro": 60 * MICRO})).ok

                def slashed_for_fraud() -> list[LedgerEntry]:
                    return [
                        e
                        for e in coord.ledger.entries
                        if e.kind == "slash" and e.key.startswith(f"slash:fraud:{hostile.node_id}:")
                    ]

                await eventually(
                    lambda: bool(slashed_for_fraud()) and hostile.votes_sent >= 5,
                    timeout=40,
                    what="the withheld opening slashed as fraud, and duplicate votes sent",
                )
                await eventually(
                    lambda: all(g.level(a.node_id) is L.BENCHMARKED for a in honest),
                    timeout=30,
                    what="honest members benchmarked",
                )
                assert g.level(hostile.node_id) is L.SELF_REPORTED
                # The copy is flagged, not the member it copied.
                assert coord.verifier.open_flags(honest[0].node_id, _now()) == 0
                assert coord.verifier.open_flags(hostile.node_id, _now()) >= 1
                # NaN telemetry was refused; the summary stayed a number.
                assert g.rejected[Reason.IMPLAUSIBLE] > 0
                assert math.isfinite(g.summary().utilization)
                # No honest member was ever failed (duplicate votes settled nothing early).
                honest_ids = {a.node_id for a in honest}
                assert all(v.accepted for n, v in coord.verifier.verdicts if n in honest_ids)
                assert not [e for e in coord.ledger.entries if e.kind == "slash" and e.account in honest_ids]
                assert not tasks[0].done(), "the coordinator keeps serving"


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000
