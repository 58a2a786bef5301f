"""The coordinator's side of the API: what it answers itself, and the owner changes it relays to nodes.

Reads (status, verification, the group summary, health) come from the coordinator's own state: the
group's roster and the verifier, one owner each. Earnings, analytics and advice come from the economy
through :class:`EconomyReader`; until one is attached they answer ``not_available``, never a made-up
figure. A change to a node (``configure``, ``update``, ``pause``, ``auto-optimize``, ``verify``,
``benchmark``), and advice (``optimize``, which needs the node's own settings), is answered by the node, not
here: the caller's signed request is relayed as it was signed
(``cmd/owner``), the node checks its owner's signature and answers on its ``reply`` topic, and that
node-signed answer is forwarded to the caller. A relay that gets no answer in time is answered
``timeout``; the table of relays in flight is bounded (``busy`` beyond it).

The coordinator also serves the reads read-only over HTTP for operators (:func:`serve_readonly`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from prsm_edge import __version__
from prsm_edge.protocol.api import (
    OWNER_REQUEST_LIMIT,
    Access,
    ApiError,
    ErrorCode,
    Pending,
    Server,
    check_params,
    failure,
    method,
    to_json_safe,
)
from prsm_edge.protocol.group import Group, Member
from prsm_edge.protocol.messages import ApiRequest, ApiResponse, NodeCommand
from prsm_edge.protocol.verifier import Verifier

__all__ = [
    "CoordinatorApi",
    "CoordinatorHttp",
    "EconomyReader",
    "Forward",
    "Relay",
    "Respond",
    "serve_readonly",
]

log = logging.getLogger(__name__)

RELAY_TIMEOUT_MS: Final = 10_000
BENCHMARK_TIMEOUT_MS: Final = 60_000


class EconomyReader(Protocol):
    """What the economy answers about one member; ``params`` are the caller's (e.g. the node's own
    settings and detected capacity, which only the node knows, for advice)."""

    def earnings(self, member: Member, now_ms: int, params: Mapping[str, Any]) -> dict[str, Any]: ...

    def analytics(self, member: Member, now_ms: int, params: Mapping[str, Any]) -> dict[str, Any]: ...

    def advice(self, member: Member, now_ms: int, params: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Respond:
    """Sign ``response`` with the coordinator key and publish it to ``client``."""

    client: str
    response: ApiResponse


@dataclass(frozen=True, slots=True)
class Relay:
    """Send ``command`` (an owner's signed request) to ``node``."""

    node: str
    command: NodeCommand


@dataclass(frozen=True, slots=True)
class Forward:
    """Publish a node's signed answer, as it was signed, to ``client``."""

    client: str
    method: str
    envelope: bytes


ApiEffect = Respond | Relay | Forward


@dataclass(frozen=True, slots=True)
class _Waiting:
    client: str
    method: str
    txid: str


class CoordinatorApi:
    """The API methods as a coordinator answers them."""

    def __init__(
        self,
        group: Group,
        verifier: Verifier,
        trust_status: Callable[[Member], dict[str, Any]],
        *,
        max_pending: int = 1024,
    ) -> None:
        self.group = group
        self.verifier = verifier
        self.trust_status = trust_status  # level, trust, balance, stake, attestation: the service's view
        self.economy: EconomyReader | None = None
        self.pending: Pending[tuple[str, str], _Waiting] = Pending(max_pending)
        self._started = time.monotonic()
        self.http_url = ""  # set once the read-only HTTP server listens

    # ---- MQTT --------------------------------------------------------------------------------
    def call(self, client: str, request: ApiRequest, envelope: bytes, now_ms: int) -> list[ApiEffect]:
        """Serve one signed request from ``client`` (its signature and freshness were checked)."""
        try:
            spec = method(request.method)
            check_params(request.params)
            target = request.params.get("node", client) if spec.per_node else ""
            if spec.per_node and not isinstance(target, str):
                raise ApiError(ErrorCode.BAD_REQUEST, "params.node must be a node id")
            if spec.server is Server.AGENT and target != client:
                return self._relay(client, request, envelope, target, now_ms)
            if spec.access is Access.OWNER and request.method != "verify":
                raise ApiError(
                    ErrorCode.BAD_REQUEST,
                    "a node changes its own settings locally, not through its coordinator",
                )
            result = self.read(request.method, target or None, now_ms, request.params)
        except ApiError as exc:
            return [Respond(client, failure(request, exc))]
        return [
            Respond(client, ApiResponse(txid=request.txid, method=request.method, ok=True, result=result))
        ]

    def _relay(
        self, client: str, request: ApiRequest, envelope: bytes, target: str, now_ms: int
    ) -> list[ApiEffect]:
        member = self._member(target)
        if not member.online:
            raise ApiError(
                ErrorCode.NOT_AVAILABLE, f"node {target} is offline; its owner's change cannot reach it"
            )
        if not envelope or len(envelope) > OWNER_REQUEST_LIMIT:
            raise ApiError(
                ErrorCode.BAD_REQUEST,
                f"a change is one signed request of at most {OWNER_REQUEST_LIMIT} bytes",
            )
        wait = BENCHMARK_TIMEOUT_MS if request.method == "benchmark" else RELAY_TIMEOUT_MS
        self.pending.add(
            (target, request.txid), _Waiting(client, request.method, request.txid), now_ms + wait
        )
        args = {"request": envelope, "txid": request.txid, "method": request.method, "client": client}
        return [Relay(target, NodeCommand(verb="owner", node=target, args=args))]

    def reply(self, node: str, response: ApiResponse, envelope: bytes) -> list[ApiEffect]:
        """A node answered a relayed change: forward its signed answer to whoever asked."""
        waiting = self.pending.pop((node, response.txid))
        if waiting is None or waiting.method != response.method:
            return []
        return [Forward(waiting.client, waiting.method, envelope)]

    def tick(self, now_ms: int) -> list[ApiEffect]:
        """Answer ``timeout`` for relays whose node did not answer in time."""
        out: list[ApiEffect] = []
        for (node, _txid), waiting in self.pending.expired(now_ms):
            error = ApiError(ErrorCode.TIMEOUT, f"node {node} did not answer {waiting.method} in time")
            req = ApiRequest(txid=waiting.txid, method=waiting.method, requester=waiting.client)
            out.append(Respond(waiting.client, failure(req, error)))
        return out

    # ---- reads -------------------------------------------------------------------------------
    def read(
        self, name: str, node: str | None, now_ms: int, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Answer a read method; raise :class:`ApiError`."""
        params = params or {}
        match name:
            case "health":
                return self.health()
            case "network-summary":
                return self.network_summary()
            case "status":
                return self.status(self._member(node or ""), now_ms)
            case "verify":
                return self.verification(self._member(node or ""), now_ms)
            case "earnings" | "analytics" | "optimize":
                member = self._member(node or "")
                economy = self.economy
                if economy is None:
                    raise ApiError(
                        ErrorCode.NOT_AVAILABLE,
                        f"{name} is not available yet: this coordinator has no economy attached "
                        "(the earnings ledger is not part of this build)",
                    )
                if name == "earnings":
                    return economy.earnings(member, now_ms, params)
                if name == "analytics":
                    return economy.analytics(member, now_ms, params)
                return economy.advice(member, now_ms, params)
        spec = method(name)
        raise ApiError(ErrorCode.READ_ONLY, f"{spec.name} changes a node: ask the node, signed by its owner")

    def _member(self, node: str) -> Member:
        member = self.group.members.get(node)
        if member is None:
            raise ApiError(ErrorCode.UNKNOWN_NODE, f"{node or '(none)'} is not a member of this group")
        return member

    def health(self) -> dict[str, Any]:
        """Whether the coordinator runs, and a few counters."""
        c = self.group.config
        return {
            "ok": True,
            "role": "coordinator",
            "node": c.coordinator,
            "site": c.site,
            "group": c.group,
            "epoch": c.epoch,
            "software": f"prsm-edge {__version__}",
            "members": len(self.group.members),
            "online": self.group.online_count,
            "rejected": {str(k): v for k, v in self.group.rejected.items()},
            "relays_waiting": len(self.pending),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    def network_summary(self) -> dict[str, Any]:
        """The group's summary (what its gateway carries upward)."""
        summary: dict[str, Any] = to_json_safe(self.group.summary())
        for key in ("t", "v", "seq", "ts"):
            summary.pop(key, None)
        return summary

    def status(self, member: Member, now_ms: int) -> dict[str, Any]:
        """One member as the coordinator sees it: offer, load, and its trust, balance and stake."""
        return {
            "node": member.node,
            "device_class": member.device_class,
            "online": member.online,
            "last_seen_ms": member.last_seen_ms,
            "resources": to_json_safe(member.resources),
            "offering": member.offering,
            "throttle": member.throttle,
            "cpu_util": member.cpu_util,
            "mem_util": member.mem_util,
            "temperature_c": member.temperature_c,
            "power_w": member.power_w,
            **self.trust_status(member),
        }

    def verification(self, member: Member, now_ms: int) -> dict[str, Any]:
        """A member's verification state; checks run in rounds, so this reports, it does not schedule."""
        return {
            "node": member.node,
            **self.trust_status(member),
            "round_s": self.verifier.config.round_ms / 1000,
            "note": "checks run in rounds; the public beacon picks nodes, unproven ones more often",
        }


class CoordinatorHttp:
    """The coordinator's read-only :class:`~prsm_edge.io.http_api.HttpBackend` for operators."""

    role = "coordinator"

    def __init__(self, api: CoordinatorApi, clock: Callable[[], int]) -> None:
        self.api = api
        self.clock = clock

    async def read(self, name: str, user_id: str | None) -> dict[str, Any]:
        return self.api.read(name, user_id, self.clock())

    async def change(self, name: str, user_id: str | None, envelope: bytes) -> tuple[ApiResponse, bytes]:
        raise ApiError(
            ErrorCode.READ_ONLY, f"the coordinator's HTTP API is read-only; send {name} to the node"
        )

    def pair(self, envelope: bytes) -> dict[str, Any]:
        raise ApiError(ErrorCode.READ_ONLY, "pair an owner on the node itself")


def readonly_server(
    api: CoordinatorApi, host: str, port: int, clock: Callable[[], int]
) -> Coroutine[Any, Any, None] | None:
    """The read-only HTTP server's coroutine, or None (logged) where aiohttp (the ``api`` extra) is absent."""
    try:
        import aiohttp  # noqa: F401  (only to know whether the server can run)
    except ImportError:
        log.warning("the coordinator's HTTP API is off: it needs aiohttp (pip install 'prsm-edge[api]')")
        return None
    return serve_readonly(api, host, port, clock)


async def serve_readonly(api: CoordinatorApi, host: str, port: int, clock: Callable[[], int]) -> None:
    """Serve the reads over HTTP on ``host:port`` until cancelled (needs the ``api`` extra, aiohttp)."""
    from prsm_edge.io.http_api import LOOPBACK_HOSTS, build_app, serve

    allowed = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None

    def ready(bound: int) -> None:
        api.http_url = f"http://{host}:{bound}"

    app = build_app(CoordinatorHttp(api, clock), writable=False, allowed_hosts=allowed)
    try:
        await serve(app, host, port, ready)
    except OSError as exc:  # the port is taken: the coordinator goes on without its HTTP API
        log.error("the coordinator's HTTP API cannot listen on %s:%d (%s)", host, port, exc)
