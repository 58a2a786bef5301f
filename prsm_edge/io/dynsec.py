"""Drive Mosquitto's dynamic-security plugin over MQTT, as its admin client.

Commands go as JSON to ``$CONTROL/dynamic-security/v1``; the plugin answers each batch on
``$CONTROL/dynamic-security/v1/response``. Every method here waits for its answer and raises
:class:`~prsm_edge.errors.BrokerError` on an error reply or a timeout.

Mosquitto 2.0.x (Debian 12 ships 2.0.11) does **not** substitute ``%u`` or ``%c`` in dynamic-security
ACLs (checked: an ACL ``a/%u/#`` matches only the literal topic ``a/%u/...``; the substitution arrived
in 2.1). So each node gets a role of its own, ``prsm-node-{node_id}``, created by :meth:`DynSec.add_node`,
next to the shared read-only ``prsm-node`` role; and anonymous joiners, who have no user name and whose
client id cannot be named in a 2.0 ACL, may publish to any ``api/join/req/+`` and read any
``api/join/resp/+``: join responses carry secrets sealed to the joiner's key, and the coordinator checks
that a request's signer owns its topic.

Every command is idempotent for a coordinator restart: a role, group or client that exists already is
brought to the wanted state (``modify*``) instead of failing. A node's role is made at admission, so a
coordinator start also brings the roles of nodes admitted by an older release to the current rules
(:meth:`DynSec.upgrade_node_roles`, run by :meth:`DynSec.setup_group`): set to exactly those rules, never
more, and only for roles that already belong to this group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Sequence
from contextlib import AsyncExitStack
from enum import Enum
from types import TracebackType
from typing import Any, Final, Self

import aiomqtt

from prsm_edge.errors import BrokerError
from prsm_edge.io import tpm_registration
from prsm_edge.io.broker import RunningBroker
from prsm_edge.protocol import api, topics
from prsm_edge.protocol.homeassistant import node_topics

__all__ = [
    "CONTROL_TOPIC",
    "GROUP_JOINER",
    "NODE_API_METHODS",
    "NODE_LEAVES",
    "REGION_METHODS",
    "RESPONSE_TOPIC",
    "ROLE_COORDINATOR",
    "ROLE_HOMEASSISTANT",
    "ROLE_JOINER",
    "ROLE_NODE",
    "ROLE_REGION",
    "ROLE_REGION_CLIENT",
    "ROLE_REGION_VIEWER",
    "ROLE_VIEWER",
    "DynSec",
    "RoleUpgrade",
    "gateway_role",
    "gateway_role_acls",
    "gateway_username",
    "group_roles",
    "node_role",
    "node_role_acls",
    "region_roles",
    "unit_role",
    "unit_role_acls",
    "unit_username",
    "upgrade_role",
]

log = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = "$CONTROL/dynamic-security/v1/response"
ROLE_NODE: Final = "prsm-node"
ROLE_COORDINATOR: Final = "prsm-coordinator"
ROLE_JOINER: Final = "prsm-joiner"
ROLE_VIEWER: Final = "prsm-viewer"
ROLE_HOMEASSISTANT: Final = "prsm-homeassistant"
ROLE_REGION: Final = "prsm-region"
ROLE_REGION_CLIENT: Final = "prsm-region-client"
ROLE_REGION_VIEWER: Final = "prsm-region-viewer"
GROUP_JOINER: Final = "prsm-joiner"
# API methods a region sends down a group's bridge (prsm_edge.gateway.bridge.BRIDGED_METHODS).
REGION_METHODS: Final = ("region-task", "region-drill")
_NODE_ROLE_PRIORITY: Final = 10  # the node's own role is checked before the shared one
# The topics a member publishes on: its own leaves (and the network benchmark's echo) ...
NODE_LEAVES: Final = ("state", "birth", "claim", "proof", "telemetry", "bw", "bench/echo")
# ... and the coordinator API methods it calls. A new method must be added here, or members' requests
# for it are dropped by the broker.
# (lease, earnings and ledger are the economy branch's member methods, listed ahead of its merge.)
# Methods a member calls on its coordinator: its own protocol calls, and every API method (the agent asks
# the coordinator for reads, and for the market picture behind optimize and verify), from the API's table.
NODE_API_METHODS: Final = tuple(
    dict.fromkeys(
        (
            "join",
            "stake",
            "lease",
            "ledger",
            tpm_registration.REGISTER,
            tpm_registration.ACTIVATE,
            *api.METHODS,
        )
    )
)

Acl = dict[str, Any]


def _allow(acltype: str, topic: str, priority: int = 0) -> Acl:
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": True}


def _deny(acltype: str, topic: str, priority: int = 0) -> Acl:
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": False}


def _check(name: str, value: str) -> str:
    if not topics.valid_segment(value):
        raise BrokerError(f"{name} {value!r} must be 1–64 characters of a-z, 0-9, '_' or '-'")
    return value


def _base(site: str, group: str) -> str:
    return f"{topics.ROOT}/{_check('site', site)}/{_check('group', group)}"


def node_role(node_id: str) -> str:
    """The name of the role that holds one node's own ACLs."""
    return f"{ROLE_NODE}-{_check('node id', node_id)}"


