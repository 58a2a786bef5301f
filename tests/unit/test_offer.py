"""Owner limits: what a node offers, and when it must hold back."""

from __future__ import annotations

from pathlib import Path

import pytest

from prsm_edge.node.agent import Agent, AgentOptions, Sample
from prsm_edge.protocol.messages import ResourceSpec, ResourceType
from prsm_edge.protocol.offer import Allocations, Guardrails, Readings, guardrail, offered

CPU = ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=8.0, unit="cores")
MEM = ResourceSpec(type=ResourceType.STORAGE_MEMORY, capacity=16.0, unit="GB")


def test_offer_is_detected_capacity_times_the_owners_percentage() -> None:
    out = offered([CPU, MEM], Allocations(cpu=0.25, memory=0.0))
    assert [(r.type, r.capacity) for r in out] == [(ResourceType.COMPUTE_CPU, 2.0)]  # zero is left out


@pytest.mark.parametrize(
    ("readings", "held"),
    [
        (Readings(), ""),
        (Readings(temperature_c=79.0), ""),
        (Readings(temperature_c=85.0), "temperature"),
        (Readings(on_battery=True, battery_pct=15.0), "battery"),
        (Readings(on_battery=False, battery_pct=15.0), ""),  # plugged in: fine
        (Readings(power_w=150.0), "power"),
    ],
)
def test_guardrails(readings: Readings, held: str) -> None:
    reason = guardrail(
        readings, Guardrails(max_cpu_temperature=80, max_power_consumption=100, min_battery_percent=20)
    )
    assert (held in reason) if held else reason == ""


def test_agent_stops_offering_while_hot_and_says_why(tmp_path: Path) -> None:
    # This machine has no temperature sensor: the reading is a fake, standing in for a hot device.
    temps = iter([70.0, 91.0, 60.0])

    def sample() -> Sample:
        return Sample(cpu_util=0.5, mem_util=0.5, readings=Readings(temperature_c=next(temps)))

    agent = Agent(
        AgentOptions(
            site="s",
            group="g",
            broker_url="mqtt://127.0.0.1:1",
            workdir=tmp_path,
            resources=[CPU],
            sample=sample,
            guardrails=Guardrails(hold_s=0.0),
        )
    )
    first, hot, cool = agent.heartbeat(), agent.heartbeat(), agent.heartbeat()
    assert first.offering and not first.throttle
    assert not hot.offering and "temperature 91.0" in hot.throttle and hot.temperature_c == 91.0
    assert cool.offering and not cool.throttle  # no hold asked for: clear readings restore at once
    agent.outbox.close()
