"""The prsm MQTT topic tree: build and parse, nothing else.

Shape (Sparkplug B / Home Assistant style; R = retained)::

    prsm/v1/{site}/{group}/coord/state                 R  coordinator online/offline (its Will: offline)
    prsm/v1/{site}/{group}/coord/roster                R  signed member list of the epoch
    prsm/v1/{site}/{group}/coord/beacon                R  verification round beacon (reveal + next commit)
    prsm/v1/{site}/{group}/coord/ledger                R  FTNS ledger chain head (count + last hash)
    prsm/v1/{site}/{group}/coord/rollup                R  trend rollup (utilization, earnings, trust)
    prsm/v1/{site}/{group}/summary                     R  signed group summary (carried upward)
    prsm/v1/{site}/{group}/market/{node}               R  a member's market listing (coordinator-signed)
    prsm/v1/{site}/{group}/node/{node}/state           R  node online/offline + bdseq (its Will: offline)
    prsm/v1/{site}/{group}/node/{node}/birth           R  signed capability manifest and claims
    prsm/v1/{site}/{group}/node/{node}/claim              signed claim updates
    prsm/v1/{site}/{group}/node/{node}/proof              benchmark proofs and verification votes
    prsm/v1/{site}/{group}/node/{node}/telemetry          heartbeats
    prsm/v1/{site}/{group}/node/{node}/bw                 bandwidth-check chunks (to the coordinator)
    prsm/v1/{site}/{group}/node/{node}/cmd/{verb}         coordinator → node
    prsm/v1/{site}/{group}/node/{node}/reply              the node's signed answer to a relayed API call
    prsm/v1/{site}/{group}/node/{node}/bench/{leaf}       the node's own network-benchmark echo
    prsm/v1/{site}/{group}/api/{method}/req/{client}      request (transaction id in the payload)
    prsm/v1/{site}/{group}/api/{method}/resp/{client}     response to that client
    prsm/v1/{site}/gw/{gateway}/state                  R  gateway uplink state
    prsm/v1/{site}/gw/{gateway}/bridge                 R  the Mosquitto bridge's notification ("1"/"0")
    prsm/v1/{site}/{group}/fed/report                     coordinator → gateway: leases, evidence

One tier up the same shape repeats: a regional coordinator's units are the groups below it, each under
``unit/{unit_site}/{unit_group}`` of the region's own tree (the bridge remaps a group's ``api`` there)::

    prsm/v1/{site}/{region}/unit/{usite}/{ugroup}/summary             R  the group's signed summary
    prsm/v1/{site}/{region}/unit/{usite}/{ugroup}/state               R  the region's word on the group
    prsm/v1/{site}/{region}/unit/{usite}/{ugroup}/stream                 the gateway's ordered stream
    prsm/v1/{site}/{region}/unit/{usite}/{ugroup}/rebirth                region → gateway: send birth again
    prsm/v1/{site}/{region}/unit/{usite}/{ugroup}/api/{method}/req|resp/{client}   bridged API calls

Every segment we fill in is 1–64 characters of ``[a-z0-9_-]`` (no wildcards, no separators), so a
topic built from untrusted ids can never widen a subscription or climb out of its subtree.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from prsm_edge.errors import TopicError

__all__ = ["ROOT", "Kind", "Topic", "parse", "valid_segment"]

ROOT: Final = "prsm/v1"
_SEGMENT = re.compile(r"[a-z0-9_-]{1,64}")
_NODE_LEAVES: Final = ("state", "birth", "claim", "proof", "telemetry", "reply", "bw")


class Kind(enum.StrEnum):
    """What a topic carries."""

    COORD_STATE = "coord/state"
    COORD_ROSTER = "coord/roster"
    COORD_BEACON = "coord/beacon"
    COORD_LEDGER = "coord/ledger"
    COORD_ROLLUP = "coord/rollup"
    MARKET_LISTING = "market"
    SUMMARY = "summary"
    NODE_STATE = "state"
    NODE_BIRTH = "birth"
    NODE_CLAIM = "claim"
    NODE_PROOF = "proof"
    NODE_TELEMETRY = "telemetry"
    NODE_REPLY = "reply"
    NODE_BANDWIDTH = "bw"
    NODE_CMD = "cmd"
    NODE_BENCH = "bench"
    API_REQ = "req"
    API_RESP = "resp"
    GATEWAY_STATE = "gw/state"
    GATEWAY_BRIDGE = "gw/bridge"
    FED_REPORT = "fed/report"
    UNIT_SUMMARY = "unit/summary"
    UNIT_STREAM = "unit/stream"
    UNIT_REBIRTH = "unit/rebirth"
    UNIT_STATE = "unit/state"
    UNIT_API_REQ = "unit/req"
    UNIT_API_RESP = "unit/resp"


RETAINED: Final = frozenset(
    {
        Kind.COORD_STATE,
        Kind.COORD_ROSTER,
        Kind.COORD_BEACON,
        Kind.COORD_LEDGER,
        Kind.COORD_ROLLUP,
        Kind.MARKET_LISTING,
        Kind.SUMMARY,
        Kind.NODE_STATE,
        Kind.NODE_BIRTH,
        Kind.GATEWAY_STATE,
        Kind.GATEWAY_BRIDGE,
        Kind.UNIT_SUMMARY,
        Kind.UNIT_STATE,
    }
)


def valid_segment(value: str) -> bool:
    """True if ``value`` may stand as one topic segment."""
    return _SEGMENT.fullmatch(value) is not None


def _seg(name: str, value: str) -> str:
    if not valid_segment(value):
        raise TopicError(f"{name} {value!r} must be 1–64 characters of a-z, 0-9, '_' or '-'")
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """One parsed (or to-be-built) topic of the tree."""

    kind: Kind
    site: str
    group: str = ""
    node: str = ""
    verb: str = ""
    method: str = ""
    client: str = ""
    gateway: str = ""
    unit_site: str = ""
    unit_group: str = ""

    @property
    def retained(self) -> bool:
        """Whether messages on this topic are published retained."""
        return self.kind in RETAINED

    def __str__(self) -> str:
        site = _seg("site", self.site)
        if self.kind in (Kind.GATEWAY_STATE, Kind.GATEWAY_BRIDGE):
            return f"{ROOT}/{site}/gw/{_seg('gateway', self.gateway)}/{self.kind.value[3:]}"
        base = f"{ROOT}/{site}/{_seg('group', self.group)}"
        if self.kind.value.startswith("unit/"):
            unit = f"{base}/unit/{_seg('unit site', self.unit_site)}/{_seg('unit group', self.unit_group)}"
            if self.kind in (Kind.UNIT_API_REQ, Kind.UNIT_API_RESP):
                method = _seg("method", self.method)
                return f"{unit}/api/{method}/{self.kind.value[5:]}/{_seg('client', self.client)}"
            return f"{unit}/{self.kind.value[5:]}"
        match self.kind:
            case Kind.FED_REPORT:
                return f"{base}/{self.kind.value}"
            case (
                Kind.COORD_STATE
                | Kind.COORD_ROSTER
                | Kind.COORD_BEACON
                | Kind.COORD_LEDGER
                | Kind.COORD_ROLLUP
                | Kind.SUMMARY
            ):
                return f"{base}/{self.kind.value}"
            case Kind.MARKET_LISTING:
                return f"{base}/market/{_seg('node', self.node)}"
            case Kind.NODE_CMD | Kind.NODE_BENCH:
                return f"{base}/node/{_seg('node', self.node)}/{self.kind.value}/{_seg('verb', self.verb)}"
            case Kind.API_REQ | Kind.API_RESP:
                method = _seg("method", self.method)
                return f"{base}/api/{method}/{self.kind.value}/{_seg('client', self.client)}"
            case _:
                return f"{base}/node/{_seg('node', self.node)}/{self.kind.value}"


# Builders for the common topics.
def coord_state(site: str, group: str) -> str:
    """The coordinator's retained state topic."""
    return str(Topic(Kind.COORD_STATE, site, group))


