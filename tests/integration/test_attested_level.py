"""Hardware attestation on a live group: a software TPM whose maker's CA the coordinator was given earns
hardware_attested; a stolen key does not; and with the default (empty) CA set no software TPM does."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prsm_edge.io.tpm_registration import RegisterParams
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import Attestor, TpmUnavailable, calibrate_cpu_rate, tpm_attestor
from prsm_edge.protocol.messages import MICRO, TRUST_SCORE, VerificationLevel
from tests.conftest import free_port, require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running
from tests.integration.test_attest import LocalCa, SoftTpm

pytestmark = pytest.mark.integration

L = VerificationLevel
ORDER = list(VerificationLevel)


def _require_tpm_tools() -> None:
    for tool in ("swtpm", "swtpm_setup", "tpm2_getcap", "tpm2_quote", "tpm2_checkquote"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is not installed; .ci/run installs swtpm, swtpm-tools and tpm2-tools")
            pytest.skip(f"{tool} is not installed (apt-get install swtpm swtpm-tools tpm2-tools)")


@pytest.fixture
def maker(tmp_path: Path) -> LocalCa:
    """The local CA that makes (and certifies the EKs of) the software TPMs of these tests."""
    _require_tpm_tools()
    return LocalCa(tmp_path / "maker")


@pytest.fixture
def two_tpms(tmp_path: Path, maker: LocalCa) -> Iterator[tuple[SoftTpm, SoftTpm]]:
    """The attested node's software TPM, and the forger's own (another certified TPM, another AK)."""
    real = SoftTpm(tmp_path / "swtpm-real", maker)
    try:
        other = SoftTpm(tmp_path / "swtpm-forger", maker)
    except BaseException:
        real.stop()
        raise
    try:
        yield real, other
    finally:
        other.stop()
        real.stop()


def test_no_tpm_is_reported_with_the_reason(tmp_path: Path) -> None:
    _require_tpm_tools()
    with pytest.raises(TpmUnavailable, match="does not answer"):
        tpm_attestor(tmp_path / "ak", f"swtpm:host=127.0.0.1,port={free_port()}")
    assert not (tmp_path / "ak").exists(), "nothing is enrolled without a TPM"


async def test_tpm_node_reaches_hardware_attested_and_a_stolen_key_does_not(
    two_tpms: tuple[SoftTpm, SoftTpm], maker: LocalCa, tmp_path: Path
) -> None:
    require_mosquitto()
    started = time.monotonic()
    real_tpm, forger_tpm = two_tpms
    attestor = tpm_attestor(tmp_path / "ak", real_tpm.tcti)
    assert tpm_attestor(tmp_path / "ak", real_tpm.tcti).public_key == attestor.public_key, "idempotent"
    # The forger births with the real node's AK public key (it is public) and registers it beside its
    # own certified EK, but its TPM holds another AK: credential activation fails.
    own = tpm_attestor(tmp_path / "forger-ak", forger_tpm.tcti)
    assert own.public_key != attestor.public_key and own.registration is not None
    claim = RegisterParams(own.registration.ek_certificate, own.registration.ek_public, attestor.public_key)
    stolen = Attestor(attestor.public_key, own.quote, claim, own.activate)

    rate = calibrate_cpu_rate(0.1)
    async with host_group(
        tmp_path / "host",
        site=SITE,
        group=GROUP,
        heartbeat_timeout_s=10,
        verification=fast_rounds(),
        tpm_ca_dir=maker.trusted(),  # the software TPMs' own CA, given explicitly
    ) as host:
        coord = host.coordinator
        assert coord.options.verify
        url = host.broker.url
        plain = [Agent(agent_options(url, tmp_path / f"h{i}", cpu_rate=rate)) for i in range(3)]
        attested = Agent(agent_options(url, tmp_path / "tpm", cpu_rate=rate, attestor=attestor))
        forger = Agent(agent_options(url, tmp_path / "forger", cpu_rate=rate, attestor=stolen))
        everyone = (*plain, attested, forger)
        g = coord.group
        highest: dict[str, int] = {}

        def levels_reached(want: dict[str, VerificationLevel]) -> bool:
            for a in everyone:
                level = ORDER.index(g.level(a.node_id)) if a.node_id in g.members else 0
                highest[a.node_id] = max(highest.get(a.node_id, 0), level)
            return all(g.level(node) is level for node, level in want.items())

        async with running(coord, *everyone):
            await eventually(lambda: g.online_count == 5, timeout=15, what="all joined")
            assert g.members[attested.node_id].attestation_key == attestor.public_key
            assert g.members[forger.node_id].attestation_key == attestor.public_key
            for a in everyone:
                coord.deposit(a.node_id, 100 * MICRO, key=f"deposit:{a.node_id}")
            for a in everyone:
                resp = await a.call("stake", {"amount_micro": 90 * MICRO})
                assert resp.ok, resp.error

            want = {a.node_id: L.ECONOMICALLY_STAKED for a in (*plain, forger)}
            want[attested.node_id] = L.HARDWARE_ATTESTED
            await eventually(lambda: levels_reached(want), timeout=25, what="levels reached")

            # The roster holds the attested node at 0.95, and the node sees the same through the API.
            member = g.members[attested.node_id]
            assert g.trust(member.node) == TRUST_SCORE[L.HARDWARE_ATTESTED] == 0.95
            status = await attested.call("status", {})
            assert status.ok and status.result["level"] == L.HARDWARE_ATTESTED.value
            assert status.result["trust"] == 0.95
            assert status.result["attestation"]["registered"] is True
            # Its quotes were verified; the forger never registered, so it was never asked for a quote
            # and never rose above staked, and its status says why.
            history = {
                a.node_id: [e for _, e in coord.verifier.nodes[a.node_id].evidence.history] for a in everyone
            }
            assert "attestation verified" in history[attested.node_id]
            assert "attestation failed" not in history[attested.node_id]
            assert not any("attestation" in e for e in history[forger.node_id])
            assert highest[forger.node_id] <= ORDER.index(L.ECONOMICALLY_STAKED)
            forger_status = await forger.call("status", {})
            assert forger_status.result["attestation"]["registered"] is False
            assert "activation failed" in forger_status.result["attestation"]["reason"]
            # Nodes without a TPM are never asked for a quote and stop at staked.
            for a in plain:
                assert highest[a.node_id] == ORDER.index(L.ECONOMICALLY_STAKED)
                assert not any("attestation" in e for e in history[a.node_id])
            # The forger's proofs are honest: only its attestation is refused, nothing is slashed.
            assert coord.ledger.stake(forger.node_id) == 90 * MICRO
    assert time.monotonic() - started < 30


async def test_default_ca_set_keeps_a_software_tpm_below_hardware_attested(
    maker: LocalCa, tmp_path: Path
) -> None:
    """With the CAs prsm-edge ships (none), a software TPM's node stops at staked and is told why."""
    require_mosquitto()
    tpm = SoftTpm(tmp_path / "swtpm", maker)
    try:
        attestor = tpm_attestor(tmp_path / "ak", tpm.tcti)
        rate = calibrate_cpu_rate(0.1)
        async with host_group(
            tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
        ) as host:
            coord = host.coordinator
            url = host.broker.url
            plain = [Agent(agent_options(url, tmp_path / f"h{i}", cpu_rate=rate)) for i in range(3)]
            node = Agent(agent_options(url, tmp_path / "tpm", cpu_rate=rate, attestor=attestor))
            everyone = (*plain, node)
            g = coord.group
            highest = 0

            def settled_while_staked() -> bool:
                nonlocal highest
                member = g.members.get(node.node_id)
                if member is None:
                    return False
                level = g.level(member.node)
                highest = max(highest, ORDER.index(level))
                if level not in (L.ECONOMICALLY_STAKED, L.HARDWARE_ATTESTED):
                    return False
                history = [e for _, e in coord.verifier.nodes[node.node_id].evidence.history]
                return history.count("proof passed") >= 3  # rounds in which a quote would have been asked

            async with running(coord, *everyone):
                await eventually(lambda: g.online_count == 4, timeout=15, what="all joined")
                for a in everyone:
                    coord.deposit(a.node_id, 100 * MICRO, key=f"deposit:{a.node_id}")
                    resp = await a.call("stake", {"amount_micro": 90 * MICRO})
                    assert resp.ok, resp.error
                await eventually(settled_while_staked, timeout=25, what="staked, several rounds settled")
                assert highest == ORDER.index(L.ECONOMICALLY_STAKED), "a software TPM never reaches 0.95"
                history = [e for _, e in coord.verifier.nodes[node.node_id].evidence.history]
                assert "attestation verified" not in history
                status = await node.call("status", {})
                assert status.ok and status.result["level"] == L.ECONOMICALLY_STAKED.value
                assert status.result["attestation"]["registered"] is False
                assert "no TPM manufacturer CA is configured" in status.result["attestation"]["reason"]
    finally:
        tpm.stop()
