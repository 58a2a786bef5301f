"""A TCP proxy in front of a real broker that can hold back the broker's PUBACKs to its client.

Everything else passes both ways untouched (CONNACK, SUBACK, PUBLISH, PINGRESP …), so a client behind it
keeps receiving messages while its own QoS 1 publications stay unacknowledged: the situation of a busy or
far-away broker, made deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

_PUBACK = 4


def _packet_length(buf: bytes | bytearray) -> int | None:
    """Total length of the MQTT packet at the start of ``buf`` (None: not all of it has arrived)."""
    multiplier, remaining = 1, 0
    for i in range(1, 5):
        if i >= len(buf):
            return None
        byte = buf[i]
        remaining += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return 1 + i + remaining
        multiplier *= 128
    raise ValueError("malformed MQTT remaining length")


class PubackProxy:
    """Listen on a free port; forward to ``upstream_port``; hold PUBACKs while :attr:`hold` is set."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold = asyncio.Event()
        self.held = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _pipe_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(65536):
                buf += data
                while (n := _packet_length(buf)) is not None and n <= len(buf):
                    packet, buf = bytes(buf[:n]), buf[n:]
                    if packet[0] >> 4 == _PUBACK and self.hold.is_set():
                        self.held += 1  # never delivered: the client waits in vain
                        continue
                    writer.write(packet)
                await writer.drain()
        finally:
            writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for coro in (self._pipe_up(client_r, broker_w), self._pipe_down(broker_r, client_w)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PubackProxy]:
        """Serve until the block ends."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                    await task
