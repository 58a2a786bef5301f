"""Home Assistant MQTT discovery for a group's members, published by the group's coordinator.

Why the coordinator, not each node: the facts Home Assistant should show (trust level, verifications
passed, earnings) are the coordinator's verified findings, not a node's word about itself; the
coordinator sees a member go offline (its Will) and leave; one client with one ACL grant serves up to
200 devices; and nodes keep publishing only under their own subtree.

Each member is one Home Assistant device, announced with device-based discovery (one retained config
per device on ``<prefix>/device/prsm_<node>/config``, Home Assistant 2024.11+) whose components share
one state topic (JSON) and one availability topic (``online``/``offline``), both retained under
``prsm-ha/<site>/<group>/<node>/``. The configs are published again when Home Assistant announces itself
``online`` on ``<prefix>/status``. A member that has been offline for ``forget_after_s`` (or is no longer a
member) has its config, state and availability cleared (empty retained messages), which removes the
device from Home Assistant. The state topic is plain JSON (Home Assistant cannot verify COSE), so it
lives outside the signed ``prsm/v1`` tree. Home Assistant only reads unless a node's owner turned its
controls on (announced in the node's signed birth): then the device also gets a number entity per
allocation setting and a pause switch, commanded on the node's own topics
(:mod:`prsm_edge.protocol.homeassistant`), which the node checks and answers itself.

Sans-IO: :meth:`HomeAssistant.tick` takes the members and the time and returns the messages to publish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from prsm_edge import __version__
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.homeassistant import STATE_ROOT, control_components, node_topics
from prsm_edge.protocol.messages import (
    MICRO,
    RESOURCE_UNITS,
    TRUST_SCORE,
    ResourceType,
    VerificationLevel,
    VerificationVote,
)

__all__ = ["HaMessage", "HomeAssistant", "HomeAssistantOptions", "device_config"]

_MAX_ENERGY_GAP_MS: Final = 5 * 60_000  # never integrate power across a silence longer than this

# Device classes Home Assistant accepts for a capacity in our units.
_DATA_SIZE: Final = frozenset(
    {ResourceType.STORAGE_PERSISTENT, ResourceType.STORAGE_MEMORY, ResourceType.STORAGE_CACHE}
)
_DATA_RATE: Final = frozenset({ResourceType.BANDWIDTH_INGRESS, ResourceType.BANDWIDTH_EGRESS})


@dataclass(frozen=True, slots=True)
class HomeAssistantOptions:
    """Where discovery goes and how often states are refreshed."""

    prefix: str = "homeassistant"
    state_interval_s: float = 10.0
    forget_after_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class HaMessage:
    """One MQTT message to publish (retained unless said otherwise)."""

    topic: str
    payload: bytes
    retain: bool = True


def _topics(site: str, group: str, node: str, prefix: str) -> tuple[str, str, str]:
    base = f"{STATE_ROOT}/{site}/{group}/{node}"
    return f"{prefix}/device/prsm_{node}/config", f"{base}/state", f"{base}/availability"


def _sensor(node: str, key: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "p": "sensor",
        "name": name,
        "unique_id": f"prsm_{node}_{key}",
        "value_template": f"{{{{ value_json.{key} }}}}",
        **extra,
    }


def device_config(
    member: Member, site: str, group: str, prefix: str = "homeassistant"
) -> tuple[str, dict[str, Any]]:
    """The device-based discovery topic and payload for one member."""
    node = member.node
    config_topic, state_topic, availability_topic = _topics(site, group, node, prefix)
    measurement = {"state_class": "measurement"}
    cmps: dict[str, dict[str, Any]] = {}
    for spec in member.resources:
        key = f"capacity_{spec.type.value}"
        extra: dict[str, Any] = {"unit_of_measurement": RESOURCE_UNITS[spec.type], **measurement}
        if spec.type in _DATA_SIZE:
            extra["device_class"] = "data_size"
        elif spec.type in _DATA_RATE:
            extra["device_class"] = "data_rate"
        cmps[key] = _sensor(node, key, f"Offered {spec.type.value.replace('_', ' ')}", **extra)
    cmps["cpu_util"] = _sensor(node, "cpu_util", "CPU utilization", unit_of_measurement="%", **measurement)
    cmps["mem_util"] = _sensor(node, "mem_util", "Memory utilization", unit_of_measurement="%", **measurement)
    if member.temperature_c is not None:
        cmps["temperature"] = _sensor(
            node,
            "temperature",
            "Temperature",
            device_class="temperature",
            unit_of_measurement="°C",
            **measurement,
        )
    if member.power_w is not None:
        cmps["power"] = _sensor(
            node, "power", "Power", device_class="power", unit_of_measurement="W", **measurement
        )
        cmps["energy"] = _sensor(
            node,
            "energy",
            "Energy",
            device_class="energy",
            unit_of_measurement="kWh",
            state_class="total_increasing",
        )
    cmps["trust_level"] = _sensor(
        node, "trust_level", "Trust level", device_class="enum", options=[lvl.value for lvl in TRUST_SCORE]
    )
    cmps["verifications"] = _sensor(
        node, "verifications", "Verifications passed", state_class="total_increasing"
    )
    cmps["earnings"] = _sensor(
        node, "earnings", "Earnings", device_class="monetary", unit_of_measurement="FTNS", state_class="total"
    )
    if member.ha_controls:  # the owner let Home Assistant move the allocations and pause (off by default)
        offered = (r.type for r in member.resources)
        cmps |= control_components(node_topics(site, group, node), node, offered)
    payload = {
        "dev": {
            "ids": [f"prsm_{node}"],
            "name": f"prsm {node}",
            "mf": "prsm-edge",
            "mdl": member.device_class or "generic",
        },
        "o": {"name": "prsm-edge", "sw": __version__},
        "cmps": cmps,
        "state_topic": state_topic,
        "availability_topic": availability_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }
    return config_topic, payload


@dataclass(slots=True)
class _Published:
    config: str = ""
    online: bool | None = None
    state_at_ms: int = -1
    state_seen_ms: int = -1
    energy_kwh: float = 0.0
    power_at_ms: int = -1
    power_w: float | None = None


class _Facts(NamedTuple):
    """What the coordinator's other owners know of a member: its level (the verifier), its balance (the
    ledger). Asked at publish time, never copied."""

    level: Callable[[str], VerificationLevel]
    balance_micro: Callable[[str], int]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass
class HomeAssistant:
    """The discovery publisher's state: what was published for whom, and energy and vote tallies."""

    site: str
    group: str
    options: HomeAssistantOptions = field(default_factory=HomeAssistantOptions)
    _published: dict[str, _Published] = field(default_factory=dict)
    _verifications: dict[str, int] = field(default_factory=dict)
    _republish: bool = False

    @property
    def status_topic(self) -> str:
        """Where Home Assistant announces itself (its birth ``online`` and Will ``offline``)."""
        return f"{self.options.prefix}/status"

    def on_status(self, payload: bytes) -> None:
        """Home Assistant came online: everything is published again at the next tick."""
        if payload.strip() == b"online":
            self._republish = True

    def on_vote(self, vote: VerificationVote) -> None:
        """Count a verifier's accepting vote for the node it judged."""
        if vote.accept and (vote.subject in self._verifications or len(self._verifications) < 1000):
            self._verifications[vote.subject] = self._verifications.get(vote.subject, 0) + 1

    def tick(
        self,
        members: Iterable[Member],
        now_ms: int,
        *,
        level: Callable[[str], VerificationLevel],
        balance_micro: Callable[[str], int],
    ) -> list[HaMessage]:
        """What to publish now: new or changed configs, availability changes, fresh states, clearances."""
        out: list[HaMessage] = []
        republish, self._republish = self._republish, False
        seen: set[str] = set()
        forget_ms = self.options.forget_after_s * 1000
        for member in members:
            gone = not member.online and now_ms - member.last_seen_ms > forget_ms
            if gone:
                continue
            seen.add(member.node)
            out += self._member(member, _Facts(level, balance_micro), now_ms, republish)
        for node in [n for n in self._published if n not in seen]:
            out += self._clear(node)
        return out

    def _clear(self, node: str) -> list[HaMessage]:
        del self._published[node]
        self._verifications.pop(node, None)
        return [HaMessage(t, b"") for t in _topics(self.site, self.group, node, self.options.prefix)]

    def _member(self, member: Member, facts: _Facts, now_ms: int, republish: bool) -> list[HaMessage]:
        out: list[HaMessage] = []
        p = self._published.setdefault(member.node, _Published())
        config_topic, payload = device_config(member, self.site, self.group, self.options.prefix)
        config = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        _, state_topic, availability_topic = _topics(self.site, self.group, member.node, self.options.prefix)
        if config != p.config or republish:
            p.config = config
            out.append(HaMessage(config_topic, config.encode()))
        if member.online != p.online or republish:
            p.online = member.online
            out.append(HaMessage(availability_topic, b"online" if member.online else b"offline"))
        self._integrate(p, member)
        fresh = member.last_seen_ms != p.state_seen_ms
        due = now_ms - p.state_at_ms >= self.options.state_interval_s * 1000
        if republish or p.state_at_ms < 0 or (fresh and due):
            p.state_at_ms, p.state_seen_ms = now_ms, member.last_seen_ms
            out.append(HaMessage(state_topic, self._state(member, p, facts).encode()))
        return out

    @staticmethod
    def _integrate(p: _Published, member: Member) -> None:
        """Energy from the power readings: each reading holds until the next (at most 5 min)."""
        power = _finite(member.power_w)
        at = member.last_seen_ms
        if at <= p.power_at_ms:
            return
        if p.power_w is not None and p.power_at_ms >= 0 and at - p.power_at_ms <= _MAX_ENERGY_GAP_MS:
            p.energy_kwh += p.power_w * (at - p.power_at_ms) / 3_600_000 / 1000
        p.power_w = power if power is not None and power >= 0 else None
        p.power_at_ms = at

    def _state(self, member: Member, p: _Published, facts: _Facts) -> str:
        state: dict[str, Any] = {
            "cpu_util": round(100 * member.cpu_util, 1),
            "mem_util": round(100 * member.mem_util, 1),
            "trust_level": facts.level(member.node).value,
            "verifications": self._verifications.get(member.node, 0),
            "earnings": round(facts.balance_micro(member.node) / MICRO, 6),
        }
        for spec in member.resources:
            state[f"capacity_{spec.type.value}"] = round(spec.capacity if member.offering else 0.0, 3)
        temperature, power = _finite(member.temperature_c), _finite(member.power_w)
        if temperature is not None:
            state["temperature"] = round(temperature, 1)
        if power is not None:
            state["power"] = round(power, 2)
            state["energy"] = round(p.energy_kwh, 6)
        return json.dumps(state, sort_keys=True, separators=(",", ":"))