def coord_roster(site: str, group: str) -> str:
    """The coordinator's retained roster topic."""
    return str(Topic(Kind.COORD_ROSTER, site, group))


def coord_beacon(site: str, group: str) -> str:
    """The coordinator's retained verification beacon."""
    return str(Topic(Kind.COORD_BEACON, site, group))


def coord_ledger(site: str, group: str) -> str:
    """The coordinator's retained FTNS ledger chain head."""
    return str(Topic(Kind.COORD_LEDGER, site, group))


def coord_rollup(site: str, group: str) -> str:
    """The coordinator's retained trend rollup."""
    return str(Topic(Kind.COORD_ROLLUP, site, group))


def market_listing(site: str, group: str, node_id: str) -> str:
    """A member's retained market listing (published by the coordinator)."""
    return str(Topic(Kind.MARKET_LISTING, site, group, node=node_id))


def summary(site: str, group: str) -> str:
    """The group's retained summary topic."""
    return str(Topic(Kind.SUMMARY, site, group))


def node(kind: Kind, site: str, group: str, node_id: str) -> str:
    """One of a node's own topics (state, birth, claim, proof, telemetry, reply)."""
    if kind.value not in _NODE_LEAVES:
        raise TopicError(f"{kind} is not one of a node's own topics")
    return str(Topic(kind, site, group, node=node_id))


