"""``omnirelay check-config``: every error with key, line and hint; exit 78; no secrets.

Each broken file under ``configs/`` states what it must produce in ``# expect:`` lines
(``KEY | LINE | text in the message or hint``); the command must report exactly those.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.ops.conftest import CONFIGS, ROOT, omnirelay

EX_CONFIG = 78
MARKER = "S3CRET"  # every secret value in the broken files carries it
BROKEN = sorted(CONFIGS.glob("*.toml"))
EXAMPLE = ROOT / "systemd" / "omnirelay.toml.example"
CREDENTIALS = ("helpdesk-token", "ops-token", "helpdesk-webhook-secret",
               "support-smtp-password", "crm-api-secret")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that could make a broken secret resolve."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "OMNIRELAY_TEST_UNSET")}
    return {**env, **extra}


def expectations(path: Path) -> list[tuple[str, int, str]]:
    """The ``# expect: key | line | text`` lines of a broken config."""
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            key, number, text = (part.strip() for part in line[9:].split("|"))
            found.append((key, int(number), text))
    assert found, f"{path.name} states no expectations"
    return found


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_config_reports_each_error_with_key_line_and_hint(path: Path) -> None:
    result = omnirelay("check-config", str(path), env=clean_env())
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    errors = [line for line in lines if not line.endswith("error(s)")]
    expected = expectations(path)
    assert lines[-1] == f"{path}: {len(expected)} error(s)"
    assert len(errors) == len(expected), "\n".join(errors)
    for key, number, text in expected:
        prefix = f"{path}: {key} (line {number}): "
        matching = [line for line in errors if line.startswith(prefix)]
        assert matching, f"no error for {key} at line {number} in:\n" + "\n".join(errors)
        assert any(text in line for line in matching), (text, matching)
    for line in errors:
        assert re.search(r": \S+ \(line \d+\): .+ — hint: .+", line), line
    assert MARKER not in result.stdout + result.stderr


def test_run_refuses_a_broken_config_with_exit_78_and_no_secrets() -> None:
    """systemd's RestartPreventExitStatus=78 relies on this: a bad config is not retried."""
    result = omnirelay("run", "--config", str(CONFIGS / "duplicates.toml"), env=clean_env())
    assert result.returncode == EX_CONFIG
    assert "channels[1].name (line 11)" in result.stderr
    assert MARKER not in result.stdout + result.stderr


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = omnirelay("check-config", str(tmp_path / "nope.toml"), env=clean_env())
    assert result.returncode == EX_CONFIG
    assert "cannot read" in result.stderr and "hint:" in result.stderr


def write_credentials(directory: Path, prefix: str = "") -> dict[str, str]:
    """One file per credential the example config names; returns name → value."""
    directory.mkdir()
    values = {}
    for name in CREDENTIALS:
        values[name] = f"{name}-{MARKER}-0123456789abcdef"
        (directory / f"{prefix}{name}").write_text(values[name] + "\n")
    return values


@pytest.mark.parametrize("prefix", ["", "omnirelay_"], ids=["by-hand", "unit-loaded"])
def test_shipped_example_config_is_valid_with_credentials(tmp_path: Path, prefix: str) -> None:
    """By hand (CREDENTIALS_DIRECTORY=/etc/omnirelay/credentials) and as the unit loads
    them (LoadCredential=omnirelay:DIR names each file omnirelay_<file>)."""
    write_credentials(tmp_path / "creds", prefix)
    result = omnirelay("check-config", str(EXAMPLE),
                       env=clean_env(CREDENTIALS_DIRECTORY=str(tmp_path / "creds")))
    assert result.returncode == 0, result.stderr
    assert "OK — 2 channel(s): support (email), crm (api)" in result.stdout
    assert MARKER not in result.stdout + result.stderr
    # Port 25 needs the drop-in; check-config says so.
    assert "smtp_listen port 25 is privileged" in result.stderr
    assert "smtp-port-25.conf" in result.stderr


def test_example_config_without_credentials_names_each_missing_one() -> None:
    result = omnirelay("check-config", str(EXAMPLE), env=clean_env())
    assert result.returncode == EX_CONFIG
    assert result.stderr.count("CREDENTIALS_DIRECTORY is not set") == len(CREDENTIALS)
