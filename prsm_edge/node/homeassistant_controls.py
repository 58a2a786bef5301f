"""Home Assistant controls on the node: commands on its own ``set/+`` topics, checked, applied, answered.

Off unless the owner set ``homeassistant_controls = true`` locally (the settings file or environment;
neither the owner API nor Home Assistant can change it). While off the agent does not even subscribe,
and a command that still arrives is refused. While on, each command is checked
(:func:`~prsm_edge.protocol.homeassistant.parse_command`: entity, size, finite value in range), rate
limited, applied through the owner API's own path (:meth:`NodeApi.apply_settings`, the same pydantic
limits, the settings file written, the new offer announced) or :meth:`NodeApi.set_paused`, and answered
on ``ack`` (applied, or refused and why); the controls' state is republished so Home Assistant shows the
real value either way. Refusals are logged once per reason at WARNING, then at DEBUG.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Final

from prsm_edge.protocol.api import ApiError
from prsm_edge.protocol.homeassistant import (
    CONTROL_SETTINGS,
    PAUSE,
    CommandRefused,
    controls_state,
    node_topics,
    parse_command,
)

if TYPE_CHECKING:
    from prsm_edge.node.agent import Agent

__all__ = ["HaControls"]

log = logging.getLogger(__name__)

COMMANDS_PER_MINUTE: Final = 30
OFF_REASON: Final = (
    "Home Assistant controls are off on this node; its owner turns them on with "
    "`prsm-edge settings set homeassistant_controls true` and a restart"
)


class HaControls:
    """The node's Home Assistant control endpoint."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        o = agent.options
        self.topics = node_topics(o.site, o.group, agent.node_id)
        self._tokens = float(COMMANDS_PER_MINUTE)
        self._refill_at = time.monotonic()
        self._warned: set[str] = set()
        self._published = b""
        self.applied = 0
        self.refused = 0

    @property
    def enabled(self) -> bool:
        """Whether the owner turned the controls on (read from the owner's settings every time)."""
        return bool(self.agent.owner_api.settings.homeassistant_controls)

    def subscriptions(self) -> list[tuple[str, int]]:
        """What the agent subscribes to for the controls: nothing while they are off."""
        return [(self.topics.commands, 1)] if self.enabled else []

    def handles(self, topic: str) -> bool:
        """Whether ``topic`` is one of this node's Home Assistant command topics."""
        return topic.startswith(self.topics.base + "/")

    def _allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(COMMANDS_PER_MINUTE), self._tokens + (now - self._refill_at) * COMMANDS_PER_MINUTE / 60
        )
        self._refill_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def state(self) -> bytes:
        """The controls' current values (what the ``controls`` topic carries)."""
        api = self.agent.owner_api
        settings = {name: float(getattr(api.settings, name)) for name in CONTROL_SETTINGS}
        return controls_state(settings, api.paused)

    async def publish_state(self, *, force: bool = False) -> None:
        """Publish the controls' state (retained) when it changed, while the controls are on."""
        if not self.enabled:
            return
        state = self.state()
        if state == self._published and not force:
            return
        if await self.agent.session.publish(self.topics.controls, state, qos=1, retain=True):
            self._published = state

    async def on_message(self, topic: str, payload: bytes) -> None:
        """One command from Home Assistant: check it, apply it or refuse it, and answer."""
        entity = topic.rsplit("/", 1)[-1][:64]
        value = payload[:32].decode("ascii", "replace")
        if self.enabled and not self._allow():
            # A flood is dropped without answers (each answer would be two more messages on the broker).
            self.refused += 1
            log.debug(
                "%s: over %d Home Assistant commands a minute; dropped %s",
                self.agent.node_id,
                COMMANDS_PER_MINUTE,
                entity,
            )
            return
        try:
            if not self.enabled:
                raise CommandRefused(OFF_REASON)
            command = parse_command(self.topics, topic, payload)
            api = self.agent.owner_api
            if command.entity == PAUSE:
                api.set_paused(bool(command.paused))
            else:
                try:
                    api.apply_settings({command.entity: command.share}, replace_all=False)
                except ApiError as exc:
                    raise CommandRefused(exc.message) from None
        except CommandRefused as exc:
            self.refused += 1
            reason = str(exc)
            level = logging.DEBUG if reason in self._warned else logging.WARNING
            if len(self._warned) < 100:
                self._warned.add(reason)
            log.log(
                level,
                "%s: refused a Home Assistant command %s=%r: %s",
                self.agent.node_id,
                entity,
                value,
                reason,
            )
            await self._ack(entity, value, False, reason)
            await self.publish_state(force=True)
            return
        self.applied += 1
        log.info("%s: Home Assistant set %s to %s", self.agent.node_id, entity, value.strip())
        await self._ack(entity, value, True, "")
        await self.publish_state(force=True)

    async def _ack(self, entity: str, value: str, ok: bool, error: str) -> None:
        answer = {"entity": entity, "value": value.strip(), "ok": ok, "error": error}
        if not self.enabled:
            return  # no answers while off: the topic is not even listened to, nor written
        await self.agent.session.publish(
            self.topics.ack, json.dumps(answer, sort_keys=True).encode(), qos=1, retain=False
        )
