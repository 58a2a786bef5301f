"""Run a whole local group in one process: broker, coordinator and (for the demo) agents.

This module sits on the CLI's floor: it composes the roles (coordinator, node) and the I/O pieces
(broker launcher, dynamic security), which never import each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prsm_edge.coordinator.economy import EconomyConfig
from prsm_edge.coordinator.homeassistant import HomeAssistantOptions
from prsm_edge.coordinator.rollups import RollupOptions
from prsm_edge.coordinator.service import Coordinator, CoordinatorOptions
from prsm_edge.identity import load_or_create
from prsm_edge.io.broker import Prefer, RunningBroker, start_broker
from prsm_edge.io.brokerinfo import dashboard_dir
from prsm_edge.io.dynsec import DynSec
from prsm_edge.io.tpm_registration import default_ca_dir
from prsm_edge.protocol.membership import JoinPolicy
from prsm_edge.protocol.verifier import VerifierConfig

__all__ = ["GroupHost", "host_group"]

log = logging.getLogger(__name__)


@dataclass
class GroupHost:
    """A running broker and the coordinator beside it."""

    broker: RunningBroker
    coordinator: Coordinator
    dynsec: DynSec | None


@contextlib.asynccontextmanager
async def host_group(
    workdir: Path,
    *,
    site: str,
    group: str,
    host: str = "127.0.0.1",
    port: int = 0,
    ws_port: int | None = 0,
    prefer: Prefer = "auto",
    acl: bool = True,
    max_members: int = 200,
    heartbeat_timeout_s: float = 35.0,
    summary_interval_s: float = 10.0,
    http_dir: Path | None = None,
    verify: bool = True,
    verification: VerifierConfig | None = None,
    homeassistant: HomeAssistantOptions | None = None,
    join_policy: JoinPolicy | None = None,
    listen: bool = False,
    economy: EconomyConfig | None = None,
    tpm_ca_dir: Path | None = None,
    rollup: RollupOptions | None = None,
) -> AsyncIterator[GroupHost]:
    """Start a broker (with per-node ACLs when Mosquitto runs it) and a coordinator for it.

    The coordinator is created but not run: the caller runs ``host.coordinator.run()`` in its task group.
    Mosquitto's WebSocket listener serves the operator dashboard unless ``http_dir`` names another folder.
    ``tpm_ca_dir`` (default: ``tpm-ca`` in the config dir, absent unless the operator made it) holds the
    TPM manufacturer CAs whose EK certificates let a node's quotes earn hardware_attested.
    """
    if http_dir is None:
        http_dir = dashboard_dir()
    async with start_broker(
        workdir / "broker",
        host=host,
        port=port,
        ws_port=ws_port,
        prefer=prefer,
        acl=acl,
        http_dir=http_dir,
        expose_embedded=listen,
    ) as broker:
        identity = load_or_create(workdir / "coordinator")
        options = CoordinatorOptions(
            site=site,
            group=group,
            broker_url=broker.url,
            workdir=workdir / "coordinator",
            max_members=max_members,
            heartbeat_timeout_s=heartbeat_timeout_s,
            summary_interval_s=summary_interval_s,
            verify=verify,
            verification=verification,
            homeassistant=homeassistant,
            join_policy=join_policy or JoinPolicy(),
            economy=economy,
            tpm_ca_dir=tpm_ca_dir if tpm_ca_dir is not None else default_ca_dir(),
            rollup=rollup or RollupOptions(),
        )
        if not broker.acl_enforced:
            log.warning(
                "the %s broker does not enforce per-node ACLs: any client may publish on any topic; the "
                "coordinator still refuses messages not signed by the topic's owner",
                broker.kind,
            )
            yield GroupHost(broker, Coordinator(identity, options), None)
            return
        async with DynSec.for_broker(broker) as dynsec:
            await dynsec.setup_group(site, group)
            password = secrets.token_urlsafe(24)
            username = f"coord-{identity.node_id}"
            await dynsec.add_client(username, password, "prsm-coordinator")
            options = dataclasses.replace(options, username=username, password=password)
            yield GroupHost(broker, Coordinator(identity, options, issuer=dynsec), dynsec)
