"""The owner and operator API: its methods, who may call them, and how an owner's change is checked.

Theory of operation. Every API call is an :class:`~prsm_edge.protocol.messages.ApiRequest` sealed as a
COSE_Sign1 by the caller's Ed25519 key, whatever carries it (MQTT ``api/{method}/req/{client}`` or the
agent's local HTTP server). Reading is open to any caller that can reach the server; *changing* a node
(the methods whose :attr:`MethodSpec.access` is :attr:`Access.OWNER`) needs a request signed by an
**owner key** paired with that node. The owner key is not the node key: it lives with a person (the CLI's
``owner.key``, or a non-extractable WebCrypto key in the owner's browser) and is bound to the node by
pairing on the node's own machine (``prsm-edge owner pair``).

The agent accepts an owner's request only when, in this order (each failure has a code below):

1. the bytes are at most :data:`OWNER_REQUEST_LIMIT` and a COSE_Sign1 that verifies (``unauthorized``);
2. the body is an ``ApiRequest`` whose ``requester`` is the signer's id and whose ``method`` is the one
   called (``bad_request``);
3. ``params.node`` names this node (``unknown_node``);
4. the signer's key is paired with this node (``not_owner``);
5. its ``ts`` is within ``window_ms`` of the agent's clock (``stale``) and its ``seq`` is above the last
   one accepted from that key, a number the agent keeps on disk across restarts (``replay``).

Then it applies the change and answers with an ``ApiResponse`` signed by the node key (the owner's
acknowledgement), naming the same ``txid``. Nothing here touches a socket, a clock or a file.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import msgspec

from prsm_edge.errors import PrsmEdgeError, RejectedMessage
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.messages import ApiRequest, ApiResponse

__all__ = [
    "API_PREFIX",
    "CONTRIBUTION_SETTINGS",
    "METHODS",
    "OWNER_REQUEST_LIMIT",
    "Access",
    "ApiError",
    "ErrorCode",
    "MethodSpec",
    "OwnerCall",
    "Pending",
    "check_owner_request",
    "failure",
    "method",
    "seal_request",
]

API_PREFIX: Final = "/api/v1/resources"
OWNER_REQUEST_LIMIT: Final = 16 * 1024
PAIR_METHOD: Final = "pair"

# The owner's contribution settings that the API may change (the seed's ResourceContributionSettings
# plus the agent's guardrails: battery, GPU temperature, weekly schedule; and the electricity price that
# earnings reports subtract). Where the node connects (site,
# group, broker) is changed on the machine only.
CONTRIBUTION_SETTINGS: Final[tuple[str, ...]] = (
    "cpu_allocation_percentage",
    "gpu_allocation_percentage",
    "storage_allocation_percentage",
    "memory_allocation_percentage",
    "bandwidth_allocation_percentage",
    "max_cpu_temperature",
    "max_power_consumption",
    "priority_level",
    "minimum_hourly_rate",
    "automatic_scaling",
    "market_participation",
    "uptime_commitment",
    "security_level",
    "min_battery_percent",
    "offer_on_battery",
    "max_gpu_temperature",
    "optimize_bounds",
    "schedule",
    "guardrail_hold_s",
    "electricity_price_per_kwh",
)


class ErrorCode(enum.StrEnum):
    """Why a call failed; each maps to one HTTP status."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_OWNER = "not_owner"
    READ_ONLY = "read_only"
    UNKNOWN_NODE = "unknown_node"
    UNKNOWN_METHOD = "unknown_method"
    REPLAY = "replay"
    STALE = "stale"
    BUSY = "busy"
    NOT_AVAILABLE = "not_available"
    TIMEOUT = "timeout"

    @property
    def http_status(self) -> int:
        """The HTTP status that carries this failure."""
        return _HTTP_STATUS[self]


_HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_OWNER: 403,
    ErrorCode.READ_ONLY: 405,
    ErrorCode.UNKNOWN_NODE: 404,
    ErrorCode.UNKNOWN_METHOD: 404,
    ErrorCode.REPLAY: 409,
    ErrorCode.STALE: 409,
    ErrorCode.BUSY: 429,
    ErrorCode.NOT_AVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


