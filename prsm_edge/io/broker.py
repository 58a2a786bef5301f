"""Start and stop the MQTT broker a coordinator runs beside it.

Mosquitto when it is installed: its configuration is rendered from the templates in the package's
``broker`` folder into the working directory, with persistence, a log file, an optional WebSocket
listener and (``acl=True``) the dynamic-security plugin, whose admin credentials are generated here.
Only where no Mosquitto exists, the embedded amqtt broker serves as a single-machine fallback: MQTT 3.1.1
only, no access control, no persistence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from prsm_edge.errors import BrokerError
from prsm_edge.resources import data_path

__all__ = [
    "ADMIN_SECRET_FILE",
    "ADMIN_USERNAME",
    "BRIDGE_DIR",
    "RunningBroker",
    "bridge_files",
    "find_dynsec_plugin",
    "find_mosquitto",
    "start_broker",
    "write_dynsec_config",
]

log = logging.getLogger(__name__)

Prefer = Literal["auto", "mosquitto", "embedded"]

ADMIN_USERNAME: Final = "prsm-admin"
ADMIN_SECRET_FILE: Final = "admin.secret"  # the running broker's admin password, mode 0600
BRIDGE_DIR: Final = "bridges"  # the broker includes every *.conf here (bridges to the tier above)
MAX_QUEUED_MESSAGES: Final = 20000
MAX_PACKET_SIZE: Final = 256 * 1024
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
_PORT_ATTEMPTS: Final = 3
_LOG_TAIL_LINES: Final = 20
_PBKDF2_ITERATIONS: Final = 101  # what mosquitto_ctrl writes for dynsec clients
_INSTALL_HINT: Final = (
    "no MQTT broker is available: install mosquitto (apt-get install mosquitto), "
    "or pip install 'prsm-edge[embedded-broker]' for the single-machine fallback"
)
_EMBEDDED_LIMITS: Final = (
    "embedded amqtt broker: the single-machine fallback used because Mosquitto is not installed. "
    "It speaks MQTT 3.1.1 only (no MQTT 5), enforces no ACL (any client may publish or subscribe to any "
    "topic, so per-node topic ownership is checked only by the coordinator's signature checks), keeps "
    "retained messages and sessions in memory only (lost on restart), serves no static files on its "
    "WebSocket listener, and is not meant for a group spread over several machines; "
    "install mosquitto for production"
)
_EMBEDDED_LOOPBACK: Final = (
    "the embedded broker has no access control, so it listens on 127.0.0.1 only (asked for %s): only "
    "agents on this machine can join, and nobody on the LAN can publish a fake coordinator state or "
    "command into it. To let other machines join anyway, start it with --listen (listen = true), "
    "knowing that then anyone on the LAN may publish on any topic; install mosquitto instead"
)
_EMBEDDED_EXPOSED: Final = (
    "the embedded broker listens on %s with NO access control (--listen): anyone who can reach this "
    "address may publish on any topic, including retained coordinator states and commands; the "
    "coordinator and agents still refuse what is not signed by the right key"
)


def find_mosquitto() -> Path | None:
    """The mosquitto binary on PATH or in /usr/sbin, or None."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_dynsec_plugin() -> Path | None:
    """Mosquitto's ``mosquitto_dynamic_security.so`` in the usual library folders, or None."""
    name = "mosquitto_dynamic_security.so"
    multiarch = f"{os.uname().machine}-linux-gnu"
    if os.uname().machine.startswith("arm") and not os.uname().machine.startswith("arm64"):
        multiarch = "arm-linux-gnueabihf"
    folders = [
        Path("/usr/lib") / multiarch,
        Path("/usr/lib"),
        Path("/usr/local/lib"),
        Path("/usr/lib64"),
        Path("/usr/lib/mosquitto"),
    ]
    folders.extend(sorted(Path("/usr/lib").glob("*-linux-gnu*")))
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _hash_password(password: str, salt: bytes) -> str:
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    return base64.b64encode(digest).decode()


