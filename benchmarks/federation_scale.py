"""Federation at scale: the real regional coordinator under 5,000 simulated groups (1,000,000 nodes).

What is real: the regional coordinator (``RegionCoordinator``: its MQTT session, ``Region``'s rules,
signature checks, routing) in its own process; a real Mosquitto between it and the groups; every summary
a real COSE_Sign1 over deterministic CBOR, signed with the group's own key; task requests answered with
real signed leases. What is simulated: the groups' coordinators and gateways (one process, a few MQTT
connections standing in for 5,000 bridges), which publish on the rule the real ones follow: a summary
every ``--interval`` seconds, and a changed summary at the coordinator's next 1 s tick after a claim
changes. The group tier below (nodes → group) is not driven here; its rate is stated from the node count.

Phases: steady state (CPU, RSS, messages/s, visibility, allocation; some groups fall silent to time death
detection), then a region restart, which makes every gateway send its birth at once (the rebirth storm).

Run: ``.venv/bin/python benchmarks/federation_scale.py`` (``--groups 500 --steady 30`` for a short run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
from nacl.signing import SigningKey

SITE, REGION = "eu", "r1"
NODES_PER_GROUP = 200
LEVELS = ("self_reported", "peer_verified", "benchmarked", "economically_staked", "hardware_attested")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- the region, in its own process ------------------------------------------------------------------
def _lane(topic: str) -> str:
    return "tasks" if "/api/" in topic else "main"


async def region_main(url: str, workdir: Path, out: Path, seconds: float, tasks: int) -> None:
    """Run the real RegionCoordinator; log when each message reached it, was handled and was taken."""
    from prsm_edge.coordinator.region import RegionCoordinator, RegionOptions
    from prsm_edge.identity import load_or_create
    from prsm_edge.protocol.envelope import open_envelope
    from prsm_edge.protocol.region import LeaseGranted, TaskPlaced, UnitChange

    # Stamp each message as paho hands it over (it then waits in the session's incoming queue, in order).
    arrivals: dict[str, collections.deque[float]] = {
        "main": collections.deque(),
        "tasks": collections.deque(),
    }
    on_message = aiomqtt.Client._on_message

    def stamp(self: aiomqtt.Client, client: Any, userdata: Any, message: Any) -> None:
        arrivals[_lane(message.topic)].append(time.time())
        on_message(self, client, userdata, message)

    aiomqtt.Client._on_message = stamp  # type: ignore[method-assign]
    gc_pauses: list[tuple[int, float]] = []  # generation, seconds: a stall of the whole event loop
    gc_started = [0.0]

    def gc_watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(gc_watch)
    coord = RegionCoordinator(
        load_or_create(workdir),
        RegionOptions(
            site=SITE,
            region=REGION,
            broker_url=url,
            workdir=workdir,
            max_units=50_000,
            quiet_heap=os.environ.get("FEDSCALE_GC") != "default",  # as `prsm-edge region` runs it
        ),
    )
    accepted: list[tuple[str, int, float, float, float]] = []  # group, seq, arrived, handled, accepted
    submits: list[tuple[str, float, float, float]] = []  # a client's submit: txid, arrived, handled, decided
    deaths: list[tuple[str, float]] = []
    births: list[float] = []
    route_ms: list[float] = []
    placed: dict[str, float] = {}
    leased: dict[str, float] = {}
    original = coord.region.receive

    taken: dict[str, float] = {}  # when the session handed the message being handled to the coordinator

    def handing(handler: Any) -> Any:
        async def handle(topic: str, payload: bytes) -> None:
            queue = arrivals[_lane(topic)]
            taken[topic] = queue.popleft() if queue else time.time()
            await handler(topic, payload)

        return handle

    coord.session.handler = handing(coord.session.handler)
    coord.tasks.handler = handing(coord.tasks.handler)

    def receive(topic: str, payload: bytes, now: int) -> Any:
        handled = time.time()
        arrived = taken.pop(topic, handled)
        t0 = time.perf_counter()
        effects = original(topic, payload, now)
        if topic.endswith("/summary"):
            parts = topic.split("/")
            unit = coord.region.units.get((parts[-3], parts[-2]))
            if unit is not None and unit.envelope == payload:  # accepted, or the held one again
                accepted.append((parts[-2], unit.summary.seq, arrived, handled, time.time()))
        elif "/api/submit/req/" in topic:  # decided: placed (or refused) and the answer queued
            request = open_envelope(payload).message
            submits.append((getattr(request, "txid", ""), arrived, handled, time.time()))
            route_ms.append((time.perf_counter() - t0) * 1000)
        return effects

    coord.region.receive = receive  # type: ignore[method-assign,assignment]

    def listen(effect: object) -> None:
        if isinstance(effect, UnitChange):
            if effect.alive and effect.why == "birth":
                births.append(time.time())
            elif not effect.alive:
                deaths.append((effect.group, time.time()))
        elif isinstance(effect, TaskPlaced) and effect.attempt == 0:
            placed[effect.task_id] = time.time()
        elif isinstance(effect, LeaseGranted):
            leased[effect.task_id] = time.time()

    coord.listeners.append(listen)
    runner = asyncio.create_task(coord.run())
    await coord.ready.wait()
    online_at = time.time()
    await asyncio.sleep(max(0.0, online_at + seconds - time.time()))
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    out.write_text(  # noqa: ASYNC240 - once, at the end
        json.dumps(
            {
                "online_at": online_at,
                "epoch": coord.epoch,
                "accepted": accepted,
                "submits": submits,
                "deaths": deaths,
                "births": births,
                "route_ms": route_ms,
                "confirm_ms": [1000 * (leased[t] - placed[t]) for t in placed if t in leased],
                "placed": len(placed),
                "cpu_s": sum(os.times()[:2]),
                "rejected": {k.value: v for k, v in coord.region.rejected.items()},
                "units": len(coord.region.units),
                "send_refused": coord.session.refused_outgoing + coord.tasks.refused_outgoing,
                "gc_pauses": gc_pauses,
            }
        )
    )


# ---- a client submitting tasks at the region over MQTT ---------------------------------------------
async def submitter_main(port: int, out: Path, tasks: int, start_after: float) -> None:
    """Submit tasks as a client would (signed ``submit`` requests); time the region's two answers."""
    from prsm_edge.io.session import no_delay
    from prsm_edge.protocol import topics
    from prsm_edge.protocol.envelope import Signer, open_envelope
    from prsm_edge.protocol.messages import ApiRequest, ApiResponse

    me = Signer(SigningKey.generate())
    sent: dict[str, float] = {}
    placed: dict[str, float] = {}
    leased: dict[str, float] = {}
    refused = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"submitter-{me.node_id}") as client:
        no_delay(client)
        await client.subscribe(topics.api(topics.Kind.API_RESP, SITE, REGION, "submit", me.node_id), qos=1)

        async def answers() -> None:
            nonlocal refused
            async for message in client.messages:
                msg = open_envelope(bytes(message.payload)).message
                if not isinstance(msg, ApiResponse):
                    continue
                if not msg.ok:
                    refused += 1
                elif msg.result.get("status") == "placed":
                    placed.setdefault(msg.txid, time.time())
                elif msg.result.get("status") == "leased":
                    leased.setdefault(msg.txid, time.time())

        reader = asyncio.create_task(answers())
        await asyncio.sleep(start_after)  # let the region's picture fill first
        topic = topics.api(topics.Kind.API_REQ, SITE, REGION, "submit", me.node_id)
        for i in range(tasks):
            site = random.choice(("lab", "far", "mid"))
            params = {"task_id": f"t{i}", "resources": {"compute_cpu": 4.0}, "origin_site": site}
            req = ApiRequest(txid=f"q{i}", method="submit", requester=me.node_id, params=params)
            sent[req.txid] = time.time()
            await client.publish(topic, me.seal(req, int(time.time() * 1000)), qos=1)
            await asyncio.sleep(0.1)
        await asyncio.sleep(6)
        reader.cancel()
    out.write_text(  # noqa: ASYNC240 - once, at the end
        json.dumps(
            {
                "placed_ms": [1000 * (placed[t] - sent[t]) for t in sent if t in placed],
                "leased_ms": [1000 * (leased[t] - sent[t]) for t in sent if t in leased],
                "refused": refused,
                "sent": len(sent),
                "sent_at": sent,
                "placed_at": placed,
            }
        )
    )


