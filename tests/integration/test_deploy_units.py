"""gateway/deploy's systemd units: systemd accepts them, and their commands parse on the plain path."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prsm_edge.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "gateway" / "deploy"
UNITS = {  # file -> the name systemd is asked about
    "prsm-edge-coordinate@.service": "prsm-edge-coordinate@g1.service",
    "prsm-edge-gateway@.service": "prsm-edge-gateway@g1.service",
    "prsm-edge-region.service": "prsm-edge-region.service",
}
# What an operator puts in /etc/prsm-edge/gateway-g1.env (the unit's comment says so).
GATEWAY_ENV = {
    "SITE": "lab",
    "REGION_SITE": "eu",
    "REGION": "r1",
    "UPLINK_USERNAME": "unit-lab-g1",
    "UPLINKS": "--uplink mqtt://a.example:1884 --uplink mqtt://b.example:1884",
}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _exec_argv(text: str, instance: str, env: dict[str, str]) -> list[str]:
    """ExecStart= as systemd would run it: %i and %d replaced, ${X} one word, $X split on spaces."""
    for line in text.splitlines():
        if line.startswith("Environment="):
            for pair in shlex.split(line.removeprefix("Environment=")):
                key, _, value = pair.partition("=")
                env = {key: value, **env}  # the env file (given) wins over the unit's defaults
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    argv: list[str] = []
    for word in line.removeprefix("ExecStart=").replace("%i", instance).split():
        word = word.replace("%d", "/run/credentials/unit")
        if m := re.fullmatch(r"\$([A-Z_]+)", word):
            argv += env[m[1]].split()
        else:
            argv.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: env[m[1]], word))
    return argv


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_each_units_command_is_the_plain_path_and_parses(unit: str) -> None:
    text = (DEPLOY / unit).read_text()
    argv = _exec_argv(text, "g1", GATEWAY_ENV if "gateway" in unit else {})
    assert argv[0] == "/usr/local/bin/prsm-edge"
    assert "--external" not in argv and "--local" not in argv  # every broker is the command's own
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown or malformed option
    assert args.workdir == Path("/var/lib/prsm-edge")
    if "gateway" in unit:
        assert args.uplink == ["mqtt://a.example:1884", "mqtt://b.example:1884"]
        assert args.uplink_username == "unit-lab-g1" and args.group == "g1"
        assert args.uplink_password is None  # never on the command line (ps): a credential file
        assert args.uplink_password_file == Path("/run/credentials/unit/uplink-password")
        assert "Requires=prsm-edge-coordinate@%i.service" in text.splitlines()
    # One user and state folder for all three, so the gateway can reach the coordinator's broker.
    for line in ("DynamicUser=yes", "User=prsm-edge", "StateDirectory=prsm-edge"):
        assert line in text.splitlines()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_units(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(Path("/usr/lib/systemd/system"), root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy2(DEPLOY / name, units / name)
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(Path(sys.executable).with_name("prsm-edge"), root / "usr/local/bin/prsm-edge")
    verify = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", f"--root={root}", *UNITS.values()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "prsm-edge" not in verify.stderr, verify.stderr  # no warning about our units at all
