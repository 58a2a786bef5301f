"""Call API methods over MQTT: a signed request on ``api/{method}/req/{client}``, answered on ``resp``.

Only MQTT 3.1.1 is used: the transaction id travels inside the signed body, not in MQTT 5 properties.
The client learns the coordinator from its retained, self-signed ``coord/state`` and accepts an answer
only if it is signed by that coordinator, or, for a change relayed to a node, by that node (its own
acknowledgement). Calls in flight are bounded; each waits at most its timeout and then fails with a
``timeout`` that says which method and broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt

from prsm_edge.errors import PrsmEdgeError, RejectedMessage
from prsm_edge.io.clock import now_ms
from prsm_edge.io.session import MAX_INCOMING_BYTES, no_delay, parse_url
from prsm_edge.protocol import topics
from prsm_edge.protocol.api import ApiError, ErrorCode, method, seal_request
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.messages import ApiResponse, CoordState

__all__ = ["ApiClient", "connect"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Call:
    future: asyncio.Future[tuple[ApiResponse, str]]
    signers: frozenset[str]


class ApiClient:
    """One connected API client; use :func:`connect`."""

    def __init__(
        self, client: aiomqtt.Client, site: str, group: str, signer: Signer, *, max_pending: int = 64
    ) -> None:
        self._client = client
        self.site = site
        self.group = group
        self.signer = signer
        self.max_pending = max_pending
        self.coordinator: CoordState | None = None
        self._coordinator_known = asyncio.Event()
        self._calls: dict[str, _Call] = {}

    async def _read(self) -> None:
        async for message in self._client.messages:
            payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            if not payload or len(payload) > MAX_INCOMING_BYTES:
                continue
            try:
                opened = open_envelope(payload)
            except (RejectedMessage, PrsmEdgeError) as exc:
                log.debug("ignoring a message on %s: %s", message.topic.value, exc)
                continue
            msg = opened.message
            if isinstance(msg, CoordState):
                if opened.signer == msg.coordinator and msg.status == "online":
                    self.coordinator = msg
                    self._coordinator_known.set()
                continue
            if isinstance(msg, ApiResponse):
                call = self._calls.get(msg.txid)
                if call is not None and opened.signer in call.signers and not call.future.done():
                    call.future.set_result((msg, opened.signer))

    async def wait_coordinator(self, timeout_s: float) -> CoordState:
        """The group's coordinator, once its retained ``online`` state has arrived."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._coordinator_known.wait()
        except TimeoutError:
            raise ApiError(
                ErrorCode.NOT_AVAILABLE,
                f"no coordinator of {self.site}/{self.group} is online at this broker "
                f"(waited {timeout_s:g} s): check --broker, --site and --group",
            ) from None
        assert self.coordinator is not None
        return self.coordinator

    async def call(
        self, method_name: str, params: dict[str, Any] | None = None, *, timeout_s: float = 10.0
    ) -> ApiResponse:
        """Send one signed request and wait for its answer (a failed answer is returned, not raised)."""
        response, _signer = await self.call_signed(method_name, params, timeout_s=timeout_s)
        return response

    async def call_signed(
        self, method_name: str, params: dict[str, Any] | None = None, *, timeout_s: float = 10.0
    ) -> tuple[ApiResponse, str]:
        """:meth:`call`, also naming who signed the answer (the coordinator, or the node for a change)."""
        method(method_name)  # unknown_method before anything is sent
        params = dict(params or {})
        coordinator = await self.wait_coordinator(timeout_s)
        if len(self._calls) >= self.max_pending:
            raise ApiError(ErrorCode.BUSY, f"{self.max_pending} calls are waiting already")
        txid = secrets.token_hex(8)
        signers = {coordinator.coordinator}
        node = params.get("node")
        if isinstance(node, str):
            signers.add(node)  # a relayed change is acknowledged by the node itself
        call = _Call(asyncio.get_running_loop().create_future(), frozenset(signers))
        self._calls[txid] = call
        try:
            payload = seal_request(self.signer, method_name, params, txid=txid, now_ms=now_ms())
            topic = topics.api(topics.Kind.API_REQ, self.site, self.group, method_name, self.signer.node_id)
            await self._client.publish(topic, payload, qos=1)
            async with asyncio.timeout(timeout_s):
                return await call.future
        except TimeoutError:
            raise ApiError(
                ErrorCode.TIMEOUT, f"no answer to {method_name} within {timeout_s:g} s (transaction {txid})"
            ) from None
        finally:
            self._calls.pop(txid, None)


@contextlib.asynccontextmanager
async def connect(
    broker_url: str,
    site: str,
    group: str,
    signer: Signer,
    *,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[ApiClient]:
    """Connect to the group's broker as ``signer``'s client and serve calls until the block ends."""
    address = parse_url(broker_url)
    client = aiomqtt.Client(
        address.host,
        address.port,
        identifier=f"api-{signer.node_id}-{secrets.token_hex(3)}",
        username=username,
        password=password,
        transport="websockets" if address.transport == "websockets" else "tcp",
        websocket_path=address.path,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        timeout=10,
    )
    try:
        async with client:
            no_delay(client)
            api = ApiClient(client, site, group, signer)
            await client.subscribe(
                [
                    (topics.coord_state(site, group), 1),
                    (topics.api_responses_filter(site, group, signer.node_id), 1),
                ]
            )
            reader = asyncio.create_task(api._read(), name="api-client-read")
            try:
                yield api
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    except aiomqtt.MqttError as exc:
        raise ApiError(ErrorCode.NOT_AVAILABLE, f"cannot reach the broker at {broker_url}: {exc}") from None
