"""The node's key: created once, private, refused when others can read it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from prsm_edge.cli import main
from prsm_edge.errors import IdentityError
from prsm_edge.identity import SeqStore, load_or_create
from prsm_edge.protocol.envelope import node_id_for, open_envelope
from prsm_edge.protocol.messages import Heartbeat


def test_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "k")
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    second = load_or_create(tmp_path / "k")
    assert second.node_id == first.node_id == node_id_for(first.public_key)


def test_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    ident = load_or_create(tmp_path)
    ident.path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create(tmp_path)


def test_damaged_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "node.key").write_text("not hex")
    (tmp_path / "node.key").chmod(0o600)
    with pytest.raises(IdentityError, match="damaged"):
        load_or_create(tmp_path)


def test_sequence_keeps_rising_across_restarts(tmp_path: Path) -> None:
    store = SeqStore(tmp_path / "seq", block=4)
    seen = [store.next() for _ in range(10)]
    restarted = SeqStore(tmp_path / "seq", block=4)
    assert restarted.next() > max(seen)
    assert seen == sorted(set(seen))


def test_signer_from_identity_signs_verifiable_messages(tmp_path: Path) -> None:
    ident = load_or_create(tmp_path)
    data = ident.signer(SeqStore(tmp_path / "seq")).seal(
        Heartbeat(node=ident.node_id, cpu_util=0.1, mem_util=0.2), now_ms=7
    )
    assert open_envelope(data).signer == ident.node_id


def test_cli_identity_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["identity", "show", "--json", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert load_or_create(tmp_path).node_id in out
    (tmp_path / "node.key").chmod(0o640)
    assert main(["identity", "show", "--dir", str(tmp_path)]) == 2
    assert "chmod 600" in capsys.readouterr().err
