"""``prsm-edge status``: a group's (or a region's) coordinator and overview in a terminal, all verified.

Reads the group's retained coordinator state, roster, summary and node births/states (and, with a
viewer login, live telemetry) from its broker, checking each COSE_Sign1 with the project's own envelope
code (:mod:`prsm_edge.protocol.groupview`). Log in as a viewer (``prsm-edge viewer add``) or with this
node's own broker credentials (used when no --username is given); a node login may read only the roster,
summary and births, so its view of who is online comes from the roster.

Pointed at a region's broker (``--group`` names the region), the coordinator's state says tier 2 or more,
and the table is the region's instead (:mod:`prsm_edge.protocol.regionview`): every group with the
region's word on it (alive or dead, the pinned key), its signed summary and its gateway's link state.

A group's table ends with its trends: sparklines of online nodes, utilization and earnings over the last
hour and the last week, from the coordinator's retained rollup, taken only under the pinned coordinator
key like every coordinator message (:mod:`prsm_edge.protocol.trendview`); ``--json`` carries the series.
A region's table ends the same way, from the region coordinator's rollup under the pinned region key:
nodes online, utilization, and groups alive and dead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Final

import aiomqtt

from prsm_edge import paths, settings
from prsm_edge.errors import LocalError
from prsm_edge.io.session import parse_url
from prsm_edge.protocol import topics
from prsm_edge.protocol.groupview import GroupView
from prsm_edge.protocol.regionview import RegionView

_SETTLE_S = 0.7  # retained messages come in one burst: stop once it has been quiet this long
_PASSWORD_ENV = "PRSM_EDGE_MQTT_PASSWORD"
BLOCKS: Final = "▁▂▃▄▅▆▇█"
SPARK_WIDTH: Final = 60  # characters a sparkline may take; more buckets share a character


def register(sub: Any) -> None:
    """Add the ``status`` command."""
    parser = sub.add_parser(
        "status",
        help="show a group's (or a region's) coordinator, members and capacity (verified), once or live",
        description=(
            "Connect to a group's broker, read its retained state and verify every signature. Against a "
            "region's broker (--group REGION) it shows every group of the region and its gateway link. "
            f"Give a viewer login with --username (password from --password or ${_PASSWORD_ENV}); "
            "without one, this node's own broker credentials are used when it has joined a group."
        ),
    )
    parser.add_argument("--broker", default=None, help="broker URL, mqtt://HOST:PORT (default: settings)")
    parser.add_argument("--site", default=None, help="site name (default: from settings)")
    parser.add_argument(
        "--group", default=None, help="group (or region) name (default: from settings, else g1)"
    )
    parser.add_argument("--username", default=None, help="broker login (e.g. viewer-NAME)")
    parser.add_argument("--password", default=None, help=f"its password (or set ${_PASSWORD_ENV})")
    parser.add_argument("--key", default=None, help="the coordinator's public key (hex) to pin")
    parser.add_argument("--watch", action="store_true", help="keep showing the live state until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="refresh with --watch, seconds (2)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per refresh)")
    parser.add_argument("--timeout", type=float, default=5.0, help="give up reading after this (5 s)")
    parser.add_argument("--workdir", type=Path, default=None, help="this node's state folder (credentials)")
    parser.set_defaults(handler=_run)


def _login(args: argparse.Namespace, site: str, group: str) -> tuple[str | None, str | None]:
    """The given login, else the credentials this node was issued when it joined the group."""
    if args.username:
        return args.username, args.password or os.environ.get(_PASSWORD_ENV)
    home = args.workdir or paths.data_dir()
    found = [home / "broker-credentials.json", *home.glob(f"groups/{site}-{group}-*/broker-credentials.json")]
    for creds in sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(creds.read_text())
            return str(data["username"]), str(data["password"])
    return None, None


def _run(args: argparse.Namespace) -> int:
    s = settings.load()
    site, group = args.site or s.site, args.group or s.group or "g1"
    if not topics.valid_segment(site) or not topics.valid_segment(group):
        print("prsm-edge: error: site and group are 1–64 characters of a-z, 0-9, '_' or '-'", file=sys.stderr)
        return 2
    if not 0.2 <= args.interval <= 3600 or not 0.5 <= args.timeout <= 600:
        print("prsm-edge: error: --interval is 0.2–3600 s and --timeout 0.5–600 s", file=sys.stderr)
        return 2
    key = None
    if args.key:
        try:
            key = bytes.fromhex(args.key)
        except ValueError:
            key = b""
        if len(key) != 32:
            print("prsm-edge: error: --key is the coordinator's 32-byte public key in hex", file=sys.stderr)
            return 2
    view = GroupView(site, group, pinned_key=key)
    region = RegionView(site, group, pinned_key=key)
    url = args.broker or s.broker_url or "mqtt://127.0.0.1:1883"
    try:
        return asyncio.run(_status(args, url, view, region))
    except LocalError as exc:
        print(f"prsm-edge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _status(args: argparse.Namespace, url: str, view: GroupView, region: RegionView) -> int:
    address = parse_url(url)
    username, password = _login(args, view.site, view.group)
    base = f"{topics.ROOT}/{view.site}/{view.group}"
    filters = [f"{base}/coord/#", f"{base}/summary", f"{base}/node/+/birth", f"{base}/node/+/state"]
    # A region's tree: its groups' summaries and standing, and the gateways' link states.
    filters += [f"{base}/unit/+/+/summary", f"{base}/unit/+/+/state", f"{topics.ROOT}/+/gw/+/state"]
    if args.watch:
        filters += [f"{base}/node/+/telemetry", f"{base}/unit/+/+/stream"]
    try:
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=username,
            password=password,
            identifier=f"prsm-status-{secrets.token_hex(4)}",
            timeout=args.timeout,
        ) as client:
            for topic_filter in filters:  # one at a time: a login may be refused some of them
                await client.subscribe(topic_filter, qos=0)
            await _read(client, view, region, args.timeout, _SETTLE_S)
            _show(args, view, region)
            while args.watch:
                await _read(client, view, region, args.interval, None)
                _show(args, view, region)
    except aiomqtt.MqttError as exc:
        who = f"as {username}" if username else "anonymously"
        raise LocalError(f"cannot read {base} at {url} {who}: {exc}") from None
    return 0 if view.coord is not None else 1


async def _read(
    client: aiomqtt.Client, view: GroupView, region: RegionView, limit_s: float, settle_s: float | None
) -> None:
    """Fold messages in for ``limit_s`` (or, once state is known, until ``settle_s`` pass without a
    retained one: live traffic, such as a region's stream of summaries, never goes quiet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    messages = aiter(client.messages)
    last_retained = loop.time()
    while (left := deadline - loop.time()) > 0:
        settled = settle_s is not None and view.coord is not None
        wait = min(left, last_retained + settle_s - loop.time()) if settle_s is not None and settled else left
        if wait <= 0:
            return
        try:
            message = await asyncio.wait_for(anext(messages), wait)
        except TimeoutError:
            if settled:
                return
            continue
        if message.retain:
            last_retained = loop.time()
        if isinstance(message.payload, bytes | bytearray):
            now = _now_ms()
            view.receive(str(message.topic), bytes(message.payload), now)
            region.receive(str(message.topic), bytes(message.payload), now)


def _show(args: argparse.Namespace, view: GroupView, region: RegionView) -> None:
    if region.coord is not None:  # the coordinator is a region's (tier 2 or more)
        snap = region.snapshot(_now_ms())
    else:
        snap = {"kind": "group", **view.snapshot(_now_ms())}
    if args.json:
        print(json.dumps(snap, sort_keys=True), flush=True)
        return
    text = render_region(snap) if snap["kind"] == "region" else render(snap)
    if args.watch and sys.stdout.isatty():
        text = "\x1b[2J\x1b[H" + text
    print(text, flush=True)


def render(snap: dict[str, Any]) -> str:
    """The snapshot as the terminal table."""
    lines = []
    c = snap["coordinator"]
    if c is None:
        lines.append(f"group {snap['site']}/{snap['group']}: no verified coordinator state")
    else:
        lines.append(
            f"group {snap['site']}/{snap['group']}: coordinator {c['node']} {c['status']}, "
            f"epoch {c['epoch']}, key {c['public_key'][:16]}…, {'per-node ACLs' if c['acl'] else 'no ACLs'}"
        )
    s = snap["summary"]
    if s is not None:
        capacity = ", ".join(f"{k} {v:g}" for k, v in sorted(s["capacity"].items())) or "nothing"
        trust = ", ".join(f"{k} {v}" for k, v in sorted(s["trust"].items())) or "—"
        lines.append(
            f"{s['online']}/{s['members']} online, utilization {100 * s['utilization']:.0f} %; "
            f"offered: {capacity}"
        )
        lines.append(f"trust levels: {trust}")
    lines += render_trends(snap.get("trends"))
    lines.append(f"messages verified {snap['verified']}, unverified {snap['unverified']}")
    lines.append(
        f"{'node':<18} {'device':<14} {'level':<20} {'state':<8} {'cpu':>5} {'temp':>6} {'seen':>6}  note"
    )
    for n in snap["nodes"]:
        state = "online" if n["online"] else "offline"
        if n["online"] and n["offering"] is False:
            state = "held"
        cpu = "—" if n["cpu_util"] is None else f"{100 * n['cpu_util']:.0f}%"
        temp = "—" if n["temperature_c"] is None else f"{n['temperature_c']:.0f}°C"
        seen = "—" if n["last_seen_s"] is None else f"{n['last_seen_s']:.0f}s"
        notes = []
        if n["throttle"]:
            notes.append(n["throttle"])
        if not n["in_roster"]:
            notes.append("not in roster")
        if n["unverified"]:
            notes.append(f"{n['unverified']} UNVERIFIED")
        lines.append(
            f"{n['node']:<18} {(n['device_class'] or '—')[:14]:<14} {(n['level'] or '—'):<20} {state:<8} "
            f"{cpu:>5} {temp:>6} {seen:>6}  {'; '.join(notes)}"
        )
    for f in snap["failures"][:5]:
        lines.append(f"UNVERIFIED {f['topic']}: {f['reason']}")
    return "\n".join(lines)


def render_region(snap: dict[str, Any]) -> str:
    """A region's snapshot as the terminal table."""
    c = snap["coordinator"]
    lines = [
        f"region {snap['site']}/{snap['region']}: coordinator {c['node']} {c['status']}, tier {c['tier']}, "
        f"epoch {c['epoch']}, key {c['public_key'][:16]}…; {snap['alive']}/{len(snap['groups'])} groups alive"
    ]
    s = snap["summary"]
    if s is not None:
        capacity = ", ".join(f"{k} {v:g}" for k, v in sorted(s["capacity"].items())) or "nothing"
        trust = ", ".join(f"{k} {v}" for k, v in sorted(s["trust"].items())) or "—"
        lines.append(
            f"{s['online']}/{s['members']} nodes online, utilization {100 * s['utilization']:.0f} %; "
            f"capacity: {capacity}"
        )
        lines.append(f"trust levels: {trust}")
    lines += render_trends(snap.get("trends"), region=True)
    lines.append(f"messages verified {snap['verified']}, unverified {snap['unverified']}")
    lines.append(
        f"{'group':<22} {'state':<12} {'epoch':>5} {'nodes':>9} {'util':>5} {'key':<17} "
        f"{'link':<10} {'buffered':>8} {'dropped':>7}  note"
    )
    for g in snap["groups"]:
        nodes = "—" if g["members"] is None else f"{g['online']}/{g['members']}"
        util = "—" if g["utilization"] is None else f"{100 * g['utilization']:.0f}%"
        key = "—" if g["public_key"] is None else g["public_key"][:16] + "…"
        gw = g["gateway"] or {}
        notes = []
        if g["why"]:
            notes.append(g["why"])
        if gw.get("bridge") == "down":
            notes.append("bridge down")
        if g["unverified"]:
            notes.append(f"{g['unverified']} UNVERIFIED")
        epoch = "—" if g["epoch"] is None else str(g["epoch"])
        lines.append(
            f"{g['site'] + '/' + g['group']:<22} {g['status']:<12} {epoch:>5} "
            f"{nodes:>9} {util:>5} {key:<17} {g['link']:<10} {gw.get('buffered', '—'):>8} "
            f"{gw.get('dropped', '—'):>7}  {'; '.join(notes)}"
        )
    for f in snap["failures"][:5]:
        lines.append(f"UNVERIFIED {f['topic']}: {f['reason']}")
    return "\n".join(lines)


def sparkline(
    values: list[float | None], *, width: int = SPARK_WIDTH, top: float | None = None, total: bool = False
) -> str:
    """Values as block characters, at most ``width`` of them (buckets merged: the mean, or the sum with
    ``total``), scaled from 0 to ``top`` (default: the largest); a space where there is no sample."""
    if not values:
        return ""
    per = math.ceil(len(values) / max(1, width))
    merged: list[float | None] = []
    for start in range(0, len(values), per):
        known = [v for v in values[start : start + per] if v is not None and math.isfinite(v)]
        merged.append(None if not known else sum(known) if total else sum(known) / len(known))
    high = top if top is not None else max((v for v in merged if v is not None), default=0.0)
    out = []
    for v in merged:
        if v is None:
            out.append(" ")
        else:
            share = 0.0 if high <= 0 else min(1.0, max(0.0, v / high))
            out.append(BLOCKS[round(share * (len(BLOCKS) - 1))])
    return "".join(out)


def _span(step_s: int, per: int) -> str:
    seconds = step_s * per
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _last(values: list[Any]) -> Any:
    return next((v for v in reversed(values) if v is not None), None)


def _most(values: list[Any]) -> Any:
    return max((v for v in values if v is not None), default=0)


def _window_lines(window: dict[str, Any], region: bool) -> list[str]:
    """One window's sparklines: nodes online and utilization, then earnings (a group) or groups alive and
    dead (a region, both scaled to the most groups seen so the two lines compare)."""
    online, util = window["online"], window["utilization"]
    most, now = _most(online), _last(online)
    peak, now_util = _most(util), _last(util)
    lines = [
        f"    online  {sparkline(online, top=max(1, most))}  now {'—' if now is None else now}, max {most}",
        f"    util    {sparkline(util, top=1.0)}  "
        f"now {'—' if now_util is None else f'{100 * now_util:.0f} %'}, max {100 * peak:.0f} %",
    ]
    if not region:
        earned = window["earned_ftns"]
        earned_sum = sum(v for v in earned if v is not None)
        return [*lines, f"    earned  {sparkline(earned, total=True)}  {earned_sum:.6f} FTNS in all"]
    alive, dead = window["groups_alive"], window["groups_dead"]
    top = max(1, _most([None if a is None else a + (d or 0) for a, d in zip(alive, dead, strict=True)]))
    for label, values in (("alive", alive), ("dead", dead)):
        last = _last(values)
        lines.append(
            f"    {label:<7} {sparkline(values, top=top)}  groups now {'—' if last is None else last}, "
            f"max {_most(values)}"
        )
    return lines


def render_trends(trends: dict[str, Any] | None, *, region: bool = False) -> list[str]:
    """The trend lines of a group's (or, with ``region``, a region's) table: the rollup's last hour and
    last week, or "no rollup yet"."""
    who = "the region's coordinator" if region else "the coordinator"
    if trends is None:
        when = "when it starts, then every minute" if region else "a minute after it starts"
        return [f"trends: no rollup yet ({who} publishes one {when})"]
    lines = [f"trends from {who}'s rollup, {trends['age_s']:.0f} s old:"]
    for label, key in (("last hour", "hour"), ("last week", "week")):
        window = trends.get(key)
        if not window or not window["online"]:
            lines.append(f"  {label:<10} no samples")
            continue
        per = math.ceil(len(window["online"]) / SPARK_WIDTH)
        lines.append(f"  {label:<10} one mark per {_span(window['step_s'], per)}")
        lines += _window_lines(window, region)
    return lines
