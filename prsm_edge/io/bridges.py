"""The bridge folder of a broker this host runs, and restarting that broker when a bridge is added.

Mosquitto 2.0.11 cannot add (or change) a bridge while it runs: a bridge exists only from a restart.
A broker started by :func:`~prsm_edge.io.broker.start_broker` includes every ``*.conf`` in its
``bridges`` folder (``include_dir``, last in its configuration). ``prsm-edge gateway`` drops its rendered
bridge there with :func:`install_bridge` (written atomically, owner-only, and only when the text
changed); the process that owns the broker (``prsm-edge coordinate``) runs :func:`restart_on_change`,
which notices the new contents and restarts its broker once. Retained messages, sessions and their
queues persist through that restart (persistence is on, and SIGTERM saves them); clients reconnect.

A bridge file that Mosquitto refuses must not take the group down: if the restart fails, the files that
changed since the last good start are renamed ``*.conf.rejected`` (with an error in the log) and the
broker starts again without them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from prsm_edge.errors import BrokerError
from prsm_edge.io.broker import RunningBroker, bridge_files

__all__ = ["POLL_S", "bridge_files", "install_bridge", "remove_bridge", "restart_on_change"]

log = logging.getLogger(__name__)

POLL_S: Final = 1.0
_MAX_BRIDGE_BYTES: Final = 64 * 1024
_REJECTED: Final = ".rejected"


def install_bridge(folder: Path, name: str, text: str) -> bool:
    """Write bridge ``name`` (``NAME.conf``) into ``folder``; True if that changed what is there.

    Atomic (a temporary file renamed into place, so the broker's owner never sees half a file) and
    owner-only (the text may hold the uplink password). Unchanged text is left alone, so starting a
    gateway again does not restart the broker.
    """
    if not name or "/" in name or name.startswith("."):
        raise BrokerError(f"bad bridge name {name!r}")
    data = text.encode()
    if len(data) > _MAX_BRIDGE_BYTES:
        raise BrokerError(f"a bridge configuration of {len(data)} bytes is implausibly large")
    path = folder / f"{name}.conf"
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    if not folder.is_dir():
        raise BrokerError(
            f"{folder} does not exist: the broker was not started by `prsm-edge coordinate` (or by a "
            "version without bridge support); start it with `prsm-edge coordinate`, then run this again"
        )
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
    return True


def remove_bridge(folder: Path, name: str) -> bool:
    """Delete bridge ``name`` (``NAME.conf``) from ``folder``; True if it was there.

    The broker's owner (``prsm-edge coordinate``) sees the change and restarts its broker without it.
    """
    if not name or "/" in name or name.startswith("."):
        raise BrokerError(f"bad bridge name {name!r}")
    try:
        (folder / f"{name}.conf").unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BrokerError(f"cannot remove the bridge {folder / name}.conf: {exc.strerror}") from None
    return True


def _set_aside(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        try:
            path.replace(path.with_name(name + _REJECTED))
        except OSError as exc:
            log.error("could not set the refused bridge %s aside: %s", path, exc)


async def restart_on_change(
    broker: RunningBroker,
    *,
    poll_s: float = POLL_S,
    on_restart: Callable[[list[str]], Awaitable[None]] | None = None,
) -> None:
    """Restart ``broker`` whenever its bridge folder's ``*.conf`` files change; run until cancelled.

    ``on_restart`` (if given) is awaited after each restart with the changed files the broker now carries
    (empty when the change was a removal, or a refused file set aside).
    """
    folder = broker.bridge_dir
    if folder is None:
        return  # the embedded broker: no bridges
    known = broker.loaded_bridges  # what the broker read when it started, not what is there now
    if known:
        log.info("the broker carries the bridges %s", ", ".join(sorted(known)))
    while True:
        await asyncio.sleep(poll_s)
        current = await asyncio.to_thread(bridge_files, folder)
        if current == known:
            continue
        changed = sorted(n for n in current.keys() | known.keys() if current.get(n) != known.get(n))
        log.warning(
            "bridge configuration changed (%s): restarting the broker (Mosquitto 2.0.11 cannot add a "
            "bridge while it runs); clients reconnect within seconds",
            ", ".join(changed),
        )
        try:
            await broker.restart()
        except BrokerError as exc:
            fresh = [n for n in changed if n in current]
            log.error(
                "the broker refused the changed bridges %s, which are set aside as *%s: %s",
                ", ".join(fresh),
                _REJECTED,
                exc,
            )
            await asyncio.to_thread(_set_aside, folder, fresh)
            await broker.restart()  # without them; if even this fails, the caller sees it
        known = broker.loaded_bridges
        if on_restart is not None:
            await on_restart([n for n in changed if n in known])