# ---- the simulated groups ----------------------------------------------------------------------------
class Groups:
    """N simulated group coordinators + gateways, publishing real signed summaries."""

    def __init__(self, n: int, interval: float, rng: random.Random) -> None:
        from prsm_edge.protocol.envelope import Signer

        self.n = n
        self.interval = interval
        self.names = [f"g{i:05d}" for i in range(n)]
        self.sites = [("lab", "far", "mid")[i % 3] for i in range(n)]
        self.signers = [Signer(SigningKey(rng.randbytes(32))) for _ in range(n)]
        self.due = [time.time() + rng.uniform(0, interval) for _ in range(n)]
        self.silent: set[int] = set()
        self.sent: list[tuple[str, int, float, str]] = []  # group, seq, when, why
        self.last: dict[int, tuple[str, bytes, int]] = {}  # what each gateway holds: its latest summary
        self.out: dict[tuple[str, int], float] = {}  # when each summary was handed to its connection
        self.published = 0
        self.rng = rng

    def seal(self, i: int) -> tuple[str, bytes, int]:
        from prsm_edge.protocol import topics
        from prsm_edge.protocol.messages import GroupSummary

        online = self.rng.randint(180, 200)
        level = LEVELS[i % len(LEVELS)]
        msg = GroupSummary(
            site=self.sites[i],
            group=self.names[i],
            epoch=1,
            tier=1,
            members=NODES_PER_GROUP,
            online=online,
            capacity={"compute_cpu": float(online * 4), "storage_memory": float(online * 8)},
            trust={"self_reported": online // 2, level: online - online // 2},
            utilization=round(self.rng.random() * 0.8, 3),
            claims_root=self.rng.randbytes(32),
            claims=online,
        )
        payload = self.signers[i].seal(msg, int(time.time() * 1000))
        seq = self.signers[i]._counter
        topic = topics.unit(topics.Kind.UNIT_SUMMARY, SITE, REGION, self.sites[i], self.names[i])
        return topic, payload, seq


Outgoing = tuple[str, bytes, str, int]  # topic, payload, group, seq


async def publisher(client: aiomqtt.Client, queue: asyncio.Queue[Outgoing], groups: Groups) -> None:
    """One connection standing in for many bridges: publications leave in order, PUBACKs awaited aside.

    (Awaiting each PUBACK before the next publish would make the simulator, not the region, the
    bottleneck: one round trip per summary per connection.)
    """
    window = asyncio.Semaphore(200)

    async def one(topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1, retain=True)
        finally:
            window.release()

    pending: set[asyncio.Task[None]] = set()
    while True:
        topic, payload, group, seq = await queue.get()
        await window.acquire()
        groups.out.setdefault((group, seq), time.time())  # (a birth sends the held summary again)
        task = asyncio.create_task(one(topic, payload))
        pending.add(task)
        task.add_done_callback(pending.discard)
        groups.published += 1


async def simulate(
    port: int,
    groups: Groups,
    stop: asyncio.Event,
    change_rate: float,
    storm: asyncio.Event,
    connections: int,
) -> None:
    """Publish periodic summaries, changes at the next tick, answer task requests, rebirth on request."""
    from prsm_edge.io.session import no_delay
    from prsm_edge.protocol import topics
    from prsm_edge.protocol.envelope import open_envelope
    from prsm_edge.protocol.messages import (
        ApiRequest,
        ApiResponse,
        CoordState,
        Lease,
        ResourceSpec,
        ResourceType,
    )

    index = {name: i for i, name in enumerate(groups.names)}
    queues: list[asyncio.Queue[Outgoing]] = [asyncio.Queue() for _ in range(connections)]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                aiomqtt.Client(
                    "127.0.0.1",
                    port,
                    identifier=f"sim-gw-{c}",
                    max_queued_outgoing_messages=100_000,
                    max_inflight_messages=200,
                )
            )
            for c in range(connections + 1)
        ]
        for client in clients:
            client.pending_calls_threshold = 10_000  # many publications outstanding is the point here
            no_delay(client)  # as the real Session does (and the shipped broker config does its side)
        workers = [asyncio.create_task(publisher(clients[c], queues[c], groups)) for c in range(connections)]
        listener = clients[connections]  # the groups' coordinators answer tasks on their own connections
        await listener.subscribe(f"{topics.ROOT}/{SITE}/{REGION}/unit/+/+/api/region-task/req/+", qos=1)
        await listener.subscribe(topics.coord_state(SITE, REGION), qos=1)
        region_epoch = -1

        def send(i: int, why: str) -> None:
            if why == "birth" and i in groups.last:  # a gateway's birth is the summary it holds
                topic, payload, seq = groups.last[i]
            else:
                topic, payload, seq = groups.last[i] = groups.seal(i)
            groups.sent.append((groups.names[i], seq, time.time(), why))
            queues[i % connections].put_nowait((topic, payload, groups.names[i], seq))

        answering_now: set[asyncio.Task[None]] = set()

        async def answer() -> None:
            nonlocal region_epoch
            async for message in listener.messages:
                opened = open_envelope(bytes(message.payload))
                msg = opened.message
                if isinstance(msg, CoordState):
                    if msg.status == "online" and msg.epoch != region_epoch:
                        first = region_epoch == -1
                        region_epoch = msg.epoch
                        if not first:  # Sparkplug's host rule: every gateway sends its birth again
                            storm.set()
                            for i in range(groups.n):
                                if i not in groups.silent:
                                    send(i, "birth")
                    continue
                if not isinstance(msg, ApiRequest):
                    continue
                parts = message.topic.value.split("/")
                i = index[parts[6]]
                now = int(time.time() * 1000)
                lease = Lease(
                    lease_id=f"l-{msg.txid}",
                    task_id=str(msg.params["task_id"]),
                    node=f"n{i}",
                    resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=4.0, unit="cores")],
                    start_ms=now,
                    end_ms=now + 3_600_000,
                    rate_micro_per_hour=0,
                )
                resp = ApiResponse(
                    txid=msg.txid,
                    method="region-task",
                    ok=True,
                    result={"lease": groups.signers[i].seal(lease, now)},
                )
                topic = topics.unit_api(
                    topics.Kind.UNIT_API_RESP, SITE, REGION, parts[5], parts[6], "region-task", msg.requester
                )
                reply = asyncio.create_task(listener.publish(topic, groups.signers[i].seal(resp, now), qos=1))
                answering_now.add(reply)
                reply.add_done_callback(answering_now.discard)

        answering = asyncio.create_task(answer())
        tick = 0.05
        frozen_at = 0.0
        while not stop.is_set():
            now = time.time()
            if now - frozen_at >= 1.0:
                # 5,000 groups' keys and the run's records live in this one process: keep full
                # collections from stalling the stand-ins for 5,000 separate coordinators.
                gc.freeze()
                frozen_at = now
            for i in range(groups.n):
                if i in groups.silent:
                    continue
                if groups.due[i] <= now:
                    groups.due[i] += groups.interval
                    send(i, "periodic")
            # Claim changes: visible at the group's next coordinator tick (Group.tick, 1 s).
            for _ in range(int(change_rate * tick + groups.rng.random())):
                i = groups.rng.randrange(groups.n)
                if i not in groups.silent:
                    delay = groups.rng.uniform(0, 1.0)
                    asyncio.get_running_loop().call_later(delay, send, i, f"change@{now:.3f}")
            await asyncio.sleep(tick)
        answering.cancel()
        for w in workers:
            w.cancel()