class ApiError(PrsmEdgeError):
    """A call that cannot be served; ``code`` says which rule refused it, the text what to do."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


def failure(request: ApiRequest, error: ApiError) -> ApiResponse:
    """The response that reports ``error`` for ``request``."""
    return ApiResponse(
        txid=request.txid, method=request.method, ok=False, error=error.message, code=error.code.value
    )


class Access(enum.StrEnum):
    """Who may call a method."""

    READ = "read"  # anyone who can reach the server
    OWNER = "owner"  # a request signed by a key paired with the node


class Server(enum.StrEnum):
    """Where a method's answer comes from."""

    AGENT = "agent"  # the node itself (its settings, its benchmarks): a coordinator relays these
    COORDINATOR = "coordinator"  # the group's coordinator (trust, ledger, market)
    ANY = "any"  # whoever is asked answers for itself


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One API method: its MQTT name, its REST route, who may call it and who answers."""

    name: str
    http: str
    path: str
    access: Access
    server: Server
    summary: str

    @property
    def per_node(self) -> bool:
        """Whether the method concerns one node (``{user_id}`` in its route, ``node`` in its params)."""
        return self.name not in ("network-summary", "health")


METHODS: Final[dict[str, MethodSpec]] = {
    m.name: m
    for m in (
        MethodSpec(
            "configure",
            "POST",
            f"{API_PREFIX}/configure",
            Access.OWNER,
            Server.AGENT,
            "Set the node's contribution settings (unlisted ones take their defaults)",
        ),
        MethodSpec(
            "status",
            "GET",
            f"{API_PREFIX}/status/{{user_id}}",
            Access.READ,
            Server.ANY,
            "The node's offer, limits, trust level and balance",
        ),
        MethodSpec(
            "update",
            "PUT",
            f"{API_PREFIX}/update/{{user_id}}",
            Access.OWNER,
            Server.AGENT,
            "Change some contribution settings",
        ),
        MethodSpec(
            "pause",
            "POST",
            f"{API_PREFIX}/pause/{{user_id}}",
            Access.OWNER,
            Server.AGENT,
            "Pause (or resume) contributing",
        ),
        MethodSpec(
            "optimize",
            "GET",
            f"{API_PREFIX}/optimize/{{user_id}}",
            Access.READ,
            Server.AGENT,
            "Advice: setting changes that would earn more, from the group's demand and prices and the "
            "node's own settings and detected capacity",
        ),
        MethodSpec(
            "auto-optimize",
            "POST",
            f"{API_PREFIX}/auto-optimize/{{user_id}}",
            Access.OWNER,
            Server.AGENT,
            "Apply the advice inside the owner's bounds",
        ),
        MethodSpec(
            "analytics",
            "GET",
            f"{API_PREFIX}/analytics/{{user_id}}",
            Access.READ,
            Server.COORDINATOR,
            "Utilisation and earnings history",
        ),
        MethodSpec(
            "earnings",
            "GET",
            f"{API_PREFIX}/earnings/{{user_id}}",
            Access.READ,
            Server.COORDINATOR,
            "Earnings: gross, electricity cost, net, prediction",
        ),
        MethodSpec(
            "verify",
            "POST",
            f"{API_PREFIX}/verify/{{user_id}}",
            Access.OWNER,
            Server.AGENT,
            "The node's verification state, refreshed from the coordinator",
        ),
        MethodSpec(
            "benchmark",
            "POST",
            f"{API_PREFIX}/benchmark/{{user_id}}",
            Access.OWNER,
            Server.AGENT,
            "Run the quick self-benchmark suite on the node",
        ),
        MethodSpec(
            "network-summary",
            "GET",
            f"{API_PREFIX}/network/summary",
            Access.READ,
            Server.COORDINATOR,
            "The group's members, capacity per resource type, trust distribution, utilisation",
        ),
        MethodSpec(
            "health",
            "GET",
            f"{API_PREFIX}/health",
            Access.READ,
            Server.ANY,
            "Is the server up, and its state",
        ),
    )
}


def method(name: str) -> MethodSpec:
    """The spec of method ``name``; ``unknown_method`` names the ones that exist."""
    spec = METHODS.get(name)
    if spec is None:
        raise ApiError(
            ErrorCode.UNKNOWN_METHOD, f"no API method {name!r}; the methods are {', '.join(METHODS)}"
        )
    return spec


def seal_request(
    signer: Signer,
    method_name: str,
    params: Mapping[str, Any],
    *,
    txid: str,
    now_ms: int,
) -> bytes:
    """An ``ApiRequest`` for ``method_name`` signed by ``signer`` (an owner's or a client's key)."""
    req = ApiRequest(txid=txid, method=method_name, requester=signer.node_id, params=dict(params))
    return signer.seal(req, now_ms)


@dataclass(frozen=True, slots=True)
class OwnerCall:
    """An owner's request that passed every check; the caller records ``seq`` for ``owner``."""

    owner: str
    public_key: bytes
    request: ApiRequest
    seq: int


