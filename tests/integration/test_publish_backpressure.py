"""Publishing must never hold up reading: a coordinator whose QoS 1 publications go unacknowledged keeps
handling (and stamping) the messages that arrive, on a real Mosquitto behind a proxy that withholds the
broker's PUBACKs from the coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt
import pytest
from nacl.signing import SigningKey

from prsm_edge.io.clock import now_ms
from prsm_edge.io.session import Session
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.messages import ApiRequest
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, coordinator, eventually
from tests.integration.pubackproxy import PubackProxy

pytestmark = pytest.mark.integration

N = 5


async def test_coordinator_keeps_stamping_arrivals_while_its_publishes_are_unacknowledged(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PubackProxy(mosquitto.port).running() as proxy:
        coord = coordinator(f"mqtt://127.0.0.1:{proxy.port}", tmp_path / "coord", summary_interval_s=60.0)
        stamps: list[int] = []  # the arrival time the coordinator hands to its group logic, per message
        receive = coord.group.receive

        def stamped(topic: str, payload: bytes, arrived: int) -> list[object]:
            if "/api/stake/req/" in topic and payload:  # (not the coordinator's clearing of the topic)
                stamps.append(arrived)
            return receive(topic, payload, arrived)  # type: ignore[return-value]

        coord.group.receive = stamped  # type: ignore[method-assign]
        runner = asyncio.create_task(coord.run())
        asker = Signer(SigningKey.generate())
        try:
            await asyncio.wait_for(coord.ready.wait(), 10)
            proxy.hold.set()  # from now on no PUBACK reaches the coordinator
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
                await client.subscribe(t.api(t.Kind.API_RESP, SITE, GROUP, "stake", asker.node_id), qos=1)
                sent: list[int] = []
                for i in range(N):
                    # A non-member's call: the coordinator answers (refuses) with a QoS 1 publication
                    # from inside its read loop.
                    req = ApiRequest(txid=f"x{i}", method="stake", requester=asker.node_id)
                    topic = t.api(t.Kind.API_REQ, SITE, GROUP, "stake", asker.node_id)
                    sent.append(now_ms())
                    await client.publish(topic, asker.seal(req, now_ms()), qos=1)
                    await asyncio.sleep(0.1)
                answers: list[str] = []

                async def collect() -> None:
                    async for message in client.messages:
                        answers.append(message.topic.value)

                collector = asyncio.create_task(collect())
                try:
                    started = time.monotonic()
                    await eventually(lambda: len(stamps) == N, timeout=5, what="every request handled")
                    await eventually(lambda: len(answers) == N, timeout=5, what="every answer at the broker")
                    assert time.monotonic() - started < 5
                finally:
                    collector.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collector
            # Each request was stamped as it came, not after the previous answer's PUBACK (never coming).
            late = [stamp - at for stamp, at in zip(stamps, sent, strict=True)]
            assert all(0 <= ms < 2_000 for ms in late), late
            assert proxy.held >= N  # the answers' PUBACKs really were withheld
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner


async def test_send_queue_is_bounded_and_counts_what_it_refuses(mosquitto: Mosquitto) -> None:
    async with PubackProxy(mosquitto.port).running() as proxy:

        async def ignore(topic: str, payload: bytes) -> None:
            return None

        session = Session(
            f"mqtt://127.0.0.1:{proxy.port}", "bounded", handler=ignore, send_queue=3, send_window=2
        )
        runner = asyncio.create_task(session.run())
        try:
            await asyncio.wait_for(session.connected.wait(), 10)
            assert await session.publish("x/first", b"p", qos=1)
            assert await session.flush(within_s=5)  # sent and acknowledged
            proxy.hold.set()
            # Nothing waits for the broker: the first three are queued, the rest refused and counted.
            results = [await session.publish(f"x/{i}", b"p", qos=1) for i in range(6)]
            assert results == [True, True, True, False, False, False]
            assert session.refused_outgoing == 3
            # The sender hands two to the client (its window of unacknowledged publications), takes a
            # third in hand and waits for PUBACKs that never come: three places free up, no more.
            await asyncio.sleep(0.3)
            results = [await session.publish(f"y/{i}", b"p", qos=1) for i in range(4)]
            assert results == [True, True, True, False]
            assert session.refused_outgoing == 4
            assert await session.flush(within_s=0.2) is False  # the acknowledgements never come
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
