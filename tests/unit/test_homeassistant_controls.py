"""Home Assistant controls: the discovery entities (only when the owner turned them on) in the documented
``number``/``switch`` format, and the checks every command passes before the node applies it.

Documented (Home Assistant MQTT number/switch): a ``command_topic`` is required; ``state_topic`` with a
``value_template`` reports the value; a number has ``min``/``max``/``step``/``mode``; a switch's state
matches ``payload_on``/``payload_off``; ``entity_category: config`` marks a setting, not a sensor.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prsm_edge.coordinator.homeassistant import device_config
from prsm_edge.protocol.homeassistant import (
    CONTROL_SETTINGS,
    Command,
    CommandRefused,
    controls_state,
    node_topics,
    parse_command,
)
from tests.unit.test_homeassistant import GROUP, SITE, member

_NUMBER_KEYS = {
    "p", "name", "unique_id", "command_topic", "state_topic", "value_template", "min", "max", "step", "mode",
    "unit_of_measurement", "entity_category",
}  # fmt: skip
_SWITCH_KEYS = {
    "p", "name", "unique_id", "command_topic", "state_topic", "value_template", "payload_on", "payload_off",
    "entity_category",
}  # fmt: skip
TOPICS = node_topics(SITE, GROUP, "nabc")


def test_controls_are_not_announced_unless_the_owner_turned_them_on() -> None:
    _, payload = device_config(member(), SITE, GROUP)
    assert all(c["p"] == "sensor" and "command_topic" not in c for c in payload["cmps"].values())


def test_controls_follow_the_documented_number_and_switch_format() -> None:
    _, payload = device_config(member(ha_controls=True), SITE, GROUP)
    controls = {k: c for k, c in payload["cmps"].items() if c["p"] != "sensor"}
    # One slider per allocation setting that governs what the node offers (cpu, memory, bandwidth), and
    # the pause switch; none for what it does not offer (gpu, storage).
    assert set(controls) == {
        "set_cpu_allocation_percentage",
        "set_memory_allocation_percentage",
        "set_bandwidth_allocation_percentage",
        "set_pause",
    }
    for key, c in controls.items():
        assert c["command_topic"] == f"prsm-ha/{SITE}/{GROUP}/nabc/set/{key.removeprefix('set_')}"
        assert c["state_topic"] == "prsm-ha/lab/g1/nabc/controls" and c["entity_category"] == "config"
        assert c["unique_id"] == f"prsm_nabc_{key.removeprefix('set_')}"
        if c["p"] == "number":
            assert set(c) == _NUMBER_KEYS
            assert (c["min"], c["max"], c["unit_of_measurement"], c["mode"]) == (0, 100, "%", "slider")
        else:
            assert c["p"] == "switch" and set(c) == _SWITCH_KEYS
            assert (c["payload_on"], c["payload_off"]) == ("ON", "OFF")
    ids = [c["unique_id"] for c in payload["cmps"].values()]
    assert len(ids) == len(set(ids))


def test_the_controls_state_matches_the_entities_templates() -> None:
    state = json.loads(controls_state({"cpu_allocation_percentage": 0.35, "other": 9.0}, paused=True))
    assert state == {"cpu_allocation_percentage": 35.0, "pause": "ON"}


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
def test_a_percentage_in_range_becomes_a_share(percent: float) -> None:
    command = parse_command(TOPICS, TOPICS.command("cpu_allocation_percentage"), repr(percent).encode()[:32])
    assert command.entity == "cpu_allocation_percentage"
    assert command.share is not None and 0.0 <= command.share <= 1.0


@given(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=100.0001), st.just(math.nan)))
def test_a_percentage_out_of_range_or_not_finite_is_refused(value: float) -> None:
    with pytest.raises(CommandRefused):
        parse_command(TOPICS, TOPICS.command("memory_allocation_percentage"), repr(value).encode())


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        (TOPICS.command("cpu_allocation_percentage"), b"inf", "0–100"),
        (TOPICS.command("cpu_allocation_percentage"), b"lots", "number"),
        (TOPICS.command("cpu_allocation_percentage"), b"5" * 40, "at most 32 bytes"),
        (TOPICS.command("cpu_allocation_percentage"), "５０".encode(), "ASCII"),
        (TOPICS.command("pause"), b"maybe", "ON or OFF"),
        (TOPICS.command("security_level"), b"standard", "not a control"),
        (TOPICS.command("homeassistant_controls"), b"ON", "not a control"),
        (node_topics(SITE, GROUP, "nother").command("pause"), b"ON", "not a command topic of this node"),
    ],
)
def test_commands_that_are_refused_say_why(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(CommandRefused, match=why):
        parse_command(TOPICS, topic, payload)


def test_commands_that_are_accepted() -> None:
    assert parse_command(TOPICS, TOPICS.command("pause"), b"ON") == Command("pause", paused=True)
    assert parse_command(TOPICS, TOPICS.command("pause"), b" OFF\n") == Command("pause", paused=False)
    got = parse_command(TOPICS, TOPICS.command("bandwidth_allocation_percentage"), b"42.5")
    assert got == Command("bandwidth_allocation_percentage", share=0.425)
    assert set(CONTROL_SETTINGS) == {
        f"{r}_allocation_percentage" for r in ("cpu", "gpu", "memory", "storage", "bandwidth")
    }