def _admin_client(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(12)
    return {
        "username": ADMIN_USERNAME,
        "textName": "prsm-edge coordinator (dynamic security admin)",
        "password": _hash_password(password, salt),
        "salt": base64.b64encode(salt).decode(),
        "iterations": _PBKDF2_ITERATIONS,
        "roles": [{"rolename": "admin"}],
    }


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _admin_role() -> dict[str, Any]:
    return {
        "rolename": "admin",
        "acls": [
            _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
            _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
            _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
            _acl("publishClientReceive", "$SYS/#"),
            _acl("subscribePattern", "$SYS/#"),
            _acl("publishClientReceive", "#"),
            _acl("subscribePattern", "#"),
            _acl("unsubscribePattern", "#"),
        ],
    }


def write_dynsec_config(path: Path, admin_password: str) -> None:
    """Write a fresh dynamic-security file (mosquitto_ctrl's format) with one admin client."""
    config = {
        "clients": [_admin_client(admin_password)],
        "roles": [_admin_role()],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    _write_private(path, json.dumps(config, indent="\t"))


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _prepare_dynsec(path: Path, ctrl: Path | None) -> str:
    """Create or update ``path`` so that the admin client has a new random password; return it."""
    password = secrets.token_urlsafe(24)
    if not path.exists():
        if ctrl is not None:
            result = subprocess.run(
                [str(ctrl), "dynsec", "init", str(path), ADMIN_USERNAME, password],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if result.returncode != 0:
                raise BrokerError(f"mosquitto_ctrl dynsec init failed: {result.stderr.strip()[-500:]}")
            path.chmod(0o600)
        else:
            write_dynsec_config(path, password)
        return password
    # An existing file (a coordinator restart): keep its clients and roles, rotate the admin password.
    try:
        config = json.loads(path.read_text())
        clients = config.setdefault("clients", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise BrokerError(f"the dynamic-security file {path} is unreadable: {exc}") from exc
    admin = _admin_client(password)
    for i, client in enumerate(clients):
        if isinstance(client, dict) and client.get("username") == ADMIN_USERNAME:
            clients[i] = {**client, **{k: admin[k] for k in ("password", "salt", "iterations")}}
            break
    else:
        clients.append(admin)
        roles = config.setdefault("roles", [])
        if not any(isinstance(r, dict) and r.get("rolename") == "admin" for r in roles):
            roles.append(_admin_role())
    _write_private(path, json.dumps(config, indent="\t"))
    return password


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    """True if something listens on ``port`` (a bind with SO_REUSEADDR fails only then)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def bridge_files(folder: Path) -> dict[str, str]:
    """``{file name: sha256 of its contents}`` of every ``*.conf`` Mosquitto includes from ``folder``."""
    found: dict[str, str] = {}
    try:
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(".conf") and p.is_file())
    except OSError:
        return found
    for path in paths:
        try:
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue  # removed between listing and reading: the next look sees the truth
    return found


def _set_pdeathsig() -> None:
    """In the child: die with the parent, so a crashed coordinator leaks no broker (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Backend(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _MosquittoProcess:
    """One mosquitto process on a rendered configuration file."""

    def __init__(self, binary: Path, config: Path, out_path: Path, log_path: Path) -> None:
        self.binary = binary
        self.config = config
        self.out_path = out_path
        self.log_path = log_path
        self.host = "127.0.0.1"
        self.ports: list[int] = []
        self.process: asyncio.subprocess.Process | None = None
        self.bridge_dir: Path | None = None
        self.loaded_bridges: dict[str, str] = {}  # what the running process read from bridge_dir

    def failure_text(self) -> str:
        parts = [t for t in (_tail(self.out_path), _tail(self.log_path)) if t]
        return "\n".join(parts) or "(the broker wrote nothing)"

    async def start(self) -> None:
        if self.bridge_dir is not None:
            self.loaded_bridges = bridge_files(self.bridge_dir)  # before the process reads the folder
        with self.out_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                str(self.binary),
                "-c",
                str(self.config),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_set_pdeathsig,
            )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()  # never leave a half-started broker behind (timeouts, cancellation)
            raise

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(self.ports)
        while pending and self.process.returncode is None:
            if await _accepts(self.host, pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept connections on port {pending[0]} within "
                    f"{START_TIMEOUT_S:.0f} s; its log ends:\n{self.failure_text()}"
                )
            await asyncio.sleep(0.05)
        if self.process.returncode is None:
            # Something else may hold a port and have answered for it: a broker that lost the bind exits.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.process.wait()), 0.05)
        if self.process.returncode is not None:
            code = self.process.returncode
            raise BrokerError(f"mosquitto exited with status {code}; its log ends:\n{self.failure_text()}")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "mosquitto (pid %d) ignored SIGTERM for %.0f s; killing it", process.pid, STOP_TIMEOUT_S
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class _EmbeddedBroker:
    """The in-process amqtt broker."""

    def __init__(self, host: str, port: int, ws_port: int | None) -> None:
        self.config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        if ws_port is not None:
            self.config["listeners"]["ws"] = {"type": "ws", "bind": f"{host}:{ws_port}"}
        self.broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker  # optional dependency

        broker = Broker(json.loads(json.dumps(self.config)))
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps listener failures in its own BrokerError
            raise BrokerError(f"the embedded amqtt broker failed to start: {exc}") from exc
        self.broker = broker

    async def stop(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            await broker.shutdown()


class RunningBroker:
    """A started broker: where it listens, how to administer it, and how to restart or stop it."""

    def __init__(
        self,
        *,
        kind: Literal["mosquitto", "embedded"],
        host: str,
        port: int,
        ws_port: int | None,
        workdir: Path,
        backend: _Backend,
        admin_username: str | None = None,
        admin_password: str | None = None,
        acl_enforced: bool = False,
        log_path: Path | None = None,
        config_path: Path | None = None,
        dynsec_path: Path | None = None,
        bridge_dir: Path | None = None,
    ) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.ws_port = ws_port
        self.workdir = workdir
        self.admin_username = admin_username
        self.admin_password = admin_password
        self.acl_enforced = acl_enforced
        self.log_path = log_path
        self.config_path = config_path
        self.dynsec_path = dynsec_path
        self.bridge_dir = bridge_dir  # Mosquitto includes bridges from here; None for the embedded broker
        self._backend = backend
        self._running = True

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for clients on this machine or the LAN."""
        return f"mqtt://{self._client_host}:{self.port}"

    @property
    def ws_url(self) -> str | None:
        """``ws://host:port/mqtt`` for the dashboard, or None without a WebSocket listener."""
        return None if self.ws_port is None else f"ws://{self._client_host}:{self.ws_port}/mqtt"

    @property
    def connect_host(self) -> str:
        """The address a client on this machine connects to (127.0.0.1 for a wildcard bind)."""
        return _connect_host(self.host)

    @property
    def _client_host(self) -> str:
        host = self.connect_host
        return f"[{host}]" if ":" in host else host

    @property
    def pid(self) -> int | None:
        """The broker's process id (Mosquitto), or None (embedded, or stopped)."""
        process = getattr(self._backend, "process", None)
        return None if process is None else int(process.pid)

    @property
    def loaded_bridges(self) -> dict[str, str]:
        """The bridge files (name: sha256) the running broker read at its last (re)start."""
        return dict(getattr(self._backend, "loaded_bridges", {}))

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._running

    async def restart(self) -> None:
        """Stop and start again on the same ports with the same persistence and security state."""
        log.info("restarting the %s broker on port %d", self.kind, self.port)
        await self._backend.stop()
        self._running = False
        await self._backend.start()
        self._running = True

    async def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace period); idempotent."""
        if self._running:
            log.info("stopping the %s broker on port %d", self.kind, self.port)
        self._running = False
        await self._backend.stop()

    def __repr__(self) -> str:
        return f"RunningBroker(kind={self.kind!r}, url={self.url!r}, ws_port={self.ws_port!r})"


def _render(template: str, **values: object) -> str:
    text = (data_path("broker") / template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def _write_config(
    config_path: Path,
    *,
    user: str,
    workdir: Path,
    log_path: Path,
    host: str,
    port: int,
    ws_port: int | None,
    http_dir: Path | None,
    plugin: Path | None,
    dynsec_path: Path,
    bridge_dir: Path,
) -> None:
    websockets = ""
    if ws_port is not None:
        websockets = _render(
            "websockets.conf.template",
            ws_port=ws_port,
            host=host,
            http_dir=f"http_dir {http_dir.resolve()}" if http_dir is not None else "",
        )
    security = ""
    if plugin is not None:
        security = _render("dynsec.conf.template", plugin=plugin, config_file=dynsec_path)
    config_path.write_text(
        _render(
            "mosquitto.conf.template",
            user=user,
            workdir=workdir,
            max_queued_messages=MAX_QUEUED_MESSAGES,
            max_packet_size=MAX_PACKET_SIZE,
            log_path=log_path,
            allow_anonymous="true",
            port=port,
            host=host,
            websockets=websockets,
            security=security,
            bridge_dir=bridge_dir,
        )
    )


async def _start_mosquitto(
    binary: Path,
    workdir: Path,
    *,
    host: str,
    port: int,
    ws_port: int | None,
    acl: bool,
    http_dir: Path | None,
) -> RunningBroker:
    plugin: Path | None = None
    admin_password: str | None = None
    dynsec_path = workdir / "dynamic-security.json"
    if acl:
        plugin = find_dynsec_plugin()
        if plugin is None:
            raise BrokerError(
                "mosquitto is installed but its dynamic-security plugin (mosquitto_dynamic_security.so) "
                "was not found; install Debian's full mosquitto package or start the broker with acl=False"
            )
        ctrl = shutil.which("mosquitto_ctrl")
        admin_password = await asyncio.to_thread(_prepare_dynsec, dynsec_path, Path(ctrl) if ctrl else None)
        # Owner-only, beside the dynsec file: lets this host's CLI (`prsm-edge viewer`) administer logins.
        await asyncio.to_thread(_write_private, workdir / ADMIN_SECRET_FILE, admin_password)
    log_path = workdir / "mosquitto.log"
    config_path = workdir / "mosquitto.conf"
    bridge_dir = workdir / BRIDGE_DIR
    await asyncio.to_thread(bridge_dir.mkdir, 0o700, exist_ok=True)
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name  # not $USER: under sudo that names someone else
    except KeyError:
        user = "root" if os.geteuid() == 0 else "mosquitto"
    last_error: BrokerError | None = None
    for _attempt in range(_PORT_ATTEMPTS):
        mqtt_port = port or _free_port(host)
        web_port = None if ws_port is None else (ws_port or _free_port(host))
        for wanted in (port, ws_port):
            if wanted and _port_in_use(host, wanted):
                raise BrokerError(f"port {wanted} on {host} is in use by another program; choose another")
        _write_config(
            config_path,
            user=user,
            workdir=workdir,
            log_path=log_path,
            host=host,
            port=mqtt_port,
            ws_port=web_port,
            http_dir=http_dir,
            plugin=plugin,
            dynsec_path=dynsec_path,
            bridge_dir=bridge_dir,
        )
        process = _MosquittoProcess(binary, config_path, workdir / "mosquitto.out", log_path)
        process.host = _connect_host(host)
        process.ports = [mqtt_port] + ([web_port] if web_port is not None else [])
        process.bridge_dir = bridge_dir
        try:
            await process.start()
        except BrokerError as exc:
            last_error = exc
            auto = port == 0 or ws_port == 0
            if auto and "Address already in use" in str(exc):
                log.info("a picked port was taken before mosquitto bound it; trying others")
                continue
            raise
        log.info("mosquitto listens on %s:%d (websockets: %s, acl: %s)", host, mqtt_port, web_port, acl)
        return RunningBroker(
            kind="mosquitto",
            host=host,
            port=mqtt_port,
            ws_port=web_port,
            workdir=workdir,
            backend=process,
            admin_username=ADMIN_USERNAME if acl else None,
            admin_password=admin_password,
            acl_enforced=acl,
            log_path=log_path,
            config_path=config_path,
            dynsec_path=dynsec_path if acl else None,
            bridge_dir=bridge_dir,
        )
    assert last_error is not None
    raise last_error


def _ready_dir(path: Path) -> Path:
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _amqtt_available() -> bool:
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


async def _start_embedded(workdir: Path, *, host: str, port: int, ws_port: int | None) -> RunningBroker:
    log.warning(_EMBEDDED_LIMITS)
    mqtt_port = port or _free_port(host)
    web_port = None if ws_port is None else (ws_port or _free_port(host))
    backend = _EmbeddedBroker(host, mqtt_port, web_port)
    await backend.start()
    return RunningBroker(
        kind="embedded",
        host=host,
        port=mqtt_port,
        ws_port=web_port,
        workdir=workdir,
        backend=backend,
    )


def start_broker(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ws_port: int | None = 0,
    prefer: Prefer = "auto",
    acl: bool = True,
    http_dir: Path | None = None,
    expose_embedded: bool = False,
) -> AbstractAsyncContextManager[RunningBroker]:
    """Run a broker for a coordinator while the context is open (port 0: pick a free one).

    The embedded fallback (no ACLs) binds to 127.0.0.1 whatever ``host`` says, unless
    ``expose_embedded`` (the user's ``--listen``) asks for ``host``.
    """
    return _broker_context(
        workdir,
        host=host,
        port=port,
        ws_port=ws_port,
        prefer=prefer,
        acl=acl,
        http_dir=http_dir,
        expose_embedded=expose_embedded,
    )


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


@contextlib.asynccontextmanager
async def _broker_context(
    workdir: Path,
    *,
    host: str,
    port: int,
    ws_port: int | None,
    prefer: Prefer,
    acl: bool,
    http_dir: Path | None,
    expose_embedded: bool,
) -> AsyncIterator[RunningBroker]:
    workdir = await asyncio.to_thread(_ready_dir, workdir)
    binary = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if binary is not None:
        broker = await _start_mosquitto(
            binary, workdir, host=host, port=port, ws_port=ws_port, acl=acl, http_dir=http_dir
        )
    elif prefer == "mosquitto":
        raise BrokerError("mosquitto is not installed: apt-get install mosquitto")
    elif _amqtt_available():
        if _is_loopback(host):
            pass
        elif expose_embedded:
            log.warning(_EMBEDDED_EXPOSED, host)
        else:
            log.warning(_EMBEDDED_LOOPBACK, host)
            host = "127.0.0.1"
        broker = await _start_embedded(workdir, host=host, port=port, ws_port=ws_port)
    else:
        raise BrokerError(_INSTALL_HINT)
    try:
        yield broker
    finally:
        await broker.stop()