def node_role_acls(site: str, group: str, node_id: str) -> list[Acl]:
    """What only this node may do: publish on its exact topics and API requests, read its commands.

    Exact topics, no wildcard: a member that could publish retained messages at any depth under its
    subtree (or under made-up API methods) could grow the broker's memory and disk without bound.
    """
    base, node = _base(site, group), _check("node id", node_id)
    own = [f"{base}/node/{node}/{leaf}" for leaf in NODE_LEAVES]
    api = [f"{base}/api/{method}/req/{node}" for method in NODE_API_METHODS]
    # Home Assistant controls (used only when the node's owner turned them on): the node answers and
    # shows the controls' values, and reads the commands Home Assistant sends it.
    ha = node_topics(site, group, node)
    return [
        *(_allow("publishClientSend", topic) for topic in own + api + [ha.controls, ha.ack]),
        _allow("subscribePattern", ha.commands),
        _allow("subscribePattern", f"{base}/node/{node}/cmd/#"),
        _allow("subscribePattern", f"{base}/node/{node}/bench/#"),  # the network benchmark's echo
        _allow("subscribePattern", f"{base}/api/+/resp/{node}"),
    ]


def group_roles(site: str, group: str) -> dict[str, list[Acl]]:
    """The shared roles of a group, by name, with their ACLs."""
    base = _base(site, group)
    gateways = f"{topics.ROOT}/{site}/gw/#"
    # Home Assistant discovery (off unless the coordinator turns it on): its configs, and the plain-JSON
    # states outside the signed tree (prsm_edge.coordinator.homeassistant).
    ha_states = f"prsm-ha/{site}/{group}/#"
    return {
        ROLE_NODE: [
            _allow("subscribePattern", f"{base}/coord/#"),
            _allow("subscribePattern", f"{base}/summary"),
            _allow("subscribePattern", f"{base}/node/+/birth"),
            _allow("subscribePattern", f"{base}/node/+/proof"),
        ],
        ROLE_COORDINATOR: [
            _allow("publishClientSend", f"{base}/#"),
            _allow("subscribePattern", f"{base}/#"),
            _allow("publishClientSend", gateways),
            _allow("subscribePattern", gateways),
            _allow("publishClientSend", "homeassistant/device/#"),
            # its plain-JSON states, never the nodes' command topics (only Home Assistant sends those)
            _allow("publishClientSend", f"prsm-ha/{site}/{group}/+/state"),
            _allow("publishClientSend", f"prsm-ha/{site}/{group}/+/availability"),
            _allow("subscribePattern", "homeassistant/status"),
        ],
        ROLE_JOINER: [
            _allow("publishClientSend", f"{base}/api/join/req/+"),
            _allow("subscribePattern", f"{base}/api/join/resp/+"),
            _allow("subscribePattern", f"{base}/coord/state"),
            # the signed roster is public: a rival coordinator checks a group's claims with it
            _allow("subscribePattern", f"{base}/coord/roster"),
        ],
        ROLE_VIEWER: [
            _allow("subscribePattern", f"{base}/#"),
            # Bandwidth-check chunks (megabytes a check) are for the coordinator only: not delivered.
            _deny("publishClientReceive", f"{base}/node/+/bw", priority=1),
            _allow("subscribePattern", gateways),
            _allow("subscribePattern", "$SYS/broker/#"),
            _allow("subscribePattern", "homeassistant/#"),
            _allow("subscribePattern", ha_states),
        ],
        # Home Assistant's own login: read the discovery and states, announce itself (its birth/Will), and
        # command nodes' controls (each node applies a command only if its owner turned controls on).
        ROLE_HOMEASSISTANT: [
            _allow("subscribePattern", "homeassistant/#"),
            _allow("subscribePattern", ha_states),
            _allow("publishClientSend", "homeassistant/status"),
            _allow("publishClientSend", f"prsm-ha/{site}/{group}/+/set/+"),
        ],
    }


