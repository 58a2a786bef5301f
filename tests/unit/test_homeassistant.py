"""Home Assistant MQTT discovery payloads against the documented device-based format, and when they go out.

The format (Home Assistant's MQTT integration, "device discovery", 2024.11+): one retained JSON config on
``<prefix>/device/<object_id>/config`` with ``dev`` (``ids`` required), ``o`` (origin, ``name``
required) and ``cmps`` (components by id, each with its platform ``p`` and a ``unique_id``); options
such as ``state_topic`` and ``availability_topic`` at the top are shared by every component. Sensors:
``measurement`` suits power and temperature; energy must be ``total_increasing`` (or ``total``) and
monetary must be ``total``; an ``enum`` sensor has ``options`` and neither a unit nor a state class.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from prsm_edge.coordinator.homeassistant import HomeAssistant, HomeAssistantOptions, device_config
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import ResourceSpec, ResourceType, VerificationLevel, VerificationVote

SITE, GROUP = "lab", "g1"
T0 = 1_700_000_000_000
_DOCUMENTED_ROOT_KEYS = {
    "dev", "o", "cmps", "state_topic", "availability_topic", "payload_available", "payload_not_available",
    "qos",
}  # fmt: skip
_DOCUMENTED_SENSOR_KEYS = {
    "p", "name", "unique_id", "value_template", "unit_of_measurement", "device_class", "state_class",
    "options",
}  # fmt: skip
# Units Home Assistant accepts for each device class we use (homeassistant.components.sensor.const).
_UNITS = {
    "temperature": {"°C"},
    "power": {"W"},
    "energy": {"kWh"},
    "data_size": {"GB"},
    "data_rate": {"Mbit/s"},
}


def member(node: str = "nabc", **kw: object) -> Member:
    base: dict[str, object] = {
        "node": node,
        "public_key": b"\x01" * 32,
        "bdseq": 1,
        "device_class": "raspberry_pi",
        "hw_fingerprint": "fp",
        "resources": [
            ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=4.0, unit="cores"),
            ResourceSpec(type=ResourceType.STORAGE_MEMORY, capacity=2.0, unit="GB"),
            ResourceSpec(type=ResourceType.BANDWIDTH_EGRESS, capacity=50.0, unit="Mbit/s"),
        ],
        "last_seen_ms": T0,
        "cpu_util": 0.25,
        "mem_util": 0.5,
        "temperature_c": 51.5,
        "power_w": 100.0,
    }
    base.update(kw)
    return Member(**base)  # type: ignore[arg-type]


def test_device_config_follows_the_documented_device_discovery_format() -> None:
    topic, payload = device_config(member(), SITE, GROUP)
    assert topic == "homeassistant/device/prsm_nabc/config"
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", topic.split("/")[2])  # a valid object id
    assert set(payload) <= _DOCUMENTED_ROOT_KEYS
    assert payload["dev"]["ids"] == ["prsm_nabc"] and payload["dev"]["mdl"] == "raspberry_pi"
    assert payload["o"]["name"] == "prsm-edge"
    assert payload["state_topic"] == "prsm-ha/lab/g1/nabc/state"
    assert payload["availability_topic"] == "prsm-ha/lab/g1/nabc/availability"
    assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
    cmps = payload["cmps"]
    ids = [c["unique_id"] for c in cmps.values()]
    assert len(ids) == len(set(ids)) and all(i.startswith("prsm_nabc_") for i in ids)
    for key, c in cmps.items():
        assert set(c) <= _DOCUMENTED_SENSOR_KEYS and c["p"] == "sensor", key
        assert c["value_template"] == f"{{{{ value_json.{key} }}}}"
        if c.get("device_class") in _UNITS:
            assert c["unit_of_measurement"] in _UNITS[c["device_class"]], key
    assert (
        cmps["temperature"].items() >= {"device_class": "temperature", "state_class": "measurement"}.items()
    )
    assert cmps["power"].items() >= {"device_class": "power", "state_class": "measurement"}.items()
    assert cmps["energy"].items() >= {"device_class": "energy", "state_class": "total_increasing"}.items()
    assert cmps["earnings"].items() >= {"device_class": "monetary", "state_class": "total"}.items()
    assert cmps["verifications"]["state_class"] == "total_increasing"
    level = cmps["trust_level"]
    assert (
        level["device_class"] == "enum" and "state_class" not in level and "unit_of_measurement" not in level
    )
    assert "benchmarked" in level["options"] and len(level["options"]) == 5
    assert (
        cmps["capacity_compute_cpu"].items()
        >= {"unit_of_measurement": "cores", "state_class": "measurement"}.items()
    )
    assert cmps["capacity_storage_memory"]["device_class"] == "data_size"
    assert cmps["capacity_bandwidth_egress"]["device_class"] == "data_rate"
    assert cmps["cpu_util"]["unit_of_measurement"] == "%"


def test_sensors_a_node_lacks_are_not_announced() -> None:
    _, payload = device_config(member(temperature_c=None, power_w=None), SITE, GROUP)
    assert not {"temperature", "power", "energy"} & set(payload["cmps"])


def facts(balance_micro: int = 0) -> dict[str, Callable[[str], object]]:
    """The coordinator's other owners, as the publisher asks them: every node benchmarked, one balance."""
    return {"level": lambda n: VerificationLevel.BENCHMARKED, "balance_micro": lambda n: balance_micro}


