"""Leases: never double-booked, one task per lease, released on expiry and death; the agent re-checks."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prsm_edge.node.leases import LeaseDesk
from prsm_edge.protocol.allocation import Allocation, Placement
from prsm_edge.protocol.leases import LeaseBook, LeaseError, LeaseState
from prsm_edge.protocol.messages import ResourceSpec, ResourceType

CPU = ResourceType.COMPUTE_CPU
NODES = ("a", "b", "c")
OFFERED = {"a": {CPU: 4.0}, "b": {CPU: 2.0}, "c": {CPU: 1.0}}


def alloc(task: str, *parts: tuple[str, float]) -> Allocation:
    return Allocation(task, "hybrid_optimal", tuple(Placement(n, {CPU: v}, 1) for n, v in parts), {}, {})


class LeaseMachine(RuleBasedStateMachine):
    """Random offers, answers, renewals, deaths, work and time: the invariants hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.book = LeaseBook(answer_ms=1_000, renew_ms=2_000)
        self.now = 0
        self.tasks = 0
        self.owner: dict[str, str] = {}  # lease id → the task it was created for

    @rule(
        parts=st.lists(
            st.tuples(st.sampled_from(NODES), st.floats(0.1, 4.0)),
            min_size=1,
            max_size=3,
            unique_by=lambda p: p[0],
        ),
        duration=st.integers(1, 10_000),
    )
    def offer(self, parts: list[tuple[str, float]], duration: int) -> None:
        self.tasks += 1
        task = f"t{self.tasks}"
        try:
            leases = self.book.offer(alloc(task, *parts), OFFERED, self.now, duration)
        except LeaseError:
            return
        for lease in leases:
            assert lease.lease_id not in self.owner, "a lease id is never reused"
            self.owner[lease.lease_id] = task

    @rule(data=st.data(), accept=st.booleans())
    def answer(self, data: st.DataObject, accept: bool) -> None:
        if not self.book.leases:
            return
        lease_id = data.draw(st.sampled_from(sorted(self.book.leases)))
        rec = self.book.leases[lease_id]
        self.book.answer(lease_id, rec.lease.node, accept, self.now)

    @rule(node=st.sampled_from(NODES))
    def heartbeat(self, node: str) -> None:
        self.book.renew(node, self.now)

    @rule(node=st.sampled_from(NODES))
    def death(self, node: str) -> None:
        self.book.release_node(node, self.now)
        assert not self.book.open_leases(node)

    @rule(ms=st.integers(1, 3_000), dead=st.sets(st.sampled_from(NODES)))
    def time_passes(self, ms: int, dead: set[str]) -> None:
        self.now += ms
        self.book.expire(self.now, [n for n in NODES if n not in dead])
        for rec in self.book.leases.values():
            if rec.open:
                assert rec.lease.end_ms > self.now and rec.lease.node not in dead

    @rule(data=st.data(), units=st.floats(0.0, 100.0))
    def work(self, data: st.DataObject, units: float) -> None:
        active = [r for r in self.book.leases.values() if r.active_ms is not None]
        if not active:
            return
        rec = data.draw(st.sampled_from(active))
        self.book.record_work(rec.lease.lease_id, rec.lease.node, {CPU: units}, self.now)
        assert rec.active_ms is not None
        end = rec.released_ms if rec.state is LeaseState.RELEASED else self.now
        hours = (min(end, rec.lease.end_ms) - rec.active_ms) / 3_600_000
        assert rec.served.get(CPU, 0.0) <= rec.amounts[CPU] * hours + 1e-9

    @invariant()
    def never_double_booked(self) -> None:
        for node in NODES:
            assert self.book.held(node).get(CPU, 0.0) <= OFFERED[node][CPU] + 1e-9

    @invariant()
    def open_index_matches_the_states(self) -> None:
        indexed = {i for ids in self.book._open.values() for i in ids}
        assert indexed == {i for i, r in self.book.leases.items() if r.open}

    @invariant()
    def one_task_per_lease(self) -> None:
        for lease_id, rec in self.book.leases.items():
            assert rec.lease.task_id == self.owner[lease_id]


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_unanswered_offers_and_dead_nodes_release_their_capacity() -> None:
    book = LeaseBook(answer_ms=1_000, renew_ms=5_000)
    (lease,) = book.offer(alloc("t", ("a", 4.0)), OFFERED, 0, 60_000)
    with pytest.raises(LeaseError):
        book.offer(alloc("u", ("a", 0.5)), OFFERED, 0, 60_000)  # a is fully booked
    [released] = book.expire(2_000, NODES)
    assert released.why == "unanswered" and book.held("a") == {}
    (lease,) = book.offer(alloc("u", ("a", 4.0)), OFFERED, 2_000, 60_000)
    book.answer(lease.lease_id, "a", True, 2_100)
    book.renew("a", 6_000)
    assert book.expire(6_500, NODES) == []  # renewed by its heartbeat
    [released] = book.expire(7_000, ["b", "c"])
    assert released.why == "node_dead" and book.leases[lease.lease_id].state is LeaseState.RELEASED


