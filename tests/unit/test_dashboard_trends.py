"""The page's rollup reader (gateway/dashboard/src/trends.js, run by Node) against the coordinator's
rollup code: the rows the charts draw are the buckets Python published, coarse history before fine,
gaps where no sample fell, and the live buffer only after the rollup's last slot.

Needs Node and the packages `scripts/build-dashboard` installs into build/dashboard (CI runs it first).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from nacl.signing import SigningKey

from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.rollups import EARNED, Resolution, Rollups
from tests.unit.test_dashboard_wire import BUILD, REPO, _node_runner

T0 = 1_790_000_000 - 1_790_000_000 % 3600


def test_the_page_reads_the_rollup_the_coordinator_publishes(tmp_path: Path) -> None:
    node = _node_runner()
    rollups = Rollups((Resolution(60, 30), Resolution(3600, 4)))
    # Three hours ago, one hour of samples (only in the hourly series by now) ...
    for minute in range(0, 60, 5):
        rollups.add(T0 - 3 * 3600 + 60 * minute, {"online": 4, "cpu": 200, "trust:peer_verified": 3})
    # ... then the last half hour, minute by minute, with a gap (the coordinator down) in the middle.
    for minute in range(30):
        if 10 <= minute < 15:
            continue
        values = {"online": 5, "cpu": 500, "trust:self_reported": 2, "trust:benchmarked": 3}
        values[EARNED] = 2**40 if minute == 29 else 1_500_000
        rollups.add(T0 + 1800 + 60 * minute, values)
    sealed = Signer(SigningKey(b"\x03" * 32)).seal(rollups.message("lab", "web", (T0 + 3600) * 1000), 1)

    for name in ("wire.js", "trends.js"):
        shutil.copy(REPO / "gateway" / "dashboard" / "src" / name, tmp_path / name)
    (tmp_path / "node_modules").symlink_to(BUILD / "node_modules")
    script = tmp_path / "check.mjs"
    script.write_text(
        "import { openEnvelope } from './wire.js'\n"
        "import { rollupRows, mergeTrends } from './trends.js'\n"
        "const opened = openEnvelope(new Uint8Array(Buffer.from(process.argv[2], 'base64')))\n"
        "const rows = rollupRows(opened.body)\n"
        "const live = [[rows[rows.length - 1][0], 0.9, 9, 9], [rows[rows.length - 1][0] + 5, 0.7, 6, 1]]\n"
        "console.log(JSON.stringify({ ok: opened.ok, rows, merged: mergeTrends(rows, live).slice(-2) }))\n"
    )
    result = subprocess.run(
        [node, str(script), base64.b64encode(sealed).decode()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    assert page["ok"]
    rows = {row[0]: row[1:] for row in page["rows"]}
    # The hour three hours ago comes from the hourly series (the minute series no longer reaches it).
    assert rows[T0 - 3 * 3600] == [0.2, 4, 3, None]
    # The last half hour from the minute series; the gap is a gap, not zeros.
    assert rows[T0 + 1800] == [0.5, 5, 3, 1.5]
    assert rows[T0 + 1800 + 60 * 12] == [None, None, None, None]
    assert rows[T0 + 1800 + 60 * 29][3] == 2**40 / 1e6  # an 8-byte column, exact in the page
    # No hourly row overlaps the minute series (the hour it starts in is drawn from the minutes).
    assert not [t for t in rows if T0 <= t < T0 + 1800]
    times = [row[0] for row in page["rows"]]
    assert times == sorted(times)
    # The live buffer adds only what is newer than the rollup's last slot.
    assert page["merged"] == [page["rows"][-1], [times[-1] + 5, 0.7, 6, 1, None]]