def node_cmd(site: str, group: str, node_id: str, verb: str) -> str:
    """A command from the coordinator to one node."""
    return str(Topic(Kind.NODE_CMD, site, group, node=node_id, verb=verb))


def api(kind: Kind, site: str, group: str, method: str, client: str) -> str:
    """An API request or response topic for one client."""
    if kind not in (Kind.API_REQ, Kind.API_RESP):
        raise TopicError(f"{kind} is not an API topic")
    return str(Topic(kind, site, group, method=method, client=client))


def api_responses_filter(site: str, group: str, client: str) -> str:
    """Subscription filter for every API response addressed to ``client``."""
    return f"{ROOT}/{_seg('site', site)}/{_seg('group', group)}/api/+/resp/{_seg('client', client)}"


def gateway_state(site: str, gateway: str) -> str:
    """A gateway's retained uplink-state topic."""
    return str(Topic(Kind.GATEWAY_STATE, site, gateway=gateway))


def gateway_bridge(site: str, gateway: str) -> str:
    """Where a gateway's Mosquitto bridge publishes its notifications (retained "1"/"0")."""
    return str(Topic(Kind.GATEWAY_BRIDGE, site, gateway=gateway))


def fed_report(site: str, group: str) -> str:
    """Where a group's coordinator hands lease reports and evidence to its gateway."""
    return str(Topic(Kind.FED_REPORT, site, group))


def unit(kind: Kind, site: str, group: str, unit_site: str, unit_group: str) -> str:
    """A unit's topic in a tier's tree (summary, state, stream or rebirth)."""
    if kind not in (Kind.UNIT_SUMMARY, Kind.UNIT_STREAM, Kind.UNIT_REBIRTH, Kind.UNIT_STATE):
        raise TopicError(f"{kind} is not a unit topic")
    return str(Topic(kind, site, group, unit_site=unit_site, unit_group=unit_group))


def unit_api(
    kind: Kind, site: str, group: str, unit_site: str, unit_group: str, method: str, client: str
) -> str:
    """An API request to (or response from) a unit, as the bridge carries it in the tier's tree."""
    if kind not in (Kind.UNIT_API_REQ, Kind.UNIT_API_RESP):
        raise TopicError(f"{kind} is not a unit API topic")
    return str(
        Topic(kind, site, group, method=method, client=client, unit_site=unit_site, unit_group=unit_group)
    )