def test_work_counts_only_what_was_served_under_an_accepted_lease() -> None:
    book = LeaseBook()
    (lease,) = book.offer(alloc("t", ("a", 2.0)), OFFERED, 0, 10 * 3_600_000)
    with pytest.raises(LeaseError):
        book.record_work(lease.lease_id, "a", {CPU: 1.0}, 1_000)  # never accepted
    book.answer(lease.lease_id, "a", True, 0)
    with pytest.raises(LeaseError):
        book.record_work(lease.lease_id, "b", {CPU: 1.0}, 1_000)  # not b's lease
    counted = book.record_work(lease.lease_id, "a", {CPU: 100.0}, 3_600_000)
    assert counted == {CPU: 2.0}  # 2 cores × 1 hour at most
    assert book.take_served() == {"a": {CPU: 2.0}}
    assert book.take_served() == {}  # taken once per settlement


def _offer(
    lease_id: str = "l1", node: str = "me", cores: float = 1.0, rate: int = 50_000
) -> dict[str, object]:
    return {
        "lease_id": lease_id,
        "task_id": "t",
        "node": node,
        "resources": [{"type": "compute_cpu", "capacity": cores, "unit": "cores"}],
        "start_ms": 0,
        "end_ms": 60_000,
        "rate_micro_per_hour": rate,
    }


def test_agent_rechecks_the_owner_limits_before_accepting() -> None:
    desk = LeaseDesk("me")
    offer = [ResourceSpec(type=CPU, capacity=2.0, unit="cores")]
    kw = {"offering": True, "min_hourly_rate_micro": 10_000, "now_ms": 1_000}
    assert desk.decide(_offer("l1", cores=1.5), offer, **kw).accept  # type: ignore[arg-type]
    over = desk.decide(_offer("l2", cores=1.0), offer, **kw)  # type: ignore[arg-type]
    assert not over.accept and "exceed the owner's offer" in over.reason
    cheap = desk.decide(_offer("l3", cores=0.1, rate=5), offer, **kw)  # type: ignore[arg-type]
    assert not cheap.accept and "minimum" in cheap.reason
    hot = desk.decide(_offer("l4", cores=0.1), offer, offering=False, min_hourly_rate_micro=0, now_ms=1_000)
    assert not hot.accept and "guardrail" in hot.reason
    assert not desk.decide(_offer("l5", node="other"), offer, **kw).accept  # type: ignore[arg-type]
    again = desk.decide(_offer("l1", cores=1.5), offer, **kw)  # type: ignore[arg-type]
    assert again.accept and len(desk.accepted) == 1  # a redelivered offer gets the same answer, once
    bad = desk.decide({"lease_id": "x", "node": "me"}, offer, **kw)  # type: ignore[arg-type]
    assert not bad.accept and "malformed" in bad.reason
    assert msgspec.to_builtins(desk.accepted["l1"])["task_id"] == "t"
    desk.end("l1")  # the coordinator released it: its capacity is free again
    assert desk.decide(_offer("l6", cores=1.5), offer, **kw).accept  # type: ignore[arg-type]
