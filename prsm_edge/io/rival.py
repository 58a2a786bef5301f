"""Check a rival coordinator's claims on its own broker before anyone steps down or follows it.

An mDNS advert is only what its signer says. Before a coordinator yields to a rival (or merges into
another group), it connects to the rival's broker as an anonymous joiner may, reads the rival's retained
``coord/state`` and ``coord/roster``, and checks that both are signed by the key the advert carries, that
the coordinator is online in the advertised epoch, and takes the member count from the signed roster,
not from the advert. The formation rules then run again on those verified numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets

import aiomqtt

from prsm_edge.errors import PrsmEdgeError, RejectedMessage
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import open_envelope
from prsm_edge.protocol.formation import GroupAdvert
from prsm_edge.protocol.messages import CoordState, Roster

__all__ = ["verify_rival"]

log = logging.getLogger(__name__)


async def verify_rival(advert: GroupAdvert, *, timeout: float = 5.0) -> GroupAdvert | None:  # noqa: ASYNC109
    """The advert with its numbers as the rival's broker shows them signed, or None if they do not hold."""
    host = advert.hosts[0] if advert.hosts else "127.0.0.1"
    state_topic = topics.coord_state(advert.site, advert.group)
    roster_topic = topics.coord_roster(advert.site, advert.group)
    state: CoordState | None = None
    roster: Roster | None = None
    try:
        async with (
            asyncio.timeout(timeout),
            aiomqtt.Client(
                host, advert.port, identifier=f"prsm-rival-check-{secrets.token_hex(6)}", timeout=timeout
            ) as client,
        ):
            await client.subscribe(state_topic, qos=1)
            await client.subscribe(roster_topic, qos=1)
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray) or not payload:
                    continue
                with contextlib.suppress(RejectedMessage):
                    opened = open_envelope(bytes(payload))
                    if opened.kid != advert.public_key:
                        log.info(
                            "rival %s: a message on its broker is signed by another key", advert.coordinator
                        )
                        return None
                    msg = opened.message
                    if str(message.topic) == state_topic and isinstance(msg, CoordState):
                        state = msg
                    elif str(message.topic) == roster_topic and isinstance(msg, Roster):
                        roster = msg
                if state is not None and roster is not None:
                    break
    except (TimeoutError, aiomqtt.MqttError, PrsmEdgeError, OSError) as exc:
        log.info("rival %s could not be verified on %s:%d: %s", advert.coordinator, host, advert.port, exc)
        return None
    if state is None or roster is None:
        return None
    if (
        state.status != "online"
        or (state.site, state.group, state.epoch, state.coordinator)
        != (advert.site, advert.group, advert.epoch, advert.coordinator)
        or (roster.group, roster.epoch) != (advert.group, advert.epoch)
    ):
        log.info("rival %s: its broker's signed state does not match its advert", advert.coordinator)
        return None
    room = state.members + state.capacity_left
    return dataclasses.replace(
        advert, members=len(roster.members), max_members=min(advert.max_members, max(room, 1))
    )