def gateway_username(gateway_id: str) -> str:
    """The group-broker login of a gateway (its process, and its bridge's local side)."""
    return f"gw-{_check('gateway id', gateway_id)}"


def gateway_role(gateway_id: str) -> str:
    """The name of the role that holds one gateway's ACLs on its group's broker."""
    return f"prsm-gateway-{_check('gateway id', gateway_id)}"


def gateway_role_acls(site: str, group: str, gateway_id: str) -> list[Acl]:
    """What a group's gateway may do on the group's broker, and nothing more.

    Read: the group's summary, its coordinator's state, the reports handed to the gateway, its bridge's
    notifications and the answers to requests from the region. Write: its own link state and bridge
    notification, and the requests the region sends down. The same login is the bridge's
    ``local_username`` (Mosquitto 2.0.11 checks a bridge's local publications against the dynamic-security
    roles of that name, without a password), so requests arriving down the bridge pass and nothing else.
    It may not publish on member or coordinator topics, nor read members' topics.
    """
    base, gw = _base(site, group), _check("gateway id", gateway_id)
    own = f"{topics.ROOT}/{site}/gw/{gw}"
    return [
        _allow("subscribePattern", f"{base}/summary"),
        _allow("subscribePattern", f"{base}/coord/state"),
        _allow("subscribePattern", f"{base}/fed/report"),
        _allow("subscribePattern", f"{own}/bridge"),
        _allow("publishClientSend", f"{own}/state"),
        _allow("publishClientSend", f"{own}/bridge"),
        *(_allow("publishClientSend", f"{base}/api/{method}/req/+") for method in REGION_METHODS),
        *(_allow("subscribePattern", f"{base}/api/{method}/resp/+") for method in REGION_METHODS),
    ]


def unit_username(site: str, group: str) -> str:
    """The region-broker login of one group (its gateway and its bridge share it)."""
    return f"unit-{_check('site', site)}-{_check('group', group)}"


def unit_role(site: str, group: str) -> str:
    """The name of the role that holds one group's ACLs on its region's broker."""
    return f"prsm-unit-{_check('site', site)}-{_check('group', group)}"


def unit_role_acls(region_site: str, region: str, site: str, group: str) -> list[Acl]:
    """What one group's gateway and bridge may do on the region's broker: only their unit's subtree.

    Write: the unit's summary and stream, answers to the region's requests, and gateway link states and
    bridge notifications under the group's site (signed by the gateway's key, which the region checks).
    Read: the region coordinator's state, the unit's rebirth requests and the requests addressed to it.
    Another group's summary, stream or requests are out of reach.
    """
    tree = _base(region_site, region)
    unit = f"{tree}/unit/{_check('site', site)}/{_check('group', group)}"
    gateways = f"{topics.ROOT}/{site}/gw/+"
    return [
        _allow("publishClientSend", f"{unit}/summary"),
        _allow("publishClientSend", f"{unit}/stream"),
        _allow("publishClientSend", f"{gateways}/state"),
        _allow("publishClientSend", f"{gateways}/bridge"),
        *(_allow("publishClientSend", f"{unit}/api/{method}/resp/+") for method in REGION_METHODS),
        _allow("subscribePattern", f"{tree}/coord/state"),
        _allow("subscribePattern", f"{unit}/rebirth"),
        *(_allow("subscribePattern", f"{unit}/api/{method}/req/+") for method in REGION_METHODS),
    ]