def ingest_ratio(groups: Groups, n: int = 3000) -> dict[str, float]:
    """The sans-IO region core alone: summaries taken per second against raw Ed25519 verifies."""
    from nacl.signing import VerifyKey

    from prsm_edge.protocol.region import Region, RegionConfig

    key = SigningKey(b"r" * 32)
    region = Region(
        RegionConfig(
            site=SITE, region=REGION, coordinator="nregion", public_key=bytes(key.verify_key), epoch=1
        )
    )
    msgs = [groups.seal(i % groups.n) for i in range(n)]
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for topic, payload, _ in msgs:
        region.receive(topic, payload, now)
    ingest = n / (time.perf_counter() - t0)
    signed = key.sign(b"x" * 300)
    vk = VerifyKey(bytes(key.verify_key))
    t0 = time.perf_counter()
    for _ in range(n):
        vk.verify(signed)
    raw = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(20):
        region.summary()
    return {
        "region_core_summaries_per_s": round(ingest),
        "raw_ed25519_verify_per_s": round(raw),
        "core_over_raw_verify": round(ingest / raw, 2),
        "region_own_summary_ms": round((time.perf_counter() - t0) / 20 * 1000, 1),
    }


def start_broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
        "max_queued_messages 200000\nmax_inflight_messages 100\nuser root\n"
        "set_tcp_nodelay true\n"  # as broker/mosquitto.conf.template ships
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def spawn_region(port: int, workdir: Path, out: Path, seconds: float, tasks: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "region",
            "--port",
            str(port),
            "--workdir",
            str(workdir),
            "--out",
            str(out),
            "--seconds",
            str(seconds),
            "--tasks",
            str(tasks),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def spawn_submitter(port: int, out: Path, tasks: int, start_after: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "submitter",
            "--port",
            str(port),
            "--out",
            str(out),
            "--tasks",
            str(tasks),
            "--seconds",
            str(start_after),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def stages(rows: list[float]) -> str:
    return f"{1000 * pct(rows, 0.5):.1f} / {1000 * pct(rows, 0.99):.1f}"


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fedscale-"))
    broker, port = start_broker(tmp)
    rng = random.Random(7)
    print(f"signing keys for {args.groups} groups …", file=sys.stderr)
    groups = Groups(args.groups, args.interval, rng)
    core = ingest_ratio(groups)
    groups.signers = [type(s)(s._key) for s in groups.signers]  # fresh counters for the live run
    stop, storm = asyncio.Event(), asyncio.Event()
    steady_s = args.steady
    region1 = spawn_region(port, tmp / "region", tmp / "r1.json", steady_s, args.tasks)
    submitter = spawn_submitter(port, tmp / "submit.json", args.tasks, args.warmup)
    proc = psutil.Process(region1.pid)
    broker_proc = psutil.Process(broker.pid)
    sim = asyncio.create_task(simulate(port, groups, stop, args.change_rate, storm, args.connections))
    try:
        # Every group has published once and the region's cold start (every key pinned at first sight,
        # every unit's standing published) is over: the steady state begins.
        await asyncio.sleep(args.warmup)
        print("steady state: measuring …", file=sys.stderr)
        cpu0, t0, pub0 = sum(proc.cpu_times()[:2]), time.time(), groups.published
        bcpu0, load0 = sum(broker_proc.cpu_times()[:2]), os.getloadavg()[0]
        rss = [proc.memory_info().rss]
        kill_at = time.time() + 2
        killed: set[int] = set()
        while region1.poll() is None:
            await asyncio.sleep(1)
            with contextlib.suppress(psutil.Error):
                rss.append(proc.memory_info().rss)
                cpu1, t1, pub1 = sum(proc.cpu_times()[:2]), time.time(), groups.published
                bcpu1, load1 = sum(broker_proc.cpu_times()[:2]), os.getloadavg()[0]
            if not killed and time.time() >= kill_at:
                killed = set(rng.sample(range(args.groups), args.deaths))
                groups.silent |= killed
                kill_time = time.time()
        region1.wait()
        await asyncio.to_thread(submitter.wait)
        steady = json.loads((tmp / "r1.json").read_text())
        submitted = json.loads((tmp / "submit.json").read_text())
        # Phase 2: the region restarts (new epoch): every gateway sends its birth at once.
        print("rebirth storm: restarting the region …", file=sys.stderr)
        groups.silent.clear()
        region2 = spawn_region(port, tmp / "region", tmp / "r2.json", args.storm_s, 0)
        await asyncio.to_thread(region2.wait)
        reborn = json.loads((tmp / "r2.json").read_text())
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sim, 5)
        broker.terminate()
        broker.wait()
    # ---- figures ---------------------------------------------------------------------------------
    wall = t1 - t0
    accept_at = {(g, seq): when for g, seq, _, _, when in steady["accepted"]}
    stamps = {(g, seq): (arrived, handled, when) for g, seq, arrived, handled, when in steady["accepted"]}
    sent = [(g, seq, when, why) for g, seq, when, why in groups.sent if (g, seq) in accept_at]
    transit = [accept_at[(g, s)] - w for g, s, w, _ in sent if w >= t0]
    # Where a summary's time goes: the simulator's own queue, the broker hop, the region's incoming
    # queue, the region's handling.
    sim_lag, hop, queued, handling = [], [], [], []
    for g, s, w, _ in sent:
        out = groups.out.get((g, s))
        if w < t0 or out is None:
            continue
        arrived, handled, when = stamps[(g, s)]
        sim_lag.append(out - w)
        hop.append(arrived - out)
        queued.append(handled - arrived)
        handling.append(when - handled)
    submit_queued = [handled - arrived for _, arrived, handled, _ in steady["submits"]]
    decision = [decided - arrived for _, arrived, _, decided in steady["submits"]]
    # The client's round trip, split: to the region (broker hop in), the decision, back (hop out).
    hop_in, hop_out = [], []
    for txid, arrived, _, decided in steady["submits"]:
        if txid in submitted["sent_at"]:
            hop_in.append(arrived - submitted["sent_at"][txid])
        if txid in submitted["placed_at"]:
            hop_out.append(submitted["placed_at"][txid] - decided)
    claim_vis = [
        accept_at[(g, s)] - float(why[7:]) for g, s, w, why in sent if why.startswith("change@") and w >= t0
    ]
    # Telemetry changes: at a random instant, visible with the group's next periodic summary.
    periodic: dict[str, list[tuple[float, float]]] = {}
    for g, s, w, why in sent:
        if why == "periodic" and w >= t0:  # steady state (the region's start-up is the storm's phase)
            periodic.setdefault(g, []).append((w, accept_at[(g, s)]))
    tele_vis = []
    for rows in periodic.values():
        rows.sort()
        for _ in range(3):
            if len(rows) < 2:
                break
            change = rng.uniform(rows[0][0], rows[-1][0])
            nxt = next(a for w, a in rows if w >= change)
            tele_vis.append(nxt - change)
    death = [when - kill_time for g, when in steady["deaths"] if groups.names.index(g) in killed]
    births = sorted(reborn["births"])
    storm_accept = {(g, seq): when for g, seq, _, _, when in reborn["accepted"]}
    storm_sent = [storm_accept.get((g, s)) for g, s, w, why in groups.sent if why == "birth"]
    storm_done = max((a for a in storm_sent if a is not None), default=float("nan")) - reborn["online_at"]
    absorb = births[-1] - reborn["online_at"] if len(births) >= args.groups else float("nan")
    first = sorted(steady["births"])
    cold = first[-1] - steady["online_at"] if len(first) >= args.groups else float("nan")
    return core | {
        "groups": args.groups,
        "nodes": args.groups * NODES_PER_GROUP,
        "interval_s": args.interval,
        "steady_window_s": round(wall, 1),
        "region_cpu_pct_of_one_core": round(100 * (cpu1 - cpu0) / wall, 1),
        "region_rss_mib_max": round(max(rss) / 2**20, 1),
        "broker_cpu_pct_of_one_core": round(100 * (bcpu1 - bcpu0) / wall, 1),
        "load_average_start_end": f"{load0:.1f} / {load1:.1f}",
        "region_tier_msgs_per_s": round((pub1 - pub0) / wall, 1),
        "group_tier_msgs_per_s_stated": args.groups * NODES_PER_GROUP / 10.0,
        "transit_p50_ms": round(1000 * pct(transit, 0.5), 1),
        "transit_p99_ms": round(1000 * pct(transit, 0.99), 1),
        "claim_change_visibility_p50_s": round(pct(claim_vis, 0.5), 2),
        "claim_change_visibility_p99_s": round(pct(claim_vis, 0.99), 2),
        "telemetry_visibility_p50_s": round(pct(tele_vis, 0.5), 2),
        "telemetry_visibility_p99_s": round(pct(tele_vis, 0.99), 2),
        "deaths_seen": f"{len(death)}/{args.deaths}",
        "death_visible_max_s": round(max(death), 1) if death else None,
        "death_visible_p50_s": round(pct(death, 0.5), 1) if death else None,
        "cold_start_all_units_pinned_s": round(cold, 2),
        "rebirth_units": len(births),
        "rebirth_all_units_known_s": round(absorb, 2),
        "rebirth_storm_absorb_s": round(storm_done, 2),
        "rebirth_births_accepted": f"{sum(a is not None for a in storm_sent)}/{len(storm_sent)}",
        "restarted_region_cpu_s_total": round(reborn["cpu_s"], 2),
        "summary_stage_sim_queue_p50_p99_ms": stages(sim_lag),
        "summary_stage_broker_hop_p50_p99_ms": stages(hop),
        "summary_stage_region_queue_p50_p99_ms": stages(queued),
        "summary_stage_region_handling_p50_p99_ms": stages(handling),
        "alloc_region_decision_p50_p99_ms": stages(decision),
        "alloc_client_to_region_p50_p99_ms": stages(hop_in),
        "alloc_region_to_client_p50_p99_ms": stages(hop_out),
        "alloc_placed_answer_p50_ms": round(pct(submitted["placed_ms"], 0.5), 1),
        "alloc_placed_answer_p99_ms": round(pct(submitted["placed_ms"], 0.99), 1),
        "alloc_lease_confirmed_p50_ms": round(pct(submitted["leased_ms"], 0.5), 1),
        "alloc_lease_confirmed_p99_ms": round(pct(submitted["leased_ms"], 0.99), 1),
        "alloc_submit_region_queue_p99_ms": round(1000 * pct(submit_queued, 0.99), 2),
        "alloc_route_decision_p99_ms": round(pct(steady["route_ms"], 0.99), 2),
        "alloc_region_confirm_p99_ms": round(pct(steady["confirm_ms"], 0.99), 1),
        "tasks_placed_leased_refused": (
            f"{len(submitted['placed_ms'])}/{len(submitted['leased_ms'])}/{submitted['refused']}"
            f" of {submitted['sent']}"
        ),
        "region_gc_full_collections_max_ms": round(
            1000 * max((t for g, t in steady["gc_pauses"] if g == 2), default=0.0), 1
        ),
        "region_gc_collections_over_20ms": sum(t > 0.02 for _, t in steady["gc_pauses"]),
        "rejected_at_region": steady["rejected"],
        "region_send_queue_refused": steady["send_refused"],
        "median_of": len(transit),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "region", "submitter"), default="bench")
    parser.add_argument("--groups", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=10.0, help="summary interval (s)")
    parser.add_argument("--steady", type=float, default=60.0, help="region's first run, in all (s)")
    parser.add_argument("--warmup", type=float, default=22.0, help="first part of it, not measured (s)")
    parser.add_argument("--storm-s", type=float, default=20.0, help="how long the restarted region runs")
    parser.add_argument("--deaths", type=int, default=20, help="groups that fall silent")
    parser.add_argument("--tasks", type=int, default=200, help="tasks submitted at the region")
    parser.add_argument(
        "--change-rate", type=float, default=20.0, help="claim changes per second, all groups"
    )
    parser.add_argument("--connections", type=int, default=8, help="MQTT connections standing in for bridges")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.role == "region":
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        run = region_main(f"mqtt://127.0.0.1:{args.port}", args.workdir, args.out, args.seconds, args.tasks)
        profile = os.environ.get("FEDSCALE_PROFILE")  # a path: write the region's cProfile there
        if profile and args.tasks:
            import cProfile

            with cProfile.Profile() as prof:
                asyncio.run(run)
            prof.dump_stats(profile)
        else:
            asyncio.run(run)
        return
    if args.role == "submitter":
        asyncio.run(submitter_main(args.port, args.out, args.tasks, args.seconds))
        return
    result = asyncio.run(orchestrate(args))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
