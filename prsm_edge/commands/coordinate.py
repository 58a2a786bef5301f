"""``prsm-edge coordinate``: host a group — broker, coordinator, LAN announcement — on this machine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any

from prsm_edge import paths, settings
from prsm_edge.coordinator.homeassistant import HomeAssistantOptions
from prsm_edge.coordinator.service import Coordinator, CoordinatorOptions
from prsm_edge.identity import load_or_create
from prsm_edge.io.bridges import restart_on_change
from prsm_edge.io.discovery import Advertiser
from prsm_edge.io.session import parse_url
from prsm_edge.io.tpm_registration import default_ca_dir
from prsm_edge.localgroup import host_group
from prsm_edge.protocol.formation import GroupAdvert
from prsm_edge.protocol.membership import JOIN_POLICIES, JoinPolicy
from prsm_edge.protocol.messages import PROTOCOL_VERSION


def register(sub: Any) -> None:
    """Add the ``coordinate`` command."""
    parser = sub.add_parser(
        "coordinate",
        help="host a group here: an MQTT broker, the coordinator, and its mDNS announcement",
        description=(
            "Run a group coordinator beside an MQTT broker: Mosquitto when installed (per-node credentials "
            "and ACLs through its dynamic-security plugin, a WebSocket listener for the dashboard), else "
            "the embedded single-machine fallback (no ACLs). The roster and ledger live in SQLite under "
            "the work folder and survive restarts. The group is announced on the LAN as _prsm._tcp."
        ),
    )
    parser.add_argument("--site", default=None, help="site name (default: from settings)")
    parser.add_argument("--group", default="g1", help="group name (default g1)")
    parser.add_argument("--host", default="0.0.0.0", help="address the broker listens on (default all)")
    parser.add_argument("--port", type=int, default=1883, help="MQTT port (default 1883; 0 picks one)")
    parser.add_argument(
        "--ws-port", type=int, default=9001, help="WebSocket port for the dashboard (default 9001)"
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="which broker to start here (auto: Mosquitto if installed, else the embedded fallback)",
    )
    parser.add_argument(
        "--external",
        default=None,
        metavar="URL",
        help="start no broker: use an existing one (mqtt://HOST:PORT); its ACLs are yours to run",
    )
    parser.add_argument("--username", default=None, help="the coordinator's login on the --external broker")
    parser.add_argument(
        "--password", default=None, help="the coordinator's password on the --external broker"
    )
    parser.add_argument(
        "--max-members", type=int, default=200, help="refuse members beyond this (default 200)"
    )
    parser.add_argument(
        "--join-policy",
        choices=JOIN_POLICIES,
        default=None,
        help="who may join: open (rate-limited), token (an enrolment token from `prsm-edge group token "
        "create`) or approval (`prsm-edge group approve NODE`); default: the join_policy setting (open)",
    )
    parser.add_argument(
        "--join-rate", type=float, default=None, help="open policy: new members a minute (default 60)"
    )
    parser.add_argument(
        "--evict-after-days",
        type=float,
        default=None,
        help="evict members absent this long and delete their broker login (default 7)",
    )
    parser.add_argument(
        "--listen",
        action="store_true",
        help="let the embedded fallback broker (no ACLs) listen on --host; by default it listens on "
        "127.0.0.1 only, so only this machine can join",
    )
    parser.add_argument("--no-advertise", action="store_true", help="do not announce the group with mDNS")
    parser.add_argument(
        "--interface", action="append", default=None, metavar="IP", help="mDNS interface (repeat)"
    )
    parser.add_argument(
        "--homeassistant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="announce members to Home Assistant by MQTT discovery (default: the homeassistant_discovery "
        "setting, off)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=None,
        help="serve the API reads (status, summary, ...) to operators on 127.0.0.1:PORT (0: any port)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="state folder (default: the data dir)")
    parser.add_argument(
        "--tpm-ca-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="TPM manufacturer CA certificates (PEM) whose EKs may earn hardware_attested "
        "(default: tpm-ca in the config dir; prsm-edge ships none)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if not 1 <= args.max_members <= 200:
        print("prsm-edge: error: --max-members must be between 1 and 200", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_coordinate(args))
    return 0


def _homeassistant(args: argparse.Namespace) -> HomeAssistantOptions | None:
    wanted = args.homeassistant if args.homeassistant is not None else settings.load().homeassistant_discovery
    return HomeAssistantOptions() if wanted else None


def join_policy(args: argparse.Namespace, s: settings.Settings) -> JoinPolicy:
    """The host's join policy from the command line, else the settings."""
    days = args.evict_after_days if args.evict_after_days is not None else s.evict_after_days
    if not days > 0:
        raise SystemExit("prsm-edge: error: --evict-after-days must be positive")
    rate = args.join_rate if args.join_rate is not None else s.join_rate_per_min
    if not rate > 0:
        raise SystemExit("prsm-edge: error: --join-rate must be positive")
    return JoinPolicy(
        name=args.join_policy or s.join_policy, rate_per_min=rate, evict_after_ms=int(days * 86_400_000)
    )


