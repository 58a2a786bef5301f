"""The coordinator's roster store on real SQLite files: what a member's birth said survives a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prsm_edge.io.store import RosterStore
from prsm_edge.protocol import cbor
from prsm_edge.protocol.group import Member, member_to_dict
from prsm_edge.protocol.messages import ResourceSpec, ResourceType


def member(node: str, *, ha_controls: bool) -> Member:
    return Member(
        node=node,
        public_key=bytes(32),
        bdseq=3,
        device_class="raspberry_pi",
        hw_fingerprint="fp",
        resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=2.0, unit="cores")],
        joined_ms=1_000,
        last_seen_ms=2_000,
        ha_controls=ha_controls,
    )


def test_home_assistant_controls_survive_a_restart(tmp_path: Path) -> None:
    store = RosterStore(tmp_path / "roster.sqlite")
    store.save(member("on", ha_controls=True))
    store.save(member("off", ha_controls=False))
    store.close()
    reopened = RosterStore(tmp_path / "roster.sqlite")
    loaded = {m.node: m for m in reopened.load()}
    reopened.close()
    assert loaded["on"].ha_controls is True  # fails before the field was stored: it came back False
    assert loaded["off"].ha_controls is False


def test_a_store_written_before_home_assistant_controls_opens(tmp_path: Path) -> None:
    """A file from the previous release: its records have no ``ha_controls``; they load with it off, and
    the next save writes it."""
    path = tmp_path / "roster.sqlite"
    old = member_to_dict(member("old", ha_controls=False))
    del old["ha_controls"]
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE members (node TEXT PRIMARY KEY, record BLOB NOT NULL)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO members VALUES (?, ?)", ("old", cbor.dumps(old)))
    db.execute("INSERT INTO meta VALUES ('epoch', 7)")
    db.commit()
    db.close()

    store = RosterStore(path)
    assert store.next_epoch() == 8
    (loaded,) = store.load()
    assert loaded.node == "old" and loaded.bdseq == 3 and loaded.ha_controls is False
    loaded.ha_controls = True  # the node's next birth turns them on
    store.save(loaded)
    store.close()
    again = RosterStore(path)
    assert [m.ha_controls for m in again.load()] == [True]
    again.close()
