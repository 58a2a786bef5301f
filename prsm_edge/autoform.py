"""Auto-formation: find a group on the LAN and join it, or found one, and converge when two collide.

A node (``prsm-edge join``) browses for ``_prsm._tcp`` adverts for ``discover_s`` seconds and joins the
group :func:`~prsm_edge.protocol.formation.choose_group` picks (own site first, then the least loaded,
only groups with room). If there is none and the owner allows it (``allow_coordinate``), the node
founds one: it starts a broker and a coordinator, announces the group, and joins it as an agent too.
While it hosts, it keeps browsing: when another coordinator announces the same site and group (two
started at once), :func:`~prsm_edge.protocol.formation.should_yield` decides — the same answer on both
sides — and the loser redirects its members and stops; they (and its own agent) look again, excluding
it, and join the winner. A full group refuses joins (the agent is redirected and looks elsewhere); a group
under 50 members merges into a larger neighbour of its site the same way.

Nothing unauthenticated from the LAN changes who leads: adverts are signed by the coordinator's key
(the browser drops the rest); a coordinator yields or merges only to a rival its
:class:`~prsm_edge.protocol.formation.LeaderPolicy` allows (a key the site pinned, or any rival when the
operator chose ``verified``), and only after checking the rival's signed state and roster on the rival's
own broker (:func:`~prsm_edge.io.rival.verify_rival`). Its redirect names the winner's key, so members
hand their pin on to it; a node joins no other key announcing a group it has pinned.

This module is on the CLI's floor: it composes the coordinator and node roles, which never import each
other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from prsm_edge.errors import PrsmEdgeError
from prsm_edge.identity import Identity, load_or_create
from prsm_edge.io.discovery import Advertiser, Browser
from prsm_edge.io.pins import PinStore
from prsm_edge.io.rival import verify_rival
from prsm_edge.localgroup import GroupHost, host_group
from prsm_edge.node.agent import Agent, AgentOptions, Redirected
from prsm_edge.protocol import formation
from prsm_edge.protocol.backoff import Backoff
from prsm_edge.protocol.membership import JoinPolicy
from prsm_edge.protocol.messages import PROTOCOL_VERSION, ResourceType

__all__ = ["AutoNode", "FormationOptions"]

log = logging.getLogger(__name__)

MAX_EXCLUDED: Final = 64  # groups and coordinators skipped after a refusal; the oldest is forgotten first


@dataclass(frozen=True, slots=True)
class FormationOptions:
    """How a node looks for, founds and hosts groups."""

    site: str
    workdir: Path
    agent: AgentOptions  # site, group and broker_url are filled in per group
    allow_coordinate: bool = True
    broker_url: str | None = None  # a fixed broker: no discovery
    group: str | None = None  # with broker_url, or the name to found
    interfaces: Sequence[str] | None = None
    discover_s: float = 4.0
    watch_s: float = 2.0
    broker: str = "auto"
    port: int = 0
    max_members: int = formation.DEFAULT_MAX_MEMBERS
    heartbeat_timeout_s: float = 35.0
    leader: formation.LeaderPolicy = field(default_factory=formation.LeaderPolicy)
    join_policy: JoinPolicy = field(default_factory=JoinPolicy)  # when this node founds a group
    listen: bool = False  # let the embedded fallback broker (no ACLs) listen on the LAN


@dataclass
class AutoNode:
    """One device's agent, finding (or founding) its group and following redirects."""

    options: FormationOptions
    identity: Identity | None = None
    on_event: Callable[[str], None] = lambda text: log.info("%s", text)
    excluded: OrderedDict[str, None] = field(default_factory=OrderedDict)
    noted: OrderedDict[str, None] = field(default_factory=OrderedDict)
    hosting: GroupHost | None = None
    agent: Agent | None = None
    joined: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.identity = self.identity or load_or_create(self.options.workdir / "identity")
        self.pins = PinStore(self.pins_path)

    @property
    def pins_path(self) -> Path:
        """Where this node keeps the coordinator keys it pinned (its home, shared by all its groups)."""
        return self.options.workdir / "pins.json"

    def _note(self, key: str, text: str) -> None:
        """Report ``text`` once per ``key`` (bounded), so a rival seen every cycle is not logged each time."""
        if key in self.noted:
            return
        self.noted[key] = None
        while len(self.noted) > MAX_EXCLUDED:
            self.noted.popitem(last=False)
        self.on_event(text)

    def exclude(self, name: str) -> None:
        """Skip a group or coordinator from now on (bounded: the oldest exclusion is forgotten first)."""
        self.excluded[name] = None
        self.excluded.move_to_end(name)
        while len(self.excluded) > MAX_EXCLUDED:
            self.excluded.popitem(last=False)

    @property
    def node_id(self) -> str:
        """This node's id."""
        assert self.identity is not None
        return self.identity.node_id

    async def run(self) -> None:
        """Find a group, join it, follow redirects; until cancelled."""
        backoff = Backoff(initial=1.0, cap=30.0)
        o = self.options
        while True:
            if o.broker_url is not None:
                await self._join(o.broker_url, o.group or "g1", coordinator="")
                await asyncio.sleep(backoff.next_delay(random.random()))  # redirected: do not hammer it
                continue
            adverts = await self._discover()
            choice = formation.choose_group(
                adverts,
                site=o.site,
                version=PROTOCOL_VERSION,
                exclude=sorted(self.excluded),
                pins=PinStore(self.pins_path).all(),  # re-read: the agent may have handed a pin on
                trusted=o.leader.trusted,
            )
            if choice is not None:
                host = choice.hosts[0] if choice.hosts else "127.0.0.1"
                self.on_event(f"joining group {choice.site}/{choice.group} at {host}:{choice.port}")
                await self._join(f"mqtt://{host}:{choice.port}", choice.group, choice.coordinator)
                backoff.reset()
            elif o.allow_coordinate:
                name = o.group or formation.next_group_name({a.group for a in adverts if a.site == o.site})
                await self._found(name)
            else:
                delay = backoff.next_delay(random.random())
                self.on_event(f"no group with room found; looking again in {delay:.0f} s")
                await asyncio.sleep(delay)

    async def _discover(self) -> list[formation.GroupAdvert]:
        async with Browser(self.options.interfaces) as browser:
            await asyncio.sleep(self.options.discover_s)
            return browser.snapshot()

    def _agent_options(self, url: str, group: str, coordinator: str) -> AgentOptions:
        folder = self.options.workdir / "groups" / f"{self.options.site}-{group}-{coordinator or 'fixed'}"
        return replace(
            self.options.agent,
            site=self.options.site,
            group=group,
            broker_url=url,
            workdir=folder,
            pins_path=self.pins_path,
            trusted_coordinators=self.options.leader.trusted,
        )

    async def _join(self, url: str, group: str, coordinator: str) -> None:
        self.agent = Agent(self._agent_options(url, group, coordinator), self.identity)
        self.joined.set()
        try:
            await self.agent.run()
        except Redirected as exc:
            self.on_event(f"left {group}: {exc}")
            if coordinator:
                self.exclude(coordinator)
        finally:
            self.joined.clear()

    # ---- hosting ------------------------------------------------------------------------------
    async def _found(self, group: str) -> None:
        o = self.options
        host = o.interfaces[0] if o.interfaces else "0.0.0.0"
        self.on_event(f"no group with room found: founding {o.site}/{group}")
        async with host_group(
            o.workdir / "coordinator" / group,
            listen=o.listen,
            join_policy=o.join_policy,
            site=o.site,
            group=group,
            host=host,
            port=o.port,
            prefer=o.broker,  # type: ignore[arg-type]
            max_members=o.max_members,
            heartbeat_timeout_s=o.heartbeat_timeout_s,
        ) as hosted:
            self.hosting = hosted
            coord = hosted.coordinator
            advert = self._advert(hosted)
            try:
                async with (
                    Advertiser(advert, o.interfaces, key=coord.identity.signing_key) as advertiser,
                    asyncio.TaskGroup() as tg,
                ):
                    coord_task = tg.create_task(coord.run())
                    await coord.ready.wait()
                    agent_task = tg.create_task(
                        self._join(hosted.broker.url, group, coord.identity.node_id), name="own-agent"
                    )
                    winner = await self._watch(hosted, advertiser)
                    self.on_event(f"yielding {o.site}/{group} to coordinator {winner.coordinator}")
                    await coord.redirect_all(
                        f"group merged into coordinator {winner.coordinator}",
                        to_key=winner.public_key,
                        to_group=winner.group,
                    )
                    await asyncio.sleep(0.5)  # let the redirects go out before the broker stops
                    coord_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await agent_task
            finally:
                self.hosting = None
        self.exclude(hosted.coordinator.identity.node_id)

    def _advert(self, hosted: GroupHost) -> formation.GroupAdvert:
        coord = hosted.coordinator
        g = coord.group
        cores = sum(
            r.capacity
            for m in g.members.values()
            if m.online
            for r in m.resources
            if r.type is ResourceType.COMPUTE_CPU
        )
        hosts: tuple[str, ...] = ()
        if self.options.interfaces:
            hosts = tuple(self.options.interfaces)
        return formation.GroupAdvert(
            site=g.config.site,
            group=g.config.group,
            coordinator=coord.identity.node_id,
            epoch=g.config.epoch,
            version=PROTOCOL_VERSION,
            members=len(g.members),
            port=hosted.broker.port,
            max_members=g.config.max_members,
            capacity=int(cores),
            key_fingerprint=coord.identity.fingerprint,
            hosts=hosts,
            ws_port=hosted.broker.ws_port,
        )

    async def _watch(self, hosted: GroupHost, advertiser: Advertiser) -> formation.GroupAdvert:
        """Keep the advert current and return the winner once this coordinator must yield."""
        async with Browser(self.options.interfaces) as browser:
            while True:
                await asyncio.sleep(self.options.watch_s)
                mine = self._advert(hosted)
                if mine.members != advertiser.advert.members or mine.capacity != advertiser.advert.capacity:
                    with contextlib.suppress(PrsmEdgeError):
                        await advertiser.update(mine)
                # Only rivals the leader policy allows count, and only once their own broker confirms.
                others = [a for a in browser.snapshot() if a.coordinator != mine.coordinator]
                for a in others:
                    if a.key == mine.key and not self.options.leader.allows(a):
                        self._note(
                            a.coordinator,
                            f"ignoring rival coordinator {a.coordinator} of {a.site}/{a.group}: "
                            f"the leader policy ({self.options.leader.mode}) does not allow it",
                        )
                seen = [a for a in others if self.options.leader.allows(a)]
                rivals = [a for a in seen if a.key == mine.key]
                target: formation.GroupAdvert | None = None
                if rivals and formation.should_yield(mine, rivals):
                    target = formation.elect([mine, *rivals])
                else:
                    target = formation.should_merge(mine, seen)
                if target is None:
                    continue
                verified = await verify_rival(target)
                if verified is None:
                    self._note(
                        f"unverified:{target.coordinator}",
                        f"not following {target.coordinator}: its broker does not confirm its advert",
                    )
                    continue
                if verified.key == mine.key and formation.should_yield(mine, [verified]):
                    return verified
                if verified.key != mine.key and formation.should_merge(mine, [verified]) == verified:
                    return verified
