"""The rendered pieces of federation's logins: the bridge's local login, the roles' shapes, the folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from prsm_edge.errors import BrokerError, ConfigError
from prsm_edge.gateway.bridge import render_bridge
from prsm_edge.io.bridges import install_bridge
from prsm_edge.io.broker import bridge_files
from prsm_edge.io.dynsec import gateway_role_acls, gateway_username, unit_role_acls, unit_username


def _bridge(**kw: str) -> str:
    return render_bridge(
        site="lab", group="g1", gateway="ngw", region_site="eu", region="r1", uplinks=["mqtt://r:1884"], **kw
    )


def test_the_bridge_names_its_local_login_only_when_given() -> None:
    lines = _bridge(local_username=gateway_username("ngw")).splitlines()
    assert "local_username gw-ngw" in lines
    assert not any(line.startswith("local_") and "username" in line for line in _bridge().splitlines())
    with pytest.raises(ConfigError):
        _bridge(local_username="gw ngw")


def test_roles_name_exact_subtrees_and_no_catch_all() -> None:
    for acls in (gateway_role_acls("lab", "g1", "ngw"), unit_role_acls("eu", "r1", "lab", "g1")):
        topics = [a["topic"] for a in acls]
        assert all(not t.endswith("/#") and "#" not in t for t in topics), topics
        assert all(a["allow"] for a in acls)
    writes = [
        a["topic"] for a in gateway_role_acls("lab", "g1", "ngw") if a["acltype"] == "publishClientSend"
    ]
    assert not any("/node/" in t or "/coord/" in t or t.endswith("/summary") for t in writes), writes
    unit = [a["topic"] for a in unit_role_acls("eu", "r1", "lab", "g1")]
    assert all("/unit/lab/g1/" in t or "/gw/" in t or t.endswith("/r1/coord/state") for t in unit), unit
    assert unit_username("lab", "g1") == "unit-lab-g1"
    with pytest.raises(BrokerError):
        gateway_role_acls("lab", "g1", "+")
    with pytest.raises(BrokerError):
        unit_role_acls("eu", "r1", "lab", "g1/#")


def test_install_bridge_is_atomic_private_and_idempotent(tmp_path: Path) -> None:
    folder = tmp_path / "bridges"
    with pytest.raises(BrokerError, match="coordinate"):
        install_bridge(folder, "gateway-g1", "connection x\n")
    folder.mkdir()
    assert install_bridge(folder, "gateway-g1", "connection x\n")
    assert not install_bridge(folder, "gateway-g1", "connection x\n")
    path = folder / "gateway-g1.conf"
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(bridge_files(folder)) == ["gateway-g1.conf"]  # no temporary file left behind
    assert install_bridge(folder, "gateway-g1", "connection y\n")
    with pytest.raises(BrokerError):
        install_bridge(folder, "../escape", "connection z\n")
