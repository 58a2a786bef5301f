"""The REST front of the API: the seed's routes over the same methods, and the OpenAPI document for them.

Served with aiohttp (the ``api`` extra): it runs on the agent's own event loop, so the HTTP handlers and
the MQTT session share one loop and no thread; it has wheels for aarch64 (a Raspberry Pi) and falls back
to pure Python elsewhere. Reads are ``GET``; changes (``POST``/``PUT``) carry the owner's signed request
as the body, either raw (``Content-Type: application/cose``) or as JSON ``{"signed": "<base64>"}``.

A server on 127.0.0.1 can still be reached by a web page through DNS rebinding, so the agent's server
answers only requests whose ``Host`` names the loopback (``allowed_hosts``). It sends no CORS headers: a
page from another origin cannot read its answers. Static files (the dashboard, later) are served from
``static_dir`` under ``/ui/`` with their MIME types.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web

from prsm_edge import __version__
from prsm_edge.protocol.api import (
    CONTRIBUTION_SETTINGS,
    METHODS,
    Access,
    ApiError,
    ErrorCode,
    MethodSpec,
    to_json_safe,
)
from prsm_edge.protocol.messages import ApiResponse
from prsm_edge.protocol.topics import valid_segment

__all__ = ["LOOPBACK_HOSTS", "HttpBackend", "build_app", "openapi_document", "serve"]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
OPENAPI_PATH: Final = "/api/v1/openapi.json"
PAIR_PATH: Final = "/api/v1/owner/pair"
_MAX_BODY: Final = 64 * 1024
_USER_ID = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}


class HttpBackend(Protocol):
    """What answers the routes: the agent (reads and owner changes) or a coordinator (reads only)."""

    role: str

    async def read(self, name: str, user_id: str | None) -> dict[str, Any]: ...

    async def change(self, name: str, user_id: str | None, envelope: bytes) -> tuple[ApiResponse, bytes]: ...

    def pair(self, envelope: bytes) -> dict[str, Any]: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        to_json_safe(data), status=status, dumps=lambda d: json.dumps(d, allow_nan=False)
    )


def _error(error: ApiError) -> web.Response:
    return _json({"ok": False, "code": error.code.value, "error": error.message}, error.code.http_status)


async def _signed_body(request: web.Request) -> bytes:
    """The owner's signed request from the body: raw COSE, or base64 in JSON ``{"signed": ...}``."""
    raw = await request.read()
    if request.content_type == "application/cose":
        return raw
    if request.content_type != "application/json":
        raise ApiError(
            ErrorCode.BAD_REQUEST, 'send the signed request as application/cose, or JSON {"signed": base64}'
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(ErrorCode.BAD_REQUEST, "the body is not JSON") from None
    signed = data.get("signed") if isinstance(data, dict) else None
    if not isinstance(signed, str):
        raise ApiError(ErrorCode.BAD_REQUEST, 'the JSON body needs "signed": the base64 COSE_Sign1 request')
    try:
        return base64.b64decode(signed + "=" * (-len(signed) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        raise ApiError(ErrorCode.BAD_REQUEST, '"signed" is not base64') from None


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8080`` → ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


def _user_id(request: web.Request) -> str | None:
    user_id = request.match_info.get("user_id")
    if user_id is not None and not valid_segment(user_id):
        raise ApiError(ErrorCode.UNKNOWN_NODE, "a user id (node id) is 1–64 characters of a-z, 0-9, '_', '-'")
    return user_id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    backend: HttpBackend,
    *,
    writable: bool,
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS,
    static_dir: Path | None = None,
) -> web.Application:
    """The aiohttp application for ``backend``; ``writable`` False answers every change ``read_only``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed_hosts is not None and _host_name(request.host or "") not in allowed_hosts:
            return _error(
                ApiError(ErrorCode.UNAUTHORIZED, f"this server answers only to {sorted(allowed_hosts)}")
            )
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc)

    app = web.Application(middlewares=[guard], client_max_size=_MAX_BODY)
    document = openapi_document(backend.role, writable=writable)

    async def openapi(_request: web.Request) -> web.Response:
        return _json(document)

    app.router.add_get(OPENAPI_PATH, openapi)
    for spec in METHODS.values():
        app.router.add_route(spec.http, spec.path, _route(backend, spec, writable))
    if writable:

        async def pair(request: web.Request) -> web.Response:
            return _json({"ok": True, "result": backend.pair(await _signed_body(request))})

        app.router.add_post(PAIR_PATH, pair)
    if static_dir is not None:
        index = static_dir / "index.html"

        async def home(_request: web.Request) -> web.StreamResponse:
            if not index.is_file():
                raise web.HTTPNotFound(text="no dashboard is installed here")
            return web.FileResponse(index)

        async def to_ui(_request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound("/ui/")

        app.router.add_get("/", to_ui)
        app.router.add_get("/ui/", home)
        app.router.add_static("/ui/", static_dir, show_index=False, follow_symlinks=False)
    return app


def _route(backend: HttpBackend, spec: MethodSpec, writable: bool) -> Handler:
    if spec.access is Access.READ:

        async def read(request: web.Request) -> web.Response:
            result = await backend.read(spec.name, _user_id(request))
            return _json({"ok": True, "method": spec.name, "result": result})

        return read

    async def change(request: web.Request) -> web.Response:
        if not writable:
            raise ApiError(
                ErrorCode.READ_ONLY,
                f"this {backend.role}'s API is read-only: send {spec.name} to the node's own local API",
            )
        user_id = _user_id(request)
        response, ack = await backend.change(spec.name, user_id, await _signed_body(request))
        body = {
            "ok": response.ok,
            "method": response.method or spec.name,
            "txid": response.txid,
            "result": response.result,
            "error": response.error,
            "code": response.code,
            "ack": base64.b64encode(ack).decode("ascii"),
        }
        status = 200 if response.ok else ErrorCode(response.code).http_status
        return _json(body, status)

    return change


# ---- OpenAPI ---------------------------------------------------------------------------------
def _answer(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _settings_schema() -> dict[str, Any]:
    from prsm_edge.settings import Settings  # the owner's settings model is the one source of bounds

    full = Settings.model_json_schema()
    props = {k: v for k, v in full["properties"].items() if k in CONTRIBUTION_SETTINGS}
    return {"type": "object", "properties": props, "additionalProperties": False}


def openapi_document(role: str, *, writable: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the routes this server answers."""
    errors = {str(code.http_status): _answer("#/components/schemas/Error", code.value) for code in ErrorCode}
    paths: dict[str, Any] = {}
    for spec in METHODS.values():
        if spec.access is Access.OWNER and not writable:
            continue
        op: dict[str, Any] = {
            "operationId": spec.name.replace("-", "_"),
            "summary": spec.summary,
            "responses": {**errors},
        }
        if "{user_id}" in spec.path:
            op["parameters"] = [
                {
                    "name": "user_id",
                    "in": "path",
                    "required": True,
                    "description": "the node id",
                    "schema": _USER_ID,
                }
            ]
        if spec.access is Access.OWNER:
            op["description"] = (
                "A change: the body is an ApiRequest signed by a paired owner key (COSE_Sign1, see "
                f"docs/api.md) with method `{spec.name}` and params.node = the node id."
            )
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SignedRequest"}},
                    "application/cose": {"schema": {"type": "string", "format": "binary"}},
                },
            }
            op["responses"]["200"] = _answer("#/components/schemas/ChangeAnswer", "applied and acknowledged")
        else:
            op["responses"]["200"] = _answer("#/components/schemas/ReadAnswer", "the answer")
        paths.setdefault(spec.path, {})[spec.http.lower()] = op
    if writable:
        paths[PAIR_PATH] = {
            "post": {
                "operationId": "pair",
                "summary": "Pair an owner key, proven by the one-time code from `prsm-edge owner pair`",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/SignedRequest"}},
                        "application/cose": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {"200": _answer("#/components/schemas/ReadAnswer", "paired"), **errors},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"prsm-edge {role} API",
            "version": __version__,
            "description": "The seed's resource API; see docs/api.md for the owner signature scheme.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["ok", "code", "error"],
                    "properties": {
                        "ok": {"const": False},
                        "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
                        "error": {"type": "string"},
                    },
                },
                "ReadAnswer": {
                    "type": "object",
                    "required": ["ok", "result"],
                    "properties": {
                        "ok": {"const": True},
                        "method": {"type": "string"},
                        "result": {"type": "object"},
                    },
                },
                "ChangeAnswer": {
                    "type": "object",
                    "required": ["ok", "txid", "ack"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "method": {"type": "string"},
                        "txid": {"type": "string"},
                        "result": {"type": "object"},
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "ack": {"type": "string", "description": "the node-signed ApiResponse, base64"},
                    },
                },
                "SignedRequest": {
                    "type": "object",
                    "required": ["signed"],
                    "properties": {
                        "signed": {"type": "string", "description": "COSE_Sign1 ApiRequest, base64"}
                    },
                },
                "ContributionSettings": _settings_schema(),
            }
        },
    }


async def serve(
    app: web.Application,
    host: str,
    port: int,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` (0: any free port) until cancelled; ``ready(port)`` once listening."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        log.info("API listening on http://%s:%d", host, bound)
        if ready is not None:
            ready(bound)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
