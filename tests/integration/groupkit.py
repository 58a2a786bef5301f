"""Helpers to run a coordinator and agents against a real broker inside one test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from prsm_edge.coordinator.service import Coordinator, CoordinatorOptions, CredentialIssuer
from prsm_edge.identity import load_or_create
from prsm_edge.node.agent import Agent, AgentOptions, Sample
from prsm_edge.protocol.messages import ResourceSpec, ResourceType
from prsm_edge.protocol.verifier import VerifierConfig

SITE, GROUP = "lab", "g1"


def cpu(cores: float) -> list[ResourceSpec]:
    return [ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=cores, unit="cores")]


def fast_rounds() -> VerifierConfig:
    """Verification for tests: every agent shares this machine's cores and one GIL, so rounds are quick,
    deadlines generous and the minimum measured rate is off; the coordinator fills in its own id."""
    return VerifierConfig(
        site=SITE,
        group=GROUP,
        coordinator="",
        round_ms=2_000,
        vote_timeout_ms=4_000,
        segments=64,
        opens=8,
        target_ms=50,
        slack=20.0,
        network_ms=800,
        min_rate_ratio=0.0,
    )


def capacities(resources: list[ResourceSpec]) -> dict[str, float]:
    return {r.type.value: r.capacity for r in resources}


def quiet_sample() -> Sample:
    return Sample(cpu_util=0.1, mem_util=0.2)


def agent_options(url: str, workdir: Path, **kw: object) -> AgentOptions:
    base: dict[str, object] = {
        "site": SITE,
        "group": GROUP,
        "broker_url": url,
        "workdir": workdir,
        "resources": cpu(2.0),
        "hw_fingerprint": f"fp-{workdir.name}",
        "heartbeat_interval_s": 0.2,
        "keepalive_s": 2,
        "sample": quiet_sample,
        "cpu_rate": 1_000_000.0,  # skip the start-up calibration; verification tests measure for real
    }
    base.update(kw)
    return AgentOptions(**base)  # type: ignore[arg-type]


def coordinator(url: str, workdir: Path, issuer: CredentialIssuer | None = None, **kw: object) -> Coordinator:
    opts: dict[str, object] = {
        "site": SITE,
        "group": GROUP,
        "broker_url": url,
        "workdir": workdir,
        "heartbeat_timeout_s": 3.0,
        "summary_interval_s": 0.5,
        "tick_s": 0.1,
        "verify": False,  # verification tests switch it on
    }
    opts.update(kw)
    ident = load_or_create(workdir / "key")
    return Coordinator(ident, CoordinatorOptions(**opts), issuer=issuer)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(*runnables: Coordinator | Agent) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run coordinators/agents as tasks; cancel (gracefully) on exit."""
    tasks = [asyncio.create_task(r.run()) for r in runnables]
    try:
        yield tasks
    finally:
        for task in reversed(tasks):
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
    assert predicate(), what


def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