async def _coordinate(args: argparse.Namespace) -> None:
    s = settings.load()
    site = args.site or s.site
    workdir = (args.workdir or paths.data_dir()) / "coordinator" / args.group
    policy = join_policy(args, s)
    if args.external:
        await _external(args, site, workdir, policy)
        return
    async with host_group(
        workdir,
        site=site,
        group=args.group,
        host=args.host,
        port=args.port,
        ws_port=args.ws_port,
        prefer=args.broker,
        max_members=args.max_members,
        homeassistant=_homeassistant(args),
        join_policy=policy,
        listen=args.listen or s.listen,
        tpm_ca_dir=args.tpm_ca_dir,
    ) as hosted:
        coord = hosted.coordinator
        b = hosted.broker
        acl = "per-node ACLs" if b.acl_enforced else "NO ACLs (embedded fallback)"
        print(f"{b.kind} broker at {b.url} (WebSocket {b.ws_url}), {acl}", file=sys.stderr, flush=True)
        print(
            f"join policy: {policy.name}; coordinator key {coord.identity.public_key.hex()} "
            "(members pin it; list it in coordinator_keys to pin it site-wide)",
            file=sys.stderr,
            flush=True,
        )
        if b.bridge_dir is not None:
            print(
                f"bridges to a region: `prsm-edge gateway --group {args.group} --uplink URL` on this host "
                f"installs one in {b.bridge_dir}; the broker restarts once to carry it",
                file=sys.stderr,
                flush=True,
            )
        serve = asyncio.create_task(_serve(args, site, coord, b.port, b.ws_port, ()))
        watch = asyncio.create_task(restart_on_change(b, on_restart=_restarted))
        await asyncio.wait({serve, watch}, return_when=asyncio.FIRST_COMPLETED)
        for task in (serve, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _restarted(carried: list[str]) -> None:
    if carried:
        print(f"broker restarted to carry the bridge configuration {', '.join(carried)}", file=sys.stderr)
    else:
        print("broker restarted after a bridge file was removed or refused (see the log)", file=sys.stderr)


async def _external(args: argparse.Namespace, site: str, workdir: Path, policy: JoinPolicy) -> None:
    address = parse_url(args.external)
    options = CoordinatorOptions(
        site=site,
        group=args.group,
        broker_url=args.external,
        workdir=workdir,
        max_members=args.max_members,
        username=args.username,
        password=args.password,
        homeassistant=_homeassistant(args),
        join_policy=policy,
        tpm_ca_dir=args.tpm_ca_dir or default_ca_dir(),
    )
    coord = Coordinator(load_or_create(workdir), options)
    print(
        f"coordinating through the existing broker {args.external}; per-node ACLs are not managed here",
        file=sys.stderr,
        flush=True,
    )
    hosts = () if address.host in ("localhost", "127.0.0.1", "0.0.0.0") else (address.host,)
    await _serve(args, site, coord, address.port, None, hosts)


async def _serve(
    args: argparse.Namespace,
    site: str,
    coord: Coordinator,
    port: int,
    ws_port: int | None,
    hosts: tuple[str, ...],
) -> None:
    advert = GroupAdvert(
        site=site,
        group=args.group,
        coordinator=coord.identity.node_id,
        epoch=coord.epoch,
        version=PROTOCOL_VERSION,
        members=len(coord.group.members),
        port=port,
        max_members=args.max_members,
        key_fingerprint=coord.identity.fingerprint,
        hosts=hosts,
        ws_port=ws_port,
    )
    if args.api_port is not None:
        coord.options = dataclasses.replace(coord.options, http_port=args.api_port)
    async with contextlib.AsyncExitStack() as stack:
        if not args.no_advertise:
            await stack.enter_async_context(
                Advertiser(advert, args.interface, key=coord.identity.signing_key)
            )
        task = asyncio.create_task(coord.run())
        stack.callback(task.cancel)
        loop = asyncio.get_running_loop()
        deadline = None if args.seconds is None else loop.time() + args.seconds
        while deadline is None or loop.time() < deadline:
            await asyncio.sleep(min(5.0, args.seconds or 5.0))
            g = coord.group
            print(
                f"{site}/{args.group} epoch {coord.epoch}: {g.online_count}/{len(g.members)} online, "
                f"rejected {sum(g.rejected.values())}",
                flush=True,
            )
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
