"""The coordinator's broker launcher on a real Mosquitto (and the amqtt fallback)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import urllib.request
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.errors import BrokerError
from prsm_edge.io import broker as broker_mod
from prsm_edge.io.broker import RunningBroker, start_broker, write_dynsec_config
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.integration


@pytest.fixture
def mosquitto_installed() -> str:
    return require_mosquitto()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _client(b: RunningBroker, name: str, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client(b.connect_host, b.port, identifier=name, **kw)  # type: ignore[arg-type]


async def _next_message(client: aiomqtt.Client, timeout: float = 3.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return message
    raise AssertionError("the message stream ended")


async def test_mosquitto_starts_with_its_config_admin_and_stops_without_leaking(
    mosquitto_installed: str, tmp_path: Path
) -> None:
    work = tmp_path / "coord"
    async with start_broker(work) as b:
        assert b.kind == "mosquitto" and b.acl_enforced
        assert b.url == f"mqtt://127.0.0.1:{b.port}" and b.ws_port is not None
        assert _accepts(b.port) and _accepts(b.ws_port)
        pid = b.pid
        assert pid is not None and _alive(pid)
        conf = (work / "mosquitto.conf").read_text()
        for line in (
            f"listener {b.port} 127.0.0.1",
            f"listener {b.ws_port} 127.0.0.1",
            "protocol websockets",
            "max_queued_messages 20000",
            f"persistence_location {work.resolve()}/",
            "plugin_opt_config_file",
            "mosquitto_dynamic_security.so",
        ):
            assert line in conf
        dynsec = work / "dynamic-security.json"
        assert stat.S_IMODE(dynsec.stat().st_mode) == 0o600
        assert b.admin_username and b.admin_password and b.admin_password not in dynsec.read_text()
        # The admin may use the control topic; an anonymous client gets nothing by default.
        async with _client(b, "admin", username=b.admin_username, password=b.admin_password) as admin:
            await admin.subscribe("$CONTROL/dynamic-security/v1/response")
        assert b.log_path is not None and "mosquitto version" in b.log_path.read_text()
    assert not _alive(pid), "mosquitto outlived its context"
    assert not _accepts(b.port)
    await b.stop()  # idempotent


async def test_retained_and_queued_messages_survive_a_restart(
    mosquitto_installed: str, tmp_path: Path
) -> None:
    async with start_broker(tmp_path / "coord", acl=False, ws_port=None) as b:
        assert b.ws_port is None and not b.acl_enforced and b.admin_password is None
        old_pid = b.pid
        # A persistent QoS 1 session that is offline when the message arrives.
        async with _client(b, "sleeper", clean_session=False) as sleeper:
            await sleeper.subscribe("prsm/v1/lab/g/queued", qos=1)
        async with _client(b, "pub") as pub:
            await pub.publish("prsm/v1/lab/g/coord/state", b"online", qos=1, retain=True)
            await pub.publish("prsm/v1/lab/g/queued", b"while-away", qos=1)
        port = b.port
        await b.restart()
        assert b.port == port and b.pid != old_pid and old_pid is not None and not _alive(old_pid)
        async with _client(b, "reader") as reader:
            await reader.subscribe("prsm/v1/lab/g/coord/state", qos=1)
            message = await _next_message(reader)
            assert message.payload == b"online" and message.retain
        async with _client(b, "sleeper", clean_session=False) as sleeper:
            message = await _next_message(sleeper)
            assert str(message.topic) == "prsm/v1/lab/g/queued" and message.payload == b"while-away"


async def test_websocket_listener_carries_mqtt_and_serves_http_dir(
    mosquitto_installed: str, tmp_path: Path
) -> None:
    site = tmp_path / "dashboard"
    site.mkdir()
    (site / "index.html").write_text("<h1>prsm dashboard</h1>")
    async with start_broker(tmp_path / "coord", acl=False, http_dir=site) as b:
        assert b.ws_port is not None and b.ws_url == f"ws://127.0.0.1:{b.ws_port}/mqtt"
        async with (
            _client(b, "tcp-sub") as sub,
            aiomqtt.Client(
                b.connect_host, b.ws_port, identifier="ws-pub", transport="websockets", websocket_path="/mqtt"
            ) as ws,
        ):
            await sub.subscribe("prsm/v1/lab/g/summary", qos=1)
            await ws.publish("prsm/v1/lab/g/summary", b"over-ws", qos=1)
            assert (await _next_message(sub)).payload == b"over-ws"
        url = f"http://127.0.0.1:{b.ws_port}/index.html"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=3).read())
        assert b"prsm dashboard" in body


async def test_a_hand_written_dynsec_file_loads_and_its_admin_password_is_rotated(
    mosquitto_installed: str, tmp_path: Path
) -> None:
    work = tmp_path / "coord"
    work.mkdir()
    write_dynsec_config(work / "dynamic-security.json", "first-password")
    async with start_broker(work, ws_port=None) as b:
        assert b.admin_password != "first-password"
        async with _client(b, "admin", username=b.admin_username, password=b.admin_password) as admin:
            await admin.subscribe("$CONTROL/dynamic-security/v1/response")
        with pytest.raises(aiomqtt.MqttError):
            async with _client(b, "old", username=b.admin_username, password="first-password"):
                pass


async def test_a_taken_port_is_refused(mosquitto_installed: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is in use"):
            async with start_broker(tmp_path / "coord", port=port, ws_port=None):
                pass


async def test_a_broker_that_exits_fails_with_its_log_tail(
    mosquitto_installed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_mod, "MAX_PACKET_SIZE", -5)  # a value Mosquitto rejects at start
    with pytest.raises(BrokerError, match="exited with status") as info:
        async with start_broker(tmp_path / "coord", ws_port=None):
            pass
    assert "max_packet_size" in str(info.value)


async def test_stop_kills_a_broker_that_ignores_sigterm(
    mosquitto_installed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(broker_mod, "STOP_TIMEOUT_S", 0.3)
    async with start_broker(tmp_path / "coord", acl=False, ws_port=None) as b:
        pid = b.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
        with caplog.at_level(logging.WARNING, logger="prsm_edge.io.broker"):
            await b.stop()
        assert not _alive(pid)
        assert "killing it" in caplog.text


async def test_without_mosquitto_or_amqtt_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    monkeypatch.setattr(broker_mod, "_amqtt_available", lambda: False)
    with pytest.raises(BrokerError, match=r"apt-get install mosquitto.*prsm-edge\[embedded-broker\]"):
        async with start_broker(tmp_path / "coord"):
            pass
    with pytest.raises(BrokerError, match="mosquitto is not installed"):
        async with start_broker(tmp_path / "coord", prefer="mosquitto"):
            pass


async def test_embedded_fallback_relays_and_warns_what_it_cannot_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip(
        "amqtt.broker", reason="amqtt is not installed (pip install 'prsm-edge[embedded-broker]')"
    )
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)  # 'auto' where Mosquitto is absent
    with caplog.at_level(logging.WARNING, logger="prsm_edge.io.broker"):
        async with start_broker(tmp_path / "coord") as b:
            assert b.kind == "embedded" and not b.acl_enforced
            assert b.admin_username is None and b.admin_password is None and b.pid is None
            assert b.ws_port is not None and _accepts(b.ws_port)
            for _ in range(2):  # before and after a restart on the same port
                async with _client(b, "emb-sub") as sub, _client(b, "emb-pub") as pub:
                    await sub.subscribe("prsm/v1/lab/g/node/n1/birth", qos=1)
                    await pub.publish("prsm/v1/lab/g/node/n1/birth", b"hello", qos=1)
                    assert (await _next_message(sub)).payload == b"hello"
                    ws = aiomqtt.Client(
                        b.connect_host,
                        b.ws_port,
                        identifier="emb-ws",
                        transport="websockets",
                        websocket_path="/",
                    )
                    async with ws:
                        await ws.publish("prsm/v1/lab/g/node/n1/birth", b"over-ws", qos=1)
                    assert (await _next_message(sub)).payload == b"over-ws"
                await b.restart()
        assert not _accepts(b.port)
    warning = caplog.text
    for limit in ("MQTT 3.1.1 only", "no ACL", "in memory only", "install mosquitto"):
        assert limit in warning
