"""The shipped systemd files pass systemd's own offline checks.

``systemd-analyze verify`` exits 0 on unknown keys and bad values (it only warns), so any
output at all fails the test. It also insists that ExecStart's binary exists on this
machine, so the unit is verified from a temp copy whose commands point at one that does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT

SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "omnirelay.service"
INSTALLED_BINARY = "/opt/omnirelay/current/bin/omnirelay"
MAX_EXPOSURE = 2.0  # systemd-analyze security: 0 (locked down) … 10 (exposed); "OK" < 4

# On a developer machine without systemd the checks are skipped; CI (CI=true) installs it
# through scripts/setup --test, so there a missing binary fails instead of hiding.
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and os.environ.get("CI") != "true",
    reason="needs systemd-analyze (apt systemd; scripts/setup --test installs it)")


def unit_copy(tmp_path: Path, *, drop_in: bool = False) -> Path:
    """The unit with its install path swapped for a binary that exists here."""
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    unit = tmp_path / "omnirelay.service"
    unit.write_text(text.replace(INSTALLED_BINARY, "/bin/true"))
    if drop_in:
        folder = tmp_path / "omnirelay.service.d"
        folder.mkdir()
        shutil.copy(SYSTEMD / "smtp-port-25.conf", folder / "smtp-port-25.conf")
    return unit


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze, output merged (warnings go to stderr)."""
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@needs_systemd
@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+smtp-port-25"])
def test_unit_verifies_without_any_output(tmp_path: Path, drop_in: bool) -> None:
    unit = unit_copy(tmp_path, drop_in=drop_in)
    result = systemd_analyze("verify", "--man=no", "--recursive-errors=no", str(unit))
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr)


@needs_systemd
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check is live: a misspelt key produces output (and so fails the test above)."""
    unit = unit_copy(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = systemd_analyze("verify", "--man=no", "--recursive-errors=no", str(unit))
    assert "WatchdogSecs" in result.stdout + result.stderr


@needs_systemd
@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+smtp-port-25"])
def test_security_exposure_is_low(tmp_path: Path, drop_in: bool) -> None:
    unit = unit_copy(tmp_path, drop_in=drop_in)
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for omnirelay.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, every value of repeated keys kept."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_has_what_the_daemon_and_a_reviewer_rely_on() -> None:
    unit = directives(UNIT.read_text())
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["78"], "User": ["omnirelay"],
        "StateDirectory": ["omnirelay"], "ConfigurationDirectory": ["omnirelay"],
        "ProtectSystem": ["strict"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"], "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "CapabilityBoundingSet": [""], "AmbientCapabilities": [""],
        "LoadCredential": ["omnirelay:/etc/omnirelay/credentials"],
        "ExecReload": [f"{INSTALLED_BINARY} check-config /etc/omnirelay/omnirelay.toml",
                       "/bin/kill -HUP $MAINPID"],
    }
    for key, value in expected.items():
        assert unit.get(key) == value, key
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["ExecStart"] == [
        f"{INSTALLED_BINARY} run --config /etc/omnirelay/omnirelay.toml"]
    # The watchdog must outlast a ping interval with room; stop must outlast the drain.
    assert int(unit["WatchdogSec"][0]) >= 10
    assert int(unit["TimeoutStopSec"][0]) > 20 + 5  # default shutdown_timeout + margin
    drop_in = directives((SYSTEMD / "smtp-port-25.conf").read_text())
    assert drop_in["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert drop_in["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None and os.environ.get("CI") != "true",
                    reason="needs systemd-sysusers")
def test_sysusers_file_creates_the_service_account(tmp_path: Path) -> None:
    """Applied to an empty root directory, never to this machine."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD / "omnirelay.sysusers")],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^omnirelay:x:\d+:\d+:omnirelay message gateway:/var/lib/omnirelay:"
                     r"\S*nologin$", passwd, re.M), passwd
    assert re.search(r"^omnirelay:x:\d+:", (root / "etc" / "group").read_text(), re.M)


def test_install_doc_matches_the_unit() -> None:
    """docs/install.md installs what the unit expects, where it expects it."""
    doc = (ROOT / "docs" / "install.md").read_text()
    for needle in ("/opt/omnirelay/current", "/etc/omnirelay/omnirelay.toml",
                   "/etc/omnirelay/credentials", "omnirelay.sysusers",
                   "systemctl enable --now omnirelay", "smtp-port-25.conf",
                   "omnirelay backup", "systemd-analyze security"):
        assert needle in doc, needle
