"""How fast the dashboard verifies messages in the browser, against PyNaCl in the same run.

Seals N heartbeats with the project's Signer, then opens each one (bounded CBOR decode, COSE_Sign1,
Ed25519 verify) with the page's own code (``window.prsmWire.openEnvelope`` in the built index.html,
cborg + @noble/ed25519, in headless Chromium) and with ``protocol.envelope.open_envelope`` (PyNaCl).
Prints both rates and their ratio. Needs Debian's chromium and playwright (the dev extra).

    .venv/bin/python benchmarks/dashboard_verify.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import time

from nacl.signing import SigningKey

from prsm_edge.io.brokerinfo import dashboard_dir
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.messages import Heartbeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    signers = [Signer(SigningKey(bytes([i + 1]) * 32)) for i in range(50)]
    sealed = [
        signers[i % 50].seal(
            Heartbeat(node=signers[i % 50].node_id, cpu_util=0.25, mem_util=0.5), 1_767_225_600_000 + i
        )
        for i in range(args.messages)
    ]
    start = time.perf_counter()
    for data in sealed:
        open_envelope(data)
    python_rate = len(sealed) / (time.perf_counter() - start)

    folder = dashboard_dir()
    chromium = shutil.which("chromium")
    if folder is None or chromium is None:
        raise SystemExit("needs the built dashboard and Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto((folder / "index.html").as_uri())
        page.wait_for_function("() => window.prsmWire !== undefined")
        elapsed_ms, verified = page.evaluate(
            """(items) => {
                 const bytes = items.map((b) => Uint8Array.from(atob(b), (c) => c.charCodeAt(0)))
                 for (const b of bytes.slice(0, 50)) window.prsmWire.openEnvelope(b)  // warm up the JIT
                 const t0 = performance.now()
                 let ok = 0
                 for (const b of bytes) if (window.prsmWire.openEnvelope(b).ok) ok++
                 return [performance.now() - t0, ok]
               }""",
            [base64.b64encode(d).decode() for d in sealed],
        )
        browser.close()
    assert verified == len(sealed), f"the page verified {verified} of {len(sealed)}"
    page_rate = len(sealed) / (elapsed_ms / 1000)
    print(f"messages: {len(sealed)} signed heartbeats ({len(sealed[0])} bytes each)")
    print(f"Python open_envelope (PyNaCl):           {python_rate:>9.0f} /s")
    print(f"dashboard openEnvelope (noble, Chromium): {page_rate:>9.0f} /s")
    print(f"page / Python: {page_rate / python_rate:.2f}")


if __name__ == "__main__":
    main()
