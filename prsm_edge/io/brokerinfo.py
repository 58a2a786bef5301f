"""Facts about a broker this host runs for a coordinator, read from its working folder.

``prsm-edge coordinate`` renders ``mosquitto.conf`` into ``<workdir>/coordinator/<group>/broker`` and keeps
the running broker's dynamic-security admin password beside it (``admin.secret``, owner-only). The
``viewer`` command reads both to reach the broker as its administrator; the rendered configuration is the
one source of truth for the ports (nothing copies them elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prsm_edge.errors import LocalError
from prsm_edge.io.broker import ADMIN_SECRET_FILE, ADMIN_USERNAME
from prsm_edge.resources import data_path

__all__ = ["LocalBroker", "broker_folder", "dashboard_dir", "owner_panel_dir", "read_local_broker"]

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def dashboard_dir() -> Path | None:
    """The folder holding the built dashboard (``index.html``) shipped with the package, or None."""
    try:
        folder = data_path("gateway") / "dashboard" / "dist"
    except LocalError:
        return None
    return folder if (folder / "index.html").is_file() else None


def owner_panel_dir() -> Path | None:
    """The folder holding the built owner panel, which the agent's local API serves under ``/ui/``."""
    folder = dashboard_dir()
    panel = None if folder is None else folder / "owner"
    return panel if panel is not None and (panel / "index.html").is_file() else None


def broker_folder(data_dir: Path, group: str) -> Path:
    """Where ``prsm-edge coordinate --group GROUP`` keeps its broker's files under ``data_dir``."""
    return data_dir / "coordinator" / group / "broker"


@dataclass(frozen=True, slots=True)
class LocalBroker:
    """Where a locally run Mosquitto listens and how to administer it."""

    host: str
    port: int
    ws_port: int | None
    admin_username: str
    admin_password: str
    serves_dashboard: bool

    @property
    def connect_host(self) -> str:
        """The address a client on this host uses (loopback for a wildcard listener)."""
        return _WILDCARDS.get(self.host, self.host)


def _listeners(config: str) -> tuple[list[tuple[int, str, str]], bool]:
    """(port, host, protocol) of every listener in a Mosquitto configuration, and whether http_dir is set."""
    found: list[tuple[int, str, str]] = []
    http_dir = False
    for raw in config.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "listener" and len(words) >= 2 and words[1].isdigit():
            found.append((int(words[1]), words[2] if len(words) > 2 else "", "mqtt"))
        elif words[0] == "protocol" and len(words) == 2 and found:
            port, host, _ = found[-1]
            found[-1] = (port, host, words[1])
        elif words[0] == "http_dir":
            http_dir = True
    return found, http_dir


def read_local_broker(folder: Path) -> LocalBroker:
    """Read the broker's rendered configuration and admin secret from ``folder``."""
    config_path, secret_path = folder / "mosquitto.conf", folder / ADMIN_SECRET_FILE
    try:
        config = config_path.read_text()
    except OSError as exc:
        raise LocalError(
            f"no broker configuration at {config_path} ({exc.strerror}); run this on the host that runs "
            "`prsm-edge coordinate`, with the same --group and --workdir"
        ) from None
    try:
        password = secret_path.read_text().strip()
    except OSError as exc:
        raise LocalError(
            f"cannot read the broker's admin secret {secret_path} ({exc.strerror}): the broker runs without "
            "dynamic security (the embedded fallback), or as another user (run this as that user)"
        ) from None
    listeners, http_dir = _listeners(config)
    mqtt = [(p, h) for p, h, proto in listeners if proto == "mqtt"]
    ws = [(p, h) for p, h, proto in listeners if proto == "websockets"]
    if not mqtt:
        raise LocalError(f"{config_path} has no MQTT listener")
    return LocalBroker(
        host=mqtt[0][1],
        port=mqtt[0][0],
        ws_port=ws[0][0] if ws else None,
        admin_username=ADMIN_USERNAME,
        admin_password=password,
        serves_dashboard=http_dir and bool(ws),
    )
