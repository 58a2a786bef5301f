"""kill -9 of a coordinator in the middle of crediting: the ledger verifies and nothing is paid twice.

A real process runs the shipping settlement loop against a real SQLite file and is killed with SIGKILL
while it credits; after a restart (which first re-settles the last period it finds, as a redelivered
trigger would) its ledger must equal, to the last hash, that of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol.ledger import Ledger, open_signed_chain
from tests.integration.ledger_writer import KEY

ROOT = Path(__file__).resolve().parents[2]
PERIODS = 24


def writer(db: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.ledger_writer", str(db), str(PERIODS), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def load(db: Path) -> Ledger:
    store = LedgerStore(db)
    try:
        return open_signed_chain(store.signed(), bytes(KEY.verify_key))
    finally:
        store.close()


def test_kill_9_mid_crediting_leaves_a_valid_ledger_and_no_double_credit(tmp_path: Path) -> None:
    reference = tmp_path / "reference.sqlite"
    done = writer(reference)
    out, err = done.communicate(timeout=90)
    assert done.returncode == 0, err
    expected = load(reference)
    periods = {e.key.split(":")[1] for e in expected.entries if e.kind == "credit"}
    assert len(periods) == PERIODS  # every period credited

    db = tmp_path / "crashed.sqlite"
    proc = writer(db)
    kill_after = random.Random(os.getpid()).randint(2, PERIODS // 2)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"settled {kill_after}"):
            break
    proc.send_signal(signal.SIGKILL)  # lands while the next period is being credited
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    crashed = load(db)  # every signature and link verifies
    assert 0 < len(crashed) < len(expected)
    assert crashed.entries == expected.entries[: len(crashed)]  # a prefix of the true history

    restarted = writer(db, "--replay-last")
    out, err = restarted.communicate(timeout=90)
    assert restarted.returncode == 0, err
    assert ": 0 new credits" in out.splitlines()[0]  # the redelivered settlement paid nothing
    final = load(db)
    assert final.head == expected.head
    keys = [e.key for e in final.entries]
    assert len(keys) == len(set(keys))
    for node in (f"n{i:02d}" for i in range(40)):
        assert final.balance(node) == expected.balance(node)

    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "prsm_edge",
            "ledger",
            "verify",
            "--db",
            str(db),
            "--key",
            bytes(KEY.verify_key).hex(),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["valid"] and report["entries"] == len(final) and report["head"] == final.head.hex()

    key = bytes(KEY.verify_key).hex()
    mine = subprocess.run(
        [
            sys.executable,
            "-m",
            "prsm_edge",
            "ledger",
            "verify",
            "--db",
            str(db),
            "--key",
            key,
            "--node",
            "n00",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)["balance_micro"] == final.balance("n00")
    wrong_key = subprocess.run(
        [sys.executable, "-m", "prsm_edge", "ledger", "verify", "--db", str(db), "--key", "00" * 32],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong_key.returncode == 1 and "INVALID" in wrong_key.stderr
