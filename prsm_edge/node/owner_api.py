"""The agent's side of the API: what its owner may read and change, whichever way the call arrives.

Calls come from the local HTTP server (:mod:`prsm_edge.node.local_http`) or relayed by the coordinator
over MQTT (``cmd/owner``: an owner's signed request, answered on the node's ``reply`` topic). Reads are
answered from the agent's own state, and for what the group holds (trust, ledger, market) by asking the
coordinator. Changes pass the owner rules of :mod:`prsm_edge.protocol.api` first, then are applied to the
running agent (a new offer is announced at once) and written to the owner's settings file, and are
acknowledged by a response signed with the node key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import pydantic

from prsm_edge import __version__
from prsm_edge import settings as settings_mod
from prsm_edge.errors import PrsmEdgeError
from prsm_edge.io.clock import now_ms
from prsm_edge.node.owners import OwnerRegistry
from prsm_edge.protocol import advice, topics
from prsm_edge.protocol.api import (
    CONTRIBUTION_SETTINGS,
    METHODS,
    PAIR_METHOD,
    Access,
    ApiError,
    ErrorCode,
    check_owner_request,
    check_params,
    method,
    open_request,
    result_of,
    to_json_safe,
)
from prsm_edge.protocol.guardrails import Governor
from prsm_edge.protocol.messages import ApiRequest, ApiResponse, ResourceSpec
from prsm_edge.protocol.offer import offered
from prsm_edge.settings import Settings

if TYPE_CHECKING:
    from prsm_edge.node.agent import Agent

__all__ = ["DEFAULT_LOCAL_PORT", "LOCAL_API_FILE", "NodeApi", "OwnerOptions", "local_server"]

log = logging.getLogger(__name__)

PAUSED_FILE: Final = "paused"
LOCAL_API_FILE: Final = "local-api.json"  # the running agent's local API URL, for the CLI
DEFAULT_LOCAL_PORT: Final = 8470
MAX_COORDINATOR_CALLS: Final = 32  # calls to the coordinator waiting at once (HTTP readers can pile up)
PAUSED_REASON: Final = "paused by its owner"
# Settings carried in the birth rather than in a claim: changing one re-announces the node.
_BIRTH_TERMS: Final = frozenset(
    {
        "security_level",
        "minimum_hourly_rate",
        "uptime_commitment",
        "priority_level",
        "max_cpu_temperature",
        "max_power_consumption",
    }
)


@dataclass(frozen=True, slots=True)
class OwnerOptions:
    """How the agent serves its owner."""

    settings: Settings | None = None  # the effective settings at start (None: the defaults)
    settings_path: Path | None = None  # where owner changes are written (None: kept in memory only)
    detected: list[ResourceSpec] | None = None  # detected capacity (None: derived from the start offer)
    local_port: int | None = None  # serve the local HTTP API on 127.0.0.1 (0: any free port)
    static_dir: Path | None = None  # files the local server also serves (the dashboard, later)
    call_timeout_s: float = 5.0  # how long to wait for the coordinator's answer


def _detected_from(offer: list[ResourceSpec], settings: Settings) -> list[ResourceSpec]:
    """Capacity before the owner's percentages, recovered from an offer made with them."""
    alloc = settings.allocations()
    out = []
    for spec in offer:
        share = alloc.for_type(spec.type)
        if share > 0:
            out.append(msgspec.structs.replace(spec, capacity=round(spec.capacity / share, 3)))
    return out


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bounds(raw: object) -> dict[str, tuple[float, float]]:
    """The owner's bounds for auto-optimize: setting → [low, high], finite, low ≤ high."""
    if not isinstance(raw, dict):
        raise ApiError(ErrorCode.BAD_REQUEST, "params.bounds must map a setting to [low, high]")
    out: dict[str, tuple[float, float]] = {}
    for name, pair in raw.items():
        ok = isinstance(pair, list | tuple) and len(pair) == 2 and all(_numeric(v) for v in pair)
        low, high = (float(pair[0]), float(pair[1])) if ok else (math.nan, math.nan)
        if name not in advice.OPTIMIZABLE or not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ApiError(
                ErrorCode.BAD_REQUEST,
                f"bounds[{name!r}] must be [low, high] for a setting auto-optimize may change "
                f"({', '.join(advice.OPTIMIZABLE)}), low ≤ high",
            )
        out[str(name)] = (low, high)
    return out


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _suggestion(item: object) -> advice.Suggestion | None:
    """One suggestion from the coordinator's answer, or None if it does not fit."""
    if not isinstance(item, dict):
        return None
    try:
        return advice.Suggestion(
            setting=str(item["setting"]),
            current=float(item["current"]),
            proposed=float(item["value"]),
            reason=str(item.get("reason", "")),
            ftns_per_day=float(item.get("ftns_per_day", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _numeric(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _contribution(settings: Settings) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in CONTRIBUTION_SETTINGS:
        value = getattr(settings, name)
        values[name] = str(value) if isinstance(value, Decimal) else value
    return values


class NodeApi:
    """The API methods as the agent answers them."""

    def __init__(self, agent: Agent, options: OwnerOptions | None = None) -> None:
        self.agent = agent
        self.options = options or OwnerOptions()
        self.owners = OwnerRegistry(agent.options.workdir)
        self.settings = self.options.settings or Settings()
        self.detected = self.options.detected or _detected_from(agent.options.resources, self.settings)
        self._paused_path = agent.options.workdir / PAUSED_FILE
        self._bench_lock = asyncio.Lock()
        self._started = time.monotonic()
        self.changes = 0
        self._undo: list[advice.Change] = []  # what the last auto-optimize changed
        self.local_url = ""  # set once the local HTTP server listens
        self._waiting = 0

    @property
    def paused(self) -> bool:
        """Whether the owner paused this node (kept on disk across restarts)."""
        return self._paused_path.exists()

    # ---- reading -----------------------------------------------------------------------------
    async def read(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Answer a read method for this node; raise :class:`ApiError`."""
        spec = method(name)
        if spec.access is not Access.READ:
            raise ApiError(ErrorCode.UNAUTHORIZED, f"{name} changes the node: send it signed by its owner")
        params = params or {}
        node = params.get("node", self.agent.node_id)
        if spec.per_node and node != self.agent.node_id:
            raise ApiError(ErrorCode.UNKNOWN_NODE, f"this is node {self.agent.node_id}, not {node!r}")
        match name:
            case "health":
                return self.health()
            case "status":
                return await self.status()
            case "optimize" | "earnings":  # advice and the electricity cost need the node's own record
                return await self.ask_coordinator(name, self.record())
            case _:
                return await self.ask_coordinator(name, {"node": self.agent.node_id} if spec.per_node else {})

    def health(self) -> dict[str, Any]:
        """Whether the agent runs, and its connection."""
        agent = self.agent
        return {
            "ok": True,
            "role": "agent",
            "node": agent.node_id,
            "software": f"prsm-edge {__version__}",
            "connected": agent.session.connected.is_set(),
            "in_group": agent.born.is_set(),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    async def status(self) -> dict[str, Any]:
        """The node's offer, limits and state, with its trust and balance from the coordinator."""
        agent = self.agent
        coord = agent.coordinator
        out: dict[str, Any] = {
            "node": agent.node_id,
            "site": agent.options.site,
            "group": agent.options.group,
            "device_class": agent.options.device_class,
            "coordinator": None
            if coord is None
            else {"node": coord.coordinator, "epoch": coord.epoch, "online": coord.status == "online"},
            "in_group": agent.born.is_set(),
            "offering": agent.offering and not self.paused,
            "throttle": PAUSED_REASON if self.paused else agent.throttle,
            "paused": self.paused,
            "resources": to_json_safe(agent.resources),
            "settings": _contribution(self.settings),
            "owners": len(self.owners.owners()),
            "homeassistant_controls": {
                "enabled": agent.ha_controls.enabled,
                "applied": agent.ha_controls.applied,
                "refused": agent.ha_controls.refused,
            },
        }
        try:
            out["trust"] = await self.ask_coordinator("status", {"node": agent.node_id})
        except ApiError as exc:
            out["trust"] = None
            out["trust_error"] = exc.message
        return out

    def record(self) -> dict[str, Any]:
        """What advice needs from this node that only it knows: its settings and detected capacity."""
        settings = {k: float(v) for k, v in _contribution(self.settings).items() if _numeric(v)}
        detected: dict[str, float] = {}
        for spec in self.detected:
            detected[spec.type.value] = detected.get(spec.type.value, 0.0) + spec.capacity
        return {"node": self.agent.node_id, "settings": settings, "detected": detected}

    async def ask_coordinator(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call a coordinator method as this node; raise :class:`ApiError` with its refusal."""
        if not self.agent.born.is_set():
            raise ApiError(
                ErrorCode.NOT_AVAILABLE,
                "this node is not in a group yet (no coordinator online): try again once it has joined",
            )
        if self._waiting >= MAX_COORDINATOR_CALLS:
            raise ApiError(ErrorCode.BUSY, f"{MAX_COORDINATOR_CALLS} calls to the coordinator are waiting")
        self._waiting += 1
        try:
            response = await self.agent.call(name, params, wait_s=self.options.call_timeout_s)
        except TimeoutError:
            raise ApiError(
                ErrorCode.TIMEOUT,
                f"the coordinator did not answer {name} within {self.options.call_timeout_s:g} s",
            ) from None
        finally:
            self._waiting -= 1
        return result_of(response)

    # ---- changing ----------------------------------------------------------------------------
    async def change(self, envelope: bytes, method_name: str | None = None) -> tuple[ApiResponse, bytes]:
        """Check and apply an owner's signed request; the answer, and the same answer signed (the ack)."""
        txid, name = "", method_name or ""
        try:
            call = check_owner_request(
                envelope,
                node_id=self.agent.node_id,
                owners=self.owners.keys(),
                last_seq=self.owners.last_seq,
                now_ms=now_ms(),
                method_name=method_name,
            )
            txid, name = call.request.txid, call.request.method
            if name == PAIR_METHOD:
                raise ApiError(ErrorCode.BAD_REQUEST, "pairing is done on the node's local API only")
            self.owners.accept_seq(call.owner, call.seq)
            result = await self._apply(call.request)
            self.changes += 1
            log.info("%s: owner %s: %s applied", self.agent.node_id, call.owner, name)
            resp = ApiResponse(txid=txid, method=name, ok=True, result=result)
        except ApiError as exc:
            log.info("%s: refused a change (%s): %s", self.agent.node_id, exc.code.value, exc.message)
            resp = ApiResponse(txid=txid, method=name, ok=False, error=exc.message, code=exc.code.value)
        return resp, self.agent.signer.seal(resp, now_ms())

    def pair(self, envelope: bytes) -> dict[str, Any]:
        """Bind a new owner key, proven by the one-time code from ``prsm-edge owner pair``."""
        call = check_owner_request(
            envelope,
            node_id=self.agent.node_id,
            owners={},
            last_seq=lambda _owner: None,
            now_ms=now_ms(),
            method_name=PAIR_METHOD,
        )
        code = call.request.params.get("code")
        label = call.request.params.get("label", "")
        if not isinstance(code, str) or not isinstance(label, str):
            raise ApiError(ErrorCode.BAD_REQUEST, "pairing needs params.code (text) and an optional label")
        key = self.owners.pair(code, call.public_key, label, now_ms())
        with contextlib.suppress(ApiError):  # bookkeeping only: the one-time code authorised this
            self.owners.accept_seq(key.owner, call.seq)
        log.info("%s: paired owner key %s (%s)", self.agent.node_id, key.owner, key.label or "no label")
        return {"owner": key.owner, "node": self.agent.node_id, "label": key.label}

    async def relayed(self, args: dict[str, Any]) -> None:
        """An owner's request relayed by the coordinator: apply it and publish the signed answer."""
        envelope = args.get("request")
        if not isinstance(envelope, bytes):
            log.info("%s: ignoring a relayed call without a request", self.agent.node_id)
            return
        name = args.get("method")
        spec = METHODS.get(name) if isinstance(name, str) else None
        if spec is not None and spec.access is Access.READ:
            resp, sealed = await self.relayed_read(envelope)
        else:
            resp, sealed = await self.change(envelope)
        if not resp.txid:  # refused before the request could be read: answer with what the relay named
            txid, name = args.get("txid"), args.get("method")
            if not isinstance(txid, str) or not isinstance(name, str):
                return
            resp = msgspec.structs.replace(resp, txid=txid, method=name)
            sealed = self.agent.signer.seal(resp, now_ms())
        o = self.agent.options
        self.agent.session.enqueue(
            topics.node(topics.Kind.NODE_REPLY, o.site, o.group, self.agent.node_id), sealed
        )

    async def relayed_read(self, envelope: bytes) -> tuple[ApiResponse, bytes]:
        """A read relayed by the coordinator (one only the node can answer, e.g. advice)."""
        txid, name = "", ""
        try:
            request, _signer, _kid = open_request(envelope)
            txid, name = request.txid, request.method
            result = await self.read(name, dict(request.params))
            resp = ApiResponse(txid=txid, method=name, ok=True, result=result)
        except ApiError as exc:
            resp = ApiResponse(txid=txid, method=name, ok=False, error=exc.message, code=exc.code.value)
        return resp, self.agent.signer.seal(resp, now_ms())

    async def _apply(self, request: ApiRequest) -> dict[str, Any]:
        params = request.params
        check_params(params)
        match request.method:
            case "configure" | "update":
                values = params.get("settings")
                if not isinstance(values, dict):
                    raise ApiError(ErrorCode.BAD_REQUEST, "params.settings must be a map of setting → value")
                return self.apply_settings(values, replace_all=request.method == "configure")
            case "pause":
                paused = params.get("paused", True)
                if not isinstance(paused, bool):
                    raise ApiError(ErrorCode.BAD_REQUEST, "params.paused must be true or false")
                return self.set_paused(paused)
            case "auto-optimize":
                return await self.auto_optimize(params)
            case "verify":
                return await self.ask_coordinator("verify", {"node": self.agent.node_id})
            case "benchmark":
                return await self.benchmark()
        raise ApiError(ErrorCode.UNKNOWN_METHOD, f"{request.method} is not a change this node makes")

    def apply_settings(self, values: dict[str, Any], *, replace_all: bool) -> dict[str, Any]:
        """Validate and apply contribution settings; announce the new offer; write them down."""
        unknown = sorted(set(values) - set(CONTRIBUTION_SETTINGS))
        if unknown:
            raise ApiError(
                ErrorCode.BAD_REQUEST,
                f"{', '.join(unknown)} cannot be changed over the API; these can: "
                f"{', '.join(CONTRIBUTION_SETTINGS)}",
            )
        current = self.settings.model_dump()
        defaults = Settings().model_dump()
        base = {**current, **{k: defaults[k] for k in CONTRIBUTION_SETTINGS}} if replace_all else current
        try:
            new = Settings.model_validate({**base, **values})
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ApiError(ErrorCode.BAD_REQUEST, f"invalid settings: {problems}") from None
        changed = {k: getattr(new, k) for k in CONTRIBUTION_SETTINGS if getattr(new, k) != current[k]}
        self._persist(changed, values)
        self.settings = new
        self._announce(new, birth=bool(_BIRTH_TERMS & set(changed)))
        return {
            "changed": {k: str(v) if isinstance(v, Decimal) else v for k, v in changed.items()},
            "settings": _contribution(new),
            "offer": to_json_safe(self.agent.options.resources),
        }

    def _persist(self, changed: dict[str, Any], given: dict[str, Any]) -> None:
        path = self.options.settings_path
        if path is None:
            return
        try:
            for name, value in changed.items():
                if name in given:
                    settings_mod.set_value(name, _text(value), path)
                else:  # configure: a setting it does not name goes back to its default
                    settings_mod.unset_value(name, path)
        except PrsmEdgeError as exc:
            raise ApiError(ErrorCode.BAD_REQUEST, f"the settings file refused the change: {exc}") from None

    def _announce(self, new: Settings, *, birth: bool) -> None:
        agent = self.agent
        offer = offered(self.detected, new.allocations())
        agent.options = dataclasses.replace(
            agent.options,
            resources=offer,
            guardrails=new.guardrails(),
            security_level=new.security_level,
            min_hourly_rate_micro=new.min_hourly_rate_micro,
            uptime_commitment=new.uptime_commitment,
            priority_level=new.priority_level,
        )
        agent.governor = Governor.for_limits(agent.options.guardrails)
        agent.update_resources(offer, reason="the owner changed the settings")
        if birth and agent.born.is_set():
            agent.reannounce()

    def set_paused(self, paused: bool) -> dict[str, Any]:
        """Stop (or resume) offering; heartbeats say so until the owner resumes."""
        if paused:
            self._paused_path.write_text("paused by the owner\n", encoding="utf-8")
        else:
            self._paused_path.unlink(missing_ok=True)
        self.agent.paused = PAUSED_REASON if paused else ""
        return {"paused": paused}

    async def auto_optimize(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply the coordinator's advice, only to settings the owner bounded and inside those bounds
        (the rule is the economy's :func:`~prsm_edge.protocol.advice.auto_optimize`): the owner's
        ``optimize_bounds`` setting, narrowed by ``params.bounds`` if given; ``dry_run`` only shows the
        change and the bounds used, ``undo`` puts back what the last run changed."""
        if params.get("undo") is True:
            if not self._undo:
                raise ApiError(ErrorCode.BAD_REQUEST, "there is no auto-optimize change to undo")
            changes, self._undo = self._undo, []
            now = self.record()["settings"]
            restored = advice.undo(now, changes)
            back = {c.setting: restored[c.setting] for c in changes if restored[c.setting] != now[c.setting]}
            return {"undone": [c.setting for c in changes], **self.apply_settings(back, replace_all=False)}
        # The owner's standing bounds (the optimize_bounds setting), narrowed by the request's, never
        # widened: a page or client cannot move a setting past what the owner allowed.
        stored = advice.parse_bounds(self.settings.optimize_bounds, advice.OPTIMIZABLE)
        requested = _bounds(params["bounds"]) if "bounds" in params else None
        try:
            bounds = advice.effective_bounds(stored, requested)
        except ValueError as exc:
            raise ApiError(ErrorCode.BAD_REQUEST, str(exc)) from None
        record = self.record()
        answer = await self.ask_coordinator("optimize", record)
        suggestions = [_suggestion(item) for item in answer.get("suggestions", [])]
        _new, changes = advice.auto_optimize(
            record["settings"], [s for s in suggestions if s is not None], bounds
        )
        proposed = {c.setting: c.new for c in changes}
        shown = [{"setting": c.setting, "old": c.old, "new": c.new, "reason": c.reason} for c in changes]
        limits = {k: [_finite_or_none(lo), _finite_or_none(hi)] for k, (lo, hi) in bounds.items()}
        if params.get("dry_run") is True or not changes:
            return {"applied": False, "changes": shown, "bounds": limits, "advice": answer}
        result = self.apply_settings(proposed, replace_all=False)
        self._undo = changes
        return {"applied": True, "changes": shown, "bounds": limits, **result}

    async def benchmark(self) -> dict[str, Any]:
        """Run the quick CPU and memory benchmarks (one run at a time)."""
        from prsm_edge.node.bench import run_suite_async  # imported on use: it is large

        if self._bench_lock.locked():
            raise ApiError(ErrorCode.BUSY, "a benchmark is already running on this node; wait for it")
        async with self._bench_lock:
            suite = await run_suite_async(["cpu", "memory"], quick=True, workdir=self.agent.options.workdir)
        data: dict[str, Any] = msgspec.to_builtins(suite)
        return data


def local_server(api: NodeApi) -> Coroutine[Any, Any, None] | None:
    """The local HTTP server's coroutine, or None when it is off or aiohttp (the ``api`` extra) is absent."""
    if api.options.local_port is None:
        return None
    try:
        from prsm_edge.node.local_http import serve_local
    except ImportError:
        log.warning("the local API is off: it needs aiohttp (pip install 'prsm-edge[api]')")
        return None
    return serve_local(api)