def region_roles(region_site: str, region: str) -> dict[str, list[Acl]]:
    """The shared roles on a region's broker: its coordinator, and clients that submit tasks."""
    tree = _base(region_site, region)
    return {
        ROLE_REGION: [
            _allow("publishClientSend", f"{tree}/#"),
            _allow("subscribePattern", f"{tree}/#"),
            _allow("subscribePattern", f"{topics.ROOT}/+/gw/+/state"),
        ],
        # Task submitters: a request is signed by its requester and the region checks that the signer
        # owns the topic's client segment (as for joiners), so one shared role is enough.
        ROLE_REGION_CLIENT: [
            _allow("publishClientSend", f"{tree}/api/submit/req/+"),
            _allow("subscribePattern", f"{tree}/api/submit/resp/+"),
            _allow("subscribePattern", f"{tree}/coord/state"),
            _allow("subscribePattern", f"{tree}/summary"),
        ],
        # The operator dashboard's region view (and `prsm-edge status` on a region): read the region's
        # tree and every site's gateway states; publish nothing.
        ROLE_REGION_VIEWER: [
            _allow("subscribePattern", f"{tree}/#"),
            _allow("subscribePattern", f"{topics.ROOT}/+/gw/+/state"),
            _allow("subscribePattern", f"{topics.ROOT}/{region_site}/gw/+/state"),
            _allow("subscribePattern", "$SYS/broker/#"),
        ],
    }


class RoleUpgrade(Enum):
    """What a coordinator start did with one existing role."""

    CURRENT = "current"  # already exactly the current rules
    UPGRADED = "upgraded"  # set to exactly the current rules
    OTHER = "other"  # not a node role of this group (another group's, or none of ours): left alone


def _acl_key(acl: Any) -> tuple[str, str, int, bool] | None:
    if not isinstance(acl, dict):
        return None
    try:
        return (str(acl["acltype"]), str(acl["topic"]), int(acl.get("priority", 0)), bool(acl["allow"]))
    except (KeyError, TypeError, ValueError):
        return None


def upgrade_role(site: str, group: str, rolename: str, acls: object) -> tuple[RoleUpgrade, list[Acl]]:
    """Decide what to do with an existing role: its verdict and, when UPGRADED, the ACLs to set.

    Only a role named ``prsm-node-{node}`` that holds at least one ACL in this group's trees is ours.
    Ours is set to exactly :func:`node_role_acls` for its node: the rules added since it was made appear,
    and anything else it held (an older release's wider grant, a hand-made addition) is removed. A role
    whose ACLs all lie elsewhere (another group's node on a shared broker) or that holds none is left as
    it is: an upgrade never grants a role rights in this group that it did not have a share of.
    """
    prefix = f"{ROLE_NODE}-"
    node = rolename[len(prefix) :] if rolename.startswith(prefix) else ""
    if not topics.valid_segment(node) or not isinstance(acls, list):
        return RoleUpgrade.OTHER, []
    trees = (f"{_base(site, group)}/", f"prsm-ha/{site}/{group}/")
    held = [k for a in acls if (k := _acl_key(a)) is not None]
    if not any(topic.startswith(trees) for _, topic, _, _ in held):
        return RoleUpgrade.OTHER, []
    want = node_role_acls(site, group, node)
    wanted = [k for a in want if (k := _acl_key(a)) is not None]
    if len(held) == len(acls) and sorted(held) == sorted(wanted):
        return RoleUpgrade.CURRENT, []
    return RoleUpgrade.UPGRADED, want


