"""``prsm-edge join``: contribute this device to a group on the LAN (found by mDNS, or founded)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prsm_edge import paths
from prsm_edge.autoform import AutoNode, FormationOptions
from prsm_edge.errors import PrsmEdgeError
from prsm_edge.io import attest
from prsm_edge.io.brokerinfo import owner_panel_dir
from prsm_edge.node.agent import AgentOptions
from prsm_edge.node.detect import detect
from prsm_edge.node.owner_api import DEFAULT_LOCAL_PORT, OwnerOptions
from prsm_edge.node.profiles import resolve
from prsm_edge.node.prover import Attestor, tpm_attestor
from prsm_edge.protocol.formation import LeaderPolicy
from prsm_edge.protocol.membership import JoinPolicy, parse_token
from prsm_edge.protocol.offer import offered
from prsm_edge.settings import settings_path


def register(sub: Any) -> None:
    """Add the ``join`` command."""
    parser = sub.add_parser(
        "join",
        help="contribute this device: find a group on the LAN and join it (or found one)",
        description=(
            "Detect this device, apply the owner's settings (offered capacity = detected capacity x "
            "allocation percentage; limits on temperature, power and battery hold capacity back), then "
            "look for prsm groups on the LAN with mDNS and join the best one (own site first, then the "
            "least loaded). With no group in reach and allow_coordinate set, found one: start a broker "
            "and a coordinator here. With --broker, skip discovery and join that broker's group. Ctrl-C "
            "leaves gracefully (the group sees 'offline' at once)."
        ),
    )
    parser.add_argument("--broker", default=None, help="join the group at this broker URL (mqtt://HOST:PORT)")
    parser.add_argument("--group", default=None, help="group name (with --broker, or the name to found)")
    parser.add_argument("--site", default=None, help="site name (default: from settings)")
    parser.add_argument(
        "--no-coordinate", action="store_true", help="never found a group; wait for one to appear"
    )
    parser.add_argument(
        "--interface",
        action="append",
        default=None,
        metavar="IP",
        help="mDNS/broker interface address (repeat)",
    )
    parser.add_argument("--discover-seconds", type=float, default=4.0, help="how long to browse (default 4)")
    parser.add_argument("--workdir", type=Path, default=None, help="state folder (default: the data dir)")
    parser.add_argument(
        "--no-attest", action="store_true", help="do not offer TPM attestation even where a TPM is present"
    )
    parser.add_argument(
        "--local-api-port",
        type=int,
        default=DEFAULT_LOCAL_PORT,
        help=f"the owner's local API on 127.0.0.1 (default {DEFAULT_LOCAL_PORT}; 0: any free port; -1: off)",
    )
    parser.add_argument(
        "--token", default=None, help="enrolment token from the group's host (join policy 'token')"
    )
    parser.add_argument(
        "--follow",
        choices=("pinned", "verified", "never"),
        default=None,
        help="whom a group this node founds yields to: pinned (only keys in coordinator_keys; default), "
        "verified (any rival whose claims its own broker confirms) or never",
    )
    parser.add_argument(
        "--listen",
        action="store_true",
        help="if this node founds a group on the embedded broker (no ACLs), let it listen on the LAN",
    )
    parser.set_defaults(handler=_run)


def _attestor(workdir: Path) -> Attestor | None:
    """This device's TPM attestation key, or None (with the reason) where it has no usable TPM."""
    availability = attest.tpm_available(None)
    if not availability.supported:
        print(f"hardware attestation: not available ({availability.reason})", file=sys.stderr)
        return None
    try:
        return tpm_attestor(workdir / "attestation")
    except PrsmEdgeError as exc:
        print(f"hardware attestation: not available ({exc})", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    resolved = resolve(detect())
    s = resolved.settings
    site = args.site or s.site
    workdir = args.workdir or paths.data_dir()
    resources = offered(resolved.detected.resource_specs(), s.allocations())
    agent = AgentOptions(
        site=site,
        group=s.group or "g1",
        broker_url=args.broker or s.broker_url or "mqtt://127.0.0.1:1883",
        workdir=workdir,
        resources=resources,
        device_class=resolved.profile.name,
        hw_fingerprint=resolved.detected.hw_fingerprint(),
        heartbeat_interval_s=s.heartbeat_interval_s,
        guardrails=s.guardrails(),
        can_coordinate=s.allow_coordinate,
        security_level=s.security_level,
        min_hourly_rate_micro=s.min_hourly_rate_micro,
        uptime_commitment=s.uptime_commitment,
        join_token=args.token or s.join_token,
        trusted_coordinators=s.trusted_coordinators,
        priority_level=s.priority_level,
        owner=OwnerOptions(
            settings=s,
            settings_path=settings_path(),
            detected=resolved.detected.resource_specs(),
            local_port=None if args.local_api_port < 0 else args.local_api_port,
            static_dir=owner_panel_dir(),  # the owner panel, at /ui/
        ),
    )
    if agent.join_token:
        parse_token(agent.join_token)  # a mistyped token fails here, with what to do, not at the host
    if not args.no_attest:
        agent = replace(agent, attestor=_attestor(workdir))
    options = FormationOptions(
        site=site,
        workdir=workdir,
        agent=agent,
        allow_coordinate=s.allow_coordinate and not args.no_coordinate,
        broker_url=args.broker or s.broker_url,
        group=args.group or s.group,
        interfaces=args.interface,
        discover_s=args.discover_seconds,
        leader=LeaderPolicy(mode=args.follow or s.leader_policy, trusted=s.trusted_coordinators),
        join_policy=JoinPolicy(
            name=s.join_policy,
            rate_per_min=s.join_rate_per_min,
            evict_after_ms=int(s.evict_after_days * 86_400_000),
        ),
        listen=args.listen or s.listen,
    )
    node = AutoNode(options, on_event=lambda text: print(text, file=sys.stderr, flush=True))
    summary = ", ".join(f"{r.capacity:g} {r.unit} {r.type.value}" for r in resources) or "nothing"
    print(f"node {node.node_id} ({resolved.profile.name}) offers {summary}", file=sys.stderr, flush=True)
    try:
        asyncio.run(node.run())
    except KeyboardInterrupt:
        print("left the group.", file=sys.stderr)
    return 0