def _by_topic(messages: list[object]) -> dict[str, bytes]:
    return {m.topic: m.payload for m in messages}  # type: ignore[attr-defined]


def test_publishes_once_then_only_changes_and_republishes_when_home_assistant_comes_online() -> None:
    ha = HomeAssistant(SITE, GROUP, HomeAssistantOptions(state_interval_s=10))
    a = member()
    messages = ha.tick([a], T0, **facts(2_500_000))
    assert all(m.retain for m in messages)
    first = _by_topic(messages)
    assert set(first) == {
        "homeassistant/device/prsm_nabc/config",
        "prsm-ha/lab/g1/nabc/availability",
        "prsm-ha/lab/g1/nabc/state",
    }
    state = json.loads(first["prsm-ha/lab/g1/nabc/state"])
    assert state == {
        "capacity_bandwidth_egress": 50.0,
        "capacity_compute_cpu": 4.0,
        "capacity_storage_memory": 2.0,
        "cpu_util": 25.0,
        "earnings": 2.5,
        "energy": 0.0,
        "mem_util": 50.0,
        "power": 100.0,
        "temperature": 51.5,
        "trust_level": "benchmarked",
        "verifications": 0,
    }
    assert first["prsm-ha/lab/g1/nabc/availability"] == b"online"
    assert ha.tick([a], T0 + 1000, **facts(0)) == []  # nothing new
    ha.on_status(b"offline")
    assert ha.tick([a], T0 + 1000, **facts(0)) == []
    ha.on_status(b"online")
    assert set(_by_topic(ha.tick([a], T0 + 1000, **facts(0)))) == set(first)


def test_energy_integrates_power_and_votes_count_as_verifications() -> None:
    ha = HomeAssistant(SITE, GROUP, HomeAssistantOptions(state_interval_s=0))
    a = member()
    ha.tick([a], T0, **facts(0))
    ha.on_vote(VerificationVote(round=1, subject="nabc", voter="nv", challenge_id="c", accept=True))
    ha.on_vote(VerificationVote(round=1, subject="nabc", voter="nw", challenge_id="c", accept=False))
    a.last_seen_ms = T0 + 36_000  # 100 W held for 36 s = 1 Wh
    state = json.loads(_by_topic(ha.tick([a], T0 + 36_000, **facts(0)))["prsm-ha/lab/g1/nabc/state"])
    assert state["energy"] == 0.001 and state["verifications"] == 1
    a.last_seen_ms = T0 + 36_000 + 10 * 60_000  # a silence longer than 5 min adds nothing
    state = json.loads(_by_topic(ha.tick([a], a.last_seen_ms, **facts(0)))["prsm-ha/lab/g1/nabc/state"])
    assert state["energy"] == 0.001


def test_offline_is_unavailable_and_a_node_gone_for_good_is_cleared() -> None:
    ha = HomeAssistant(SITE, GROUP, HomeAssistantOptions(forget_after_s=60))
    a = member()
    ha.tick([a], T0, **facts(0))
    a.online = False
    assert _by_topic(ha.tick([a], T0 + 1000, **facts(0)))["prsm-ha/lab/g1/nabc/availability"] == b"offline"
    cleared = ha.tick([a], T0 + 61_000, **facts(0))
    assert _by_topic(cleared) == {
        "homeassistant/device/prsm_nabc/config": b"",
        "prsm-ha/lab/g1/nabc/state": b"",
        "prsm-ha/lab/g1/nabc/availability": b"",
    }
    assert all(m.retain for m in cleared)  # an empty retained message deletes the retained one
    assert ha.tick([a], T0 + 62_000, **facts(0)) == []
    a.online, a.last_seen_ms = True, T0 + 63_000  # back: announced again
    assert "homeassistant/device/prsm_nabc/config" in _by_topic(ha.tick([a], T0 + 63_000, **facts(0)))


def test_a_member_no_longer_in_the_group_is_cleared() -> None:
    ha = HomeAssistant(SITE, GROUP)
    ha.tick([member("na"), member("nb")], T0, **facts(0))
    cleared = _by_topic(ha.tick([member("na")], T0 + 1000, **facts(0)))
    assert cleared == {
        "homeassistant/device/prsm_nb/config": b"",
        "prsm-ha/lab/g1/nb/state": b"",
        "prsm-ha/lab/g1/nb/availability": b"",
    }
