"""The dashboard's verifier (gateway/dashboard/src/wire.js, cborg + @noble/ed25519, run by Node) against
the project's envelope code: same verdicts on the same bytes, same node ids from the same keys.

Needs Node and the packages `scripts/build-dashboard` installs into build/dashboard (CI runs it first).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from prsm_edge.errors import RejectedMessage
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.messages import Heartbeat, NodeBirth, ResourceSpec, ResourceType

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "dashboard"


def _node_runner() -> str:
    node = shutil.which("node")
    if node is None or not (BUILD / "node_modules" / "cborg").is_dir():
        if os.environ.get("CI"):
            pytest.fail(
                "Node and build/dashboard/node_modules are missing; .ci/run runs scripts/build-dashboard"
            )
        pytest.skip("needs Node and `scripts/build-dashboard` (installs the dashboard's packages)")
    assert node is not None
    return node


def _cases() -> list[tuple[str, bytes]]:
    a, b = Signer(SigningKey(b"\x01" * 32)), Signer(SigningKey(b"\x02" * 32))
    birth = NodeBirth(
        node=a.node_id,
        bdseq=1,
        public_key=a.public_key,
        device_class="generic",
        software="test",
        hw_fingerprint="fp",
        resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=1.5, unit="cores", details={"x": 1})],
    )
    good_birth = a.seal(birth, 1_767_225_600_000)
    good_hb = b.seal(Heartbeat(node=b.node_id, cpu_util=0.125, mem_util=0.5, temperature_c=41.5), 1)
    flipped = bytearray(good_birth)
    flipped[-70] ^= 0x01  # in the payload
    bad_sig = bytearray(good_hb)
    bad_sig[-1] ^= 0x80  # in the signature
    swapped = bytearray(good_hb)
    swapped[7:39] = a.public_key  # the kid names another key
    return [
        ("birth", good_birth),
        ("heartbeat", good_hb),
        ("flipped payload", bytes(flipped)),
        ("flipped signature", bytes(bad_sig)),
        ("other key", bytes(swapped)),
        ("truncated", good_hb[:-5]),
        ("not cbor", b"\xff\x00"),
    ]


def test_the_page_and_the_package_agree_on_every_verdict_and_node_id(tmp_path: Path) -> None:
    node = _node_runner()
    cases = _cases()
    # The page's module, beside the packages the build installed (ES modules resolve from their folder).
    shutil.copy(REPO / "gateway" / "dashboard" / "src" / "wire.js", tmp_path / "wire.js")
    (tmp_path / "node_modules").symlink_to(BUILD / "node_modules")
    script = tmp_path / "check.mjs"
    script.write_text(
        "import { openEnvelope } from './wire.js'\n"
        "const cases = JSON.parse(process.argv[2])\n"
        "const out = cases.map(([name, b64]) => {\n"
        "  const r = openEnvelope(new Uint8Array(Buffer.from(b64, 'base64')))\n"
        "  return [name, r.ok, r.signer ?? null, r.ok ? r.body.node : null]\n"
        "})\n"
        "console.log(JSON.stringify(out))\n"
    )
    payload = json.dumps([[n, base64.b64encode(d).decode()] for n, d in cases])
    result = subprocess.run(
        [node, str(script), payload], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    page = {name: (ok, signer, body_node) for name, ok, signer, body_node in json.loads(result.stdout)}
    for name, data in cases:
        try:
            opened = open_envelope(data)
            python: tuple[bool, str | None] = (True, opened.signer)
        except RejectedMessage:
            python = (False, None)
        assert page[name][0] == python[0], name
        if python[0]:
            assert page[name][1] == python[1] and page[name][2] == python[1], name


@pytest.mark.parametrize("kind", ["webcrypto", "javascript"])
def test_the_batch_opener_agrees_with_the_package_under_either_verifier(tmp_path: Path, kind: str) -> None:
    """EnvelopeOpener (what the live page uses: WebCrypto's Ed25519, or the JavaScript one in slices)
    gives every envelope, in order, the verdict the Python package gives; an empty payload stays null."""
    node = _node_runner()
    cases = _cases()
    shutil.copy(REPO / "gateway" / "dashboard" / "src" / "wire.js", tmp_path / "wire.js")
    (tmp_path / "node_modules").symlink_to(BUILD / "node_modules")
    script = tmp_path / "check.mjs"
    script.write_text(
        "import { EnvelopeOpener } from './wire.js'\n"
        "const cases = JSON.parse(process.argv[2])\n"
        f"const opener = new EnvelopeOpener({{ webCrypto: {'true' if kind == 'webcrypto' else 'false'} }})\n"
        "const payloads = cases.map(([, b64]) => new Uint8Array(Buffer.from(b64, 'base64')))\n"
        "const opened = await opener.openAll([...payloads, new Uint8Array(0), ...payloads])\n"
        "const verdicts = opened.map((r) => (r ? [r.ok, r.signer ?? null] : null))\n"
        "console.log(JSON.stringify([opener.kind, verdicts]))\n"
    )
    payload = json.dumps([[n, base64.b64encode(d).decode()] for n, d in cases])
    result = subprocess.run(
        [node, str(script), payload], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    used, verdicts = json.loads(result.stdout)
    assert used == kind
    want: list[list[object] | None] = []
    for _, data in cases:
        try:
            want.append([True, open_envelope(data).signer])
        except RejectedMessage:
            want.append(None)
    got = [v if v is None or v[0] else None for v in verdicts]  # a refusal is a refusal, whatever its reason
    assert got == [*want, None, *want]
    assert verdicts[len(cases)] is None
