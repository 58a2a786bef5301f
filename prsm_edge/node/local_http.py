"""The agent's local HTTP API on 127.0.0.1: its owner's REST front (needs the ``api`` extra, aiohttp).

Reads answer anyone on this machine; changes need the owner's signed request (see
:mod:`prsm_edge.node.owner_api`).
Once listening, the agent writes ``local-api.json`` (its URL) to its state folder, so ``prsm-edge owner
pair`` and ``prsm-edge api --local`` can find it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Final

from prsm_edge.io.http_api import build_app, serve
from prsm_edge.node.owner_api import LOCAL_API_FILE, NodeApi
from prsm_edge.protocol.api import ApiError, ErrorCode
from prsm_edge.protocol.messages import ApiResponse

__all__ = ["LOCAL_API_FILE", "AgentHttp", "serve_local"]

HOST: Final = "127.0.0.1"
log = logging.getLogger(__name__)


class AgentHttp:
    """The agent's :class:`~prsm_edge.io.http_api.HttpBackend`."""

    role = "agent"

    def __init__(self, api: NodeApi) -> None:
        self.api = api

    def _mine(self, user_id: str | None) -> None:
        node = self.api.agent.node_id
        if user_id is not None and user_id != node:
            raise ApiError(ErrorCode.UNKNOWN_NODE, f"this is node {node}; there is no node {user_id} here")

    async def read(self, name: str, user_id: str | None) -> dict[str, Any]:
        self._mine(user_id)
        return await self.api.read(name)

    async def change(self, name: str, user_id: str | None, envelope: bytes) -> tuple[ApiResponse, bytes]:
        self._mine(user_id)
        return await self.api.change(envelope, name)

    def pair(self, envelope: bytes) -> dict[str, Any]:
        return self.api.pair(envelope)


async def serve_local(api: NodeApi) -> None:
    """Serve the agent's local API until cancelled."""
    options = api.options
    port = options.local_port or 0
    app = build_app(AgentHttp(api), writable=True, static_dir=options.static_dir)
    path = api.agent.options.workdir / LOCAL_API_FILE

    def ready(bound: int) -> None:
        api.local_url = f"http://{HOST}:{bound}"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"url": api.local_url, "node": api.agent.node_id, "pid": os.getpid()}, fh)
        tmp.replace(path)

    try:
        await serve(app, HOST, port, ready)
    except OSError as exc:  # the port is taken: the agent goes on without its local API
        log.error("the local API cannot listen on %s:%d (%s); the agent runs on without it", HOST, port, exc)
    finally:
        path.unlink(missing_ok=True)
