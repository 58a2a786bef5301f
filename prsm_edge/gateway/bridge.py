"""Render the Mosquitto bridge that carries a group's plain relay to its region's broker."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from prsm_edge.errors import ConfigError
from prsm_edge.io.dynsec import REGION_METHODS
from prsm_edge.io.session import parse_url
from prsm_edge.protocol import topics
from prsm_edge.resources import data_path

__all__ = ["BRIDGED_METHODS", "render_bridge"]

BRIDGED_METHODS = REGION_METHODS


def render_bridge(
    *,
    site: str,
    group: str,
    gateway: str,
    region_site: str,
    region: str,
    uplinks: Sequence[str],
    username: str | None = None,
    password: str | None = None,
    local_username: str | None = None,
    restart_base_s: int = 2,
    restart_cap_s: int = 60,
    keepalive_s: int = 30,
) -> str:
    """The bridge section for the group broker's configuration.

    ``local_username`` names the login whose dynamic-security roles the bridge's publications into the
    group broker are checked against (the gateway's, on a broker that ``prsm-edge coordinate`` runs);
    without it, on an ACL'd broker, the bridge is anonymous and what comes down is dropped.
    """
    if not uplinks:
        raise ConfigError("the bridge needs at least one uplink address (--uplink mqtt://HOST:PORT)")
    if not 1 <= restart_base_s <= restart_cap_s:
        raise ConfigError("restart_timeout needs 1 <= BASE <= CAP seconds")
    if not (topics.valid_segment(site) and topics.valid_segment(group)):
        raise ConfigError("site and group must be 1–64 characters of a-z, 0-9, '_' or '-'")
    addresses = []
    for url in uplinks:
        address = parse_url(url)
        if address.transport != "tcp":
            raise ConfigError(f"a Mosquitto bridge connects over MQTT/TCP, not {url!r}")
        addresses.append(f"{address.host}:{address.port}")
    credentials = ""
    if username:
        credentials = f"remote_username {username}\n" + (f"remote_password {password}\n" if password else "")
    if local_username:
        credentials += f"local_username {local_username}\n"
    if any(c in (username or "") + (password or "") + (local_username or "") for c in "\n\r "):
        raise ConfigError("bridge credentials may not contain spaces or line breaks")
    text = (data_path("broker") / "bridge.conf.template").read_text()
    return string.Template(text).substitute(
        name=f"prsm-{site}-{group}",
        addresses=" ".join(addresses),
        remote_clientid=f"bridge-{site}-{group}",
        local_clientid=f"bridge-{site}-{group}-local",
        keepalive=keepalive_s,
        restart_base=restart_base_s,
        restart_cap=restart_cap_s,
        notification_topic=topics.gateway_bridge(site, gateway),
        credentials=credentials,
        local_prefix=f"{topics.ROOT}/{site}/{group}/",
        remote_prefix=topics.unit_prefix(region_site, region, site, group),
    )


def write_bridge(path: Path, text: str) -> None:
    """Write the rendered bridge (owner-only: it may hold the uplink password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
