"""Home Assistant's side of the tree, sans-IO: its topics, the control entities, and command checks.

Home Assistant cannot verify COSE, so what it reads and writes is plain JSON outside the signed
``prsm/v1`` tree, under ``prsm-ha/{site}/{group}/{node}/``::

    state           R  the node's sensors (published by the coordinator)
    availability    R  online / offline (the coordinator)
    controls        R  the controls' current values (published by the node, only while they are on)
    set/{entity}       a command from Home Assistant: a number (allocation, %) or ON/OFF (pause)
    ack                the node's answer to each command: applied or refused, and why

Controls are off unless the node's owner turns them on locally (the ``homeassistant_controls``
setting, which neither the owner API nor Home Assistant can change). Then the node announces it in its
signed birth, the coordinator adds a number entity per allocation setting and a pause switch to the
node's device discovery, and the node listens on its own ``set/+``. The broker lets only Home
Assistant's login publish there (``prsm-homeassistant`` role); the node checks every command here (its
entity, its size, a finite value in range) and then applies it through the owner API's own validation
(:meth:`~prsm_edge.node.owner_api.NodeApi.apply_settings`), so Home Assistant can never do more than
move those sliders and pause.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prsm_edge.errors import LocalError
from prsm_edge.protocol.messages import ResourceType
from prsm_edge.protocol.topics import valid_segment

__all__ = [
    "CONTROL_SETTINGS",
    "MAX_COMMAND_BYTES",
    "PAUSE",
    "STATE_ROOT",
    "Command",
    "CommandRefused",
    "control_components",
    "controls_state",
    "node_topics",
    "parse_command",
]

STATE_ROOT: Final = "prsm-ha"
PAUSE: Final = "pause"
MAX_COMMAND_BYTES: Final = 32
# The allocation settings Home Assistant may move (the owner API's names), and the resource types each
# one governs (a setting appears as an entity when the node offers one of its types).
CONTROL_SETTINGS: Final[dict[str, frozenset[ResourceType]]] = {
    "cpu_allocation_percentage": frozenset({ResourceType.COMPUTE_CPU}),
    "gpu_allocation_percentage": frozenset(
        {ResourceType.COMPUTE_GPU, ResourceType.COMPUTE_TPU, ResourceType.SPECIALIZED_EDGE}
    ),
    "memory_allocation_percentage": frozenset({ResourceType.STORAGE_MEMORY}),
    "storage_allocation_percentage": frozenset({ResourceType.STORAGE_PERSISTENT, ResourceType.STORAGE_CACHE}),
    "bandwidth_allocation_percentage": frozenset(
        {ResourceType.BANDWIDTH_INGRESS, ResourceType.BANDWIDTH_EGRESS}
    ),
}


class CommandRefused(LocalError):
    """A command from Home Assistant that the node will not apply (the message says why)."""


@dataclass(frozen=True, slots=True)
class NodeTopics:
    """One node's Home Assistant topics."""

    base: str

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def controls(self) -> str:
        return f"{self.base}/controls"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    @property
    def commands(self) -> str:
        """The subscription filter for every command to the node."""
        return f"{self.base}/set/+"

    def command(self, entity: str) -> str:
        return f"{self.base}/set/{entity}"


def node_topics(site: str, group: str, node: str) -> NodeTopics:
    """The Home Assistant topics of one node (segments checked like the signed tree's)."""
    for name, value in (("site", site), ("group", group), ("node", node)):
        if not valid_segment(value):
            raise LocalError(f"{name} {value!r} must be 1–64 characters of a-z, 0-9, '_' or '-'")
    return NodeTopics(f"{STATE_ROOT}/{site}/{group}/{node}")


@dataclass(frozen=True, slots=True)
class Command:
    """A checked command: an allocation setting and its new share (0–1), or pause on/off."""

    entity: str
    share: float | None = None
    paused: bool | None = None


def parse_command(topics_of_node: NodeTopics, topic: str, payload: bytes) -> Command:
    """Check one command; raise :class:`CommandRefused` naming what was wrong."""
    prefix = topics_of_node.base + "/set/"
    if not topic.startswith(prefix):
        raise CommandRefused(f"{topic!r} is not a command topic of this node")
    entity = topic[len(prefix) :]
    if entity != PAUSE and entity not in CONTROL_SETTINGS:
        raise CommandRefused(
            f"{entity!r} is not a control; Home Assistant may set {', '.join([*CONTROL_SETTINGS, PAUSE])}"
        )
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRefused(f"a command is at most {MAX_COMMAND_BYTES} bytes, not {len(payload)}")
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CommandRefused("a command is plain ASCII text") from None
    if entity == PAUSE:
        if text not in ("ON", "OFF"):
            raise CommandRefused(f"pause takes ON or OFF, not {text!r}")
        return Command(PAUSE, paused=text == "ON")
    try:
        percent = float(text)
    except ValueError:
        raise CommandRefused(f"{entity} takes a number of percent (0–100), not {text!r}") from None
    if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
        raise CommandRefused(f"{entity} must be 0–100 %, not {text}")
    return Command(entity, share=round(percent / 100.0, 4))


def controls_state(settings: Mapping[str, float], paused: bool) -> bytes:
    """The controls' values as Home Assistant reads them (percent, and ON/OFF)."""
    state: dict[str, Any] = {
        name: round(100.0 * float(settings[name]), 1) for name in CONTROL_SETTINGS if name in settings
    }
    state[PAUSE] = "ON" if paused else "OFF"
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def control_components(
    topics_of_node: NodeTopics, node: str, offered: Iterable[ResourceType]
) -> dict[str, dict[str, Any]]:
    """The number and switch entities for a node whose owner turned the controls on."""
    types = set(offered)
    out: dict[str, dict[str, Any]] = {}
    for setting, governed in CONTROL_SETTINGS.items():
        if not governed & types:
            continue
        out[f"set_{setting}"] = {
            "p": "number",
            "name": setting.replace("_percentage", "").replace("_", " ").capitalize(),
            "unique_id": f"prsm_{node}_{setting}",
            "command_topic": topics_of_node.command(setting),
            "state_topic": topics_of_node.controls,
            "value_template": f"{{{{ value_json.{setting} }}}}",
            "min": 0,
            "max": 100,
            "step": 5,
            "mode": "slider",
            "unit_of_measurement": "%",
            "entity_category": "config",
        }
    out["set_pause"] = {
        "p": "switch",
        "name": "Paused",
        "unique_id": f"prsm_{node}_pause",
        "command_topic": topics_of_node.command(PAUSE),
        "state_topic": topics_of_node.controls,
        "value_template": f"{{{{ value_json.{PAUSE} }}}}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "entity_category": "config",
    }
    return out