def check_owner_request(
    envelope: bytes,
    *,
    node_id: str,
    owners: Mapping[str, bytes],
    last_seq: Callable[[str], int | None],
    now_ms: int,
    method_name: str | None = None,
    window_ms: int = 120_000,
) -> OwnerCall:
    """Apply the owner rules of this module's header to one signed request; raise :class:`ApiError`.

    ``owners`` maps each paired owner id to its public key; ``last_seq(owner)`` is the highest sequence
    number accepted from it so far. ``method_name`` is the method the transport says was called (the
    REST route or the MQTT topic); ``None`` accepts any owner method named in the body.
    """
    request, signer, kid = open_request(envelope)
    if method_name is not None and request.method != method_name:
        raise ApiError(
            ErrorCode.BAD_REQUEST, f"the signed request is for {request.method!r}, not {method_name!r}"
        )
    spec = method(request.method) if request.method != PAIR_METHOD else None
    if spec is not None and spec.access is not Access.OWNER:
        raise ApiError(ErrorCode.BAD_REQUEST, f"{request.method} is not a change; call it without signing")
    target = request.params.get("node")
    if target != node_id:
        raise ApiError(ErrorCode.UNKNOWN_NODE, f"the request is for node {target!r}; this is node {node_id}")
    if request.method != PAIR_METHOD and owners.get(signer) != kid:
        raise ApiError(
            ErrorCode.NOT_OWNER,
            f"key {signer} is not paired with node {node_id}: only its owner may change it "
            "(pair a key with `prsm-edge owner pair` on the node)",
        )
    if abs(now_ms - request.ts) > window_ms:
        raise ApiError(
            ErrorCode.STALE,
            f"the request was signed {(now_ms - request.ts) / 1000:.0f} s from the node's clock "
            f"(window {window_ms // 1000} s): check both clocks and sign it again",
        )
    last = last_seq(signer)
    if last is not None and request.seq <= last:
        raise ApiError(
            ErrorCode.REPLAY,
            f"sequence {request.seq} is not after {last}, the last accepted from {signer}: "
            "a request is accepted once",
        )
    return OwnerCall(owner=signer, public_key=kid, request=request, seq=request.seq)


def open_request(envelope: bytes) -> tuple[ApiRequest, str, bytes]:
    """Verify a signed ``ApiRequest``; return it with its signer's id and public key."""
    if len(envelope) > OWNER_REQUEST_LIMIT:
        raise ApiError(ErrorCode.BAD_REQUEST, f"a signed request is at most {OWNER_REQUEST_LIMIT} bytes")
    try:
        opened = open_envelope(envelope)
    except RejectedMessage as exc:
        raise ApiError(ErrorCode.UNAUTHORIZED, f"the request's signature envelope: {exc}") from None
    request = opened.message
    if not isinstance(request, ApiRequest):
        raise ApiError(ErrorCode.BAD_REQUEST, f"a {type(request).__name__} is not an API request")
    if request.requester != opened.signer:
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            f"requester {request.requester!r} is not the signer {opened.signer} (a key's id is derived "
            "from its public key; see docs/api.md)",
        )
    return request, opened.signer, opened.kid


def check_params(params: Mapping[str, Any], limit: int = 64) -> None:
    """Refuse parameter maps that are too big or carry non-finite numbers."""
    if len(params) > limit:
        raise ApiError(ErrorCode.BAD_REQUEST, f"at most {limit} parameters")
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(ErrorCode.BAD_REQUEST, f"{key} must be a finite number")
        if isinstance(value, dict):
            check_params(value, limit)


K = TypeVar("K")
V = TypeVar("V")


class Pending(Generic[K, V]):
    """Calls awaiting an answer: bounded, each with a deadline (the caller's clock, passed in)."""

    def __init__(self, limit: int = 1024) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._items: dict[K, tuple[int, V]] = {}
        self._deadlines: list[tuple[int, int, K]] = []
        self._order = 0

    def add(self, key: K, value: V, deadline_ms: int) -> None:
        """Remember a call; ``busy`` when the table is full, ``bad_request`` for a key in use."""
        if key in self._items:
            raise ApiError(ErrorCode.BAD_REQUEST, "a call with this transaction id is already waiting")
        if len(self._items) >= self.limit:
            raise ApiError(
                ErrorCode.BUSY, f"{self.limit} calls are already waiting for answers; try again shortly"
            )
        self._items[key] = (deadline_ms, value)
        self._order += 1
        heapq.heappush(self._deadlines, (deadline_ms, self._order, key))

    def pop(self, key: K) -> V | None:
        """The call answered now (None if unknown or already expired)."""
        item = self._items.pop(key, None)
        return None if item is None else item[1]

    def expired(self, now_ms: int) -> list[tuple[K, V]]:
        """Remove and return the calls whose deadline has passed."""
        out: list[tuple[K, V]] = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            deadline, _, key = heapq.heappop(self._deadlines)
            item = self._items.get(key)
            if item is not None and item[0] == deadline:
                del self._items[key]
                out.append((key, item[1]))
        if len(self._deadlines) > 4 * self.limit:  # answered calls leave stale heap entries behind
            self._deadlines = [d for d in self._deadlines if d[2] in self._items]
            heapq.heapify(self._deadlines)
        return out

    def __len__(self) -> int:
        return len(self._items)


def result_of(response: ApiResponse) -> dict[str, Any]:
    """The result of a successful response; raise the :class:`ApiError` a failed one reports."""
    if response.ok:
        return response.result
    try:
        code = ErrorCode(response.code)
    except ValueError:
        code = ErrorCode.BAD_REQUEST
    raise ApiError(code, response.error or "refused")


def to_json_safe(value: Any) -> Any:
    """``value`` as JSON-ready data: bytes as base64 text, enums as their values, NaN/inf as null."""
    return _finite(msgspec.to_builtins(value, enc_hook=str))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