def _benign(command: str, error: str) -> bool:
    """Errors that only say the wanted state holds already (a restart re-running its setup)."""
    error = error.lower()
    if command.startswith("create"):
        return "already exists" in error
    if command.startswith("delete"):
        return "not found" in error
    return False


class DynSec:
    """An admin connection to the dynamic-security plugin; use as ``async with DynSec(...) as ds``."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._username = username
        self._password = password
        self._client: aiomqtt.Client | None = None
        self._stack = AsyncExitStack()
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()
        self._group: tuple[str, str] | None = None
        self._open = False

    @classmethod
    def for_broker(cls, broker: RunningBroker, *, timeout: float = 5.0) -> DynSec:
        """The admin connection to a broker started by :func:`~prsm_edge.io.broker.start_broker`."""
        if not broker.acl_enforced or broker.admin_username is None or broker.admin_password is None:
            raise BrokerError(
                f"the {broker.kind} broker at {broker.url} has no dynamic security; "
                "start Mosquitto with acl=True to issue per-node credentials"
            )
        return cls(
            broker.connect_host, broker.port, broker.admin_username, broker.admin_password, timeout=timeout
        )

    async def __aenter__(self) -> Self:
        self._open = True
        try:
            await self._connect()
        except BrokerError:
            self._open = False
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        await self._disconnect()
        self._fail_pending(BrokerError("the dynamic-security connection was closed"))

    async def _connect(self) -> None:
        await self._disconnect()
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=f"prsm-dynsec-{secrets.token_hex(6)}",
            timeout=self.timeout,
        )
        try:
            await self._stack.enter_async_context(client)
            await client.subscribe(RESPONSE_TOPIC, qos=1)
        except aiomqtt.MqttError as exc:
            await self._disconnect()
            raise BrokerError(
                f"cannot connect to the dynamic-security plugin at {self.host}:{self.port}: {exc}"
            ) from exc
        self._client = client
        self._reader = asyncio.create_task(self._read(client), name="dynsec-reader")

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._client = None
        stack, self._stack = self._stack, AsyncExitStack()
        with contextlib.suppress(aiomqtt.MqttError):
            await stack.aclose()

    def _fail_pending(self, error: BrokerError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self._resolve(message.payload)
        except aiomqtt.MqttError as exc:
            log.warning("the dynamic-security connection dropped (the next command reconnects): %s", exc)
            self._client = None
            self._fail_pending(BrokerError(f"the dynamic-security connection dropped: {exc}"))

    def _resolve(self, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray):
            return
        try:
            responses = json.loads(payload)["responses"]
            batch = str(responses[0]["correlationData"]).split(":", 1)[0]
        except (ValueError, KeyError, IndexError, TypeError):
            log.warning("ignoring a malformed dynamic-security response: %.200r", payload)
            return
        future = self._pending.pop(batch, None)
        if future is not None and not future.done():
            future.set_result([r for r in responses if isinstance(r, dict)])

    async def _send(self, payload: str) -> None:
        """Publish to the control topic, reconnecting once if the broker restarted under us."""
        for attempt in (1, 2):
            if self._client is None:
                await self._connect()
            assert self._client is not None
            try:
                await self._client.publish(CONTROL_TOPIC, payload, qos=1)
                return
            except aiomqtt.MqttError as exc:
                if attempt == 2:
                    raise BrokerError(f"could not send a dynamic-security command: {exc}") from exc
                log.info("the dynamic-security connection failed (%s); reconnecting", exc)
                self._client = None

    async def command(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        """Send ``commands`` as one batch; return their responses, raising on any error but benign ones."""
        if not self._open:
            raise BrokerError("DynSec is not connected: use it as 'async with DynSec(...) as ds'")
        batch = secrets.token_hex(8)
        tagged = [{**c, "correlationData": f"{batch}:{i}"} for i, c in enumerate(commands)]
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        async with self._lock:
            self._pending[batch] = future
            try:
                await self._send(json.dumps({"commands": tagged}))
                async with asyncio.timeout(self.timeout):
                    responses = await future
            except TimeoutError:
                names = ", ".join(c["command"] for c in commands)
                raise BrokerError(
                    f"the dynamic-security plugin did not answer ({names}) within {self.timeout:.0f} s; "
                    "is the plugin loaded and are these admin credentials?"
                ) from None
            finally:
                self._pending.pop(batch, None)
        by_tag = {str(r.get("correlationData")): r for r in responses}
        for tag, sent in zip((c["correlationData"] for c in tagged), commands, strict=True):
            reply = by_tag.get(tag)
            if reply is None:
                raise BrokerError(f"the dynamic-security plugin did not answer {sent['command']}")
            error = reply.get("error")
            if error is not None and not _benign(sent["command"], str(error)):
                subject = sent.get("rolename") or sent.get("username") or sent.get("groupname") or ""
                raise BrokerError(f"dynamic security refused {sent['command']} {subject}: {error}")
        return [by_tag[c["correlationData"]] for c in tagged]

    @staticmethod
    def _ensure_role(name: str, acls: Sequence[Acl]) -> list[dict[str, Any]]:
        return [
            {"command": "createRole", "rolename": name, "acls": list(acls)},
            {"command": "modifyRole", "rolename": name, "acls": list(acls)},
        ]

    @staticmethod
    def _ensure_client(
        username: str, password: str, roles: Sequence[tuple[str, int]]
    ) -> list[dict[str, Any]]:
        role_list = [{"rolename": r, "priority": p} for r, p in roles]
        return [
            {"command": "createClient", "username": username, "password": password, "roles": role_list},
            {"command": "modifyClient", "username": username, "password": password, "roles": role_list},
            {"command": "enableClient", "username": username},
        ]

    async def setup_group(self, site: str, group: str) -> None:
        """Create (or reset) the group's roles, the anonymous joiner group, and make it the anonymous one."""
        commands: list[dict[str, Any]] = []
        for name, acls in group_roles(site, group).items():
            commands += self._ensure_role(name, acls)
        joiner_roles = [{"rolename": ROLE_JOINER, "priority": 0}]
        commands += [
            {"command": "createGroup", "groupname": GROUP_JOINER, "roles": joiner_roles},
            {"command": "modifyGroup", "groupname": GROUP_JOINER, "roles": joiner_roles},
            {"command": "setAnonymousGroup", "groupname": GROUP_JOINER},
        ]
        await self.command(*commands)
        self._group = (site, group)
        log.info("dynamic security set up for %s/%s", site, group)
        await self.upgrade_node_roles()

    async def _roles(self, page: int = 50, limit: int = 20_000) -> list[dict[str, Any]]:
        """Every role with its ACLs, read a page at a time (at most ``limit``)."""
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            (reply,) = await self.command(
                {"command": "listRoles", "verbose": True, "count": page, "offset": len(out)}
            )
            data = reply.get("data")
            roles = data.get("roles") if isinstance(data, dict) else None
            if not isinstance(roles, list) or not roles:
                break
            out += [r for r in roles if isinstance(r, dict)]
            if len(roles) < page:
                break
        return out

    async def upgrade_node_roles(self) -> dict[RoleUpgrade, int]:
        """Bring every node role of this group to the current rules (see :func:`upgrade_role`).

        Idempotent: a second run finds every role current. Returns how many roles got each verdict.
        """
        site, group = self._site_group()
        counts = dict.fromkeys(RoleUpgrade, 0)
        changes: list[dict[str, Any]] = []
        for role in await self._roles():
            name = str(role.get("rolename", ""))
            if not name.startswith(f"{ROLE_NODE}-"):
                continue
            verdict, acls = upgrade_role(site, group, name, role.get("acls"))
            counts[verdict] += 1
            if verdict is RoleUpgrade.UPGRADED:
                changes.append({"command": "modifyRole", "rolename": name, "acls": acls})
            elif verdict is RoleUpgrade.OTHER:
                log.warning("role %s holds no rules of %s/%s: left as it is", name, site, group)
        for start in range(0, len(changes), 50):
            await self.command(*changes[start : start + 50])
        log.info(
            "node roles of %s/%s: %d brought up to the current rules, %d already current, %d left alone",
            site,
            group,
            counts[RoleUpgrade.UPGRADED],
            counts[RoleUpgrade.CURRENT],
            counts[RoleUpgrade.OTHER],
        )
        return counts

    def _site_group(self) -> tuple[str, str]:
        if self._group is None:
            raise BrokerError("call DynSec.setup_group(site, group) before adding nodes")
        return self._group

    async def add_node(self, node_id: str, password: str) -> None:
        """Let ``node_id`` connect with ``password`` and act only as that node (replaces an old password)."""
        site, group = self._site_group()
        role = node_role(node_id)
        await self.command(
            *self._ensure_role(role, node_role_acls(site, group, node_id)),
            *self._ensure_client(node_id, password, [(role, _NODE_ROLE_PRIORITY), (ROLE_NODE, 0)]),
        )
        log.info("broker credentials issued to node %s", node_id)

    async def remove_node(self, node_id: str) -> None:
        """Delete the node's client (which disconnects it) and its role; absent ones are fine."""
        await self.command(
            {"command": "deleteClient", "username": _check("node id", node_id)},
            {"command": "deleteRole", "rolename": node_role(node_id)},
        )
        log.info("broker credentials of node %s removed", node_id)

    async def add_gateway(self, site: str, group: str, gateway_id: str, password: str) -> str:
        """Create (or reset) gateway ``gateway_id``'s login and role on this group broker; its username."""
        username, role = gateway_username(gateway_id), gateway_role(gateway_id)
        await self.command(
            *self._ensure_role(role, gateway_role_acls(site, group, gateway_id)),
            *self._ensure_client(username, password, [(role, 0)]),
        )
        log.info("broker login %s issued to the gateway of %s/%s", username, site, group)
        return username

    async def setup_region(self, region_site: str, region: str) -> None:
        """Create (or reset) a region broker's shared roles; anonymous clients get no rights there."""
        commands: list[dict[str, Any]] = []
        for name, acls in region_roles(region_site, region).items():
            commands += self._ensure_role(name, acls)
        await self.command(*commands)
        log.info("dynamic security set up for the region %s/%s", region_site, region)

    async def add_unit(self, region_site: str, region: str, site: str, group: str, password: str) -> str:
        """Create (or reset) the region-broker login of group ``site/group``; its username."""
        username, role = unit_username(site, group), unit_role(site, group)
        await self.command(
            *self._ensure_role(role, unit_role_acls(region_site, region, site, group)),
            *self._ensure_client(username, password, [(role, 0)]),
        )
        log.info("region broker login %s issued to group %s/%s", username, site, group)
        return username

    async def remove_login(self, username: str, role: str | None = None) -> bool:
        """Delete login ``username`` (the broker disconnects it) and its own ``role``; False if absent.

        Only a role that belongs to this one login goes (a gateway's, a group's): shared roles stay.
        """
        try:
            await self.command({"command": "getClient", "username": username})
        except BrokerError as exc:
            if "not found" in str(exc).lower():
                return False
            raise
        commands: list[dict[str, Any]] = [{"command": "deleteClient", "username": username}]
        if role is not None:
            commands.append({"command": "deleteRole", "rolename": role})
        await self.command(*commands)
        log.info("broker login %s removed", username)
        return True

    async def add_client(self, username: str, password: str, role: str) -> None:
        """Create (or reset) a client with one role, e.g. the coordinator's or a dashboard viewer's."""
        await self.command(*self._ensure_client(username, password, [(role, 0)]))
        log.info("broker client %s has role %s", username, role)