def unit_prefix(site: str, group: str, unit_site: str, unit_group: str) -> str:
    """The prefix a bridge maps a group's own ``prsm/v1/{site}/{group}/`` to in the tier above."""
    tree = f"{ROOT}/{_seg('site', site)}/{_seg('group', group)}"
    return f"{tree}/unit/{_seg('unit site', unit_site)}/{_seg('unit group', unit_group)}/"


def unit_filter(site: str, group: str, leaf: str) -> str:
    """Subscription filter for one leaf (``summary``, ``stream``) of every unit of a tier."""
    return f"{ROOT}/{_seg('site', site)}/{_seg('group', group)}/unit/+/+/{leaf}"


def node_filter(site: str, group: str, leaf: str = "+") -> str:
    """Subscription filter for one leaf (or all with ``#``) of every node in a group."""
    return f"{ROOT}/{_seg('site', site)}/{_seg('group', group)}/node/+/{leaf}"


def group_filter(site: str, group: str) -> str:
    """Subscription filter for everything in one group."""
    return f"{ROOT}/{_seg('site', site)}/{_seg('group', group)}/#"


def node_subtree(site: str, group: str, node_id: str) -> str:
    """Everything under one node (for ACLs: the node may write here and nowhere else)."""
    return f"{ROOT}/{_seg('site', site)}/{_seg('group', group)}/node/{_seg('node', node_id)}/#"


def parse(topic: str) -> Topic:
    """Parse a topic of the tree; raise :class:`TopicError` for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise TopicError(f"{topic!r} is not under {ROOT}/")
    for part in parts[2:]:
        if not valid_segment(part):
            raise TopicError(f"{topic!r} has an invalid segment {part!r}")
    site, rest = parts[2], parts[3:]
    match rest:
        case ["gw", gateway, "state"]:
            return Topic(Kind.GATEWAY_STATE, site, gateway=gateway)
        case ["gw", gateway, "bridge"]:
            return Topic(Kind.GATEWAY_BRIDGE, site, gateway=gateway)
        case [group, "fed", "report"]:
            return Topic(Kind.FED_REPORT, site, group)
        case [group, "unit", usite, ugroup, ("summary" | "state" | "stream" | "rebirth") as leaf]:
            return Topic(Kind("unit/" + leaf), site, group, unit_site=usite, unit_group=ugroup)
        case [group, "unit", usite, ugroup, "api", method, ("req" | "resp") as direction, client]:
            return Topic(
                Kind("unit/" + direction),
                site,
                group,
                method=method,
                client=client,
                unit_site=usite,
                unit_group=ugroup,
            )
        case [group, "coord", "state"]:
            return Topic(Kind.COORD_STATE, site, group)
        case [group, "coord", "roster"]:
            return Topic(Kind.COORD_ROSTER, site, group)
        case [group, "coord", "beacon"]:
            return Topic(Kind.COORD_BEACON, site, group)
        case [group, "coord", "ledger"]:
            return Topic(Kind.COORD_LEDGER, site, group)
        case [group, "coord", "rollup"]:
            return Topic(Kind.COORD_ROLLUP, site, group)
        case [group, "market", node_id]:
            return Topic(Kind.MARKET_LISTING, site, group, node=node_id)
        case [group, "summary"]:
            return Topic(Kind.SUMMARY, site, group)
        case [group, "node", node_id, ("cmd" | "bench") as sub, verb]:
            return Topic(Kind(sub), site, group, node=node_id, verb=verb)
        case [group, "node", node_id, leaf] if leaf in _NODE_LEAVES:
            return Topic(Kind(leaf), site, group, node=node_id)
        case [group, "api", method, ("req" | "resp") as direction, client]:
            return Topic(Kind(direction), site, group, method=method, client=client)
    raise TopicError(f"{topic!r} is not a topic of the prsm tree")
