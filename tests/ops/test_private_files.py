"""Files private by default, whatever umask the daemon or a CLI command is started with."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import free_port
from tests.helpers import post_inbound, unique
from tests.ops.conftest import OpsDaemon, crm_config


class UmaskDaemon(OpsDaemon):
    """The daemon started the way a shell or a careless service manager would: umask 022."""

    def start(self) -> None:
        """Start ``omnirelay run`` under umask 022."""
        previous = os.umask(0o022)  # inherited by the child; restored at once
        try:
            super().start()
        finally:
            os.umask(previous)


def mode(path: Path) -> str:
    """``path``'s permission bits, as ``ls`` people read them."""
    return oct(stat.S_IMODE(path.stat().st_mode))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``omnirelay …`` run under umask 022."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, umask=0o022,
                          timeout=60, check=False)


async def test_a_daemon_started_with_umask_022_keeps_its_files_private(
        tmp_path: Path, daemons: list[OpsDaemon], http: aiohttp.ClientSession) -> None:
    data = tmp_path / "data"
    # What an earlier start under umask 022 left behind: a 0755 dir, a 0644 database.
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    sqlite3.connect(data / "omnirelay.db").close()
    (data / "omnirelay.db").chmod(0o644)
    config, http_port = crm_config(tmp_path, data=data)
    daemon = UmaskDaemon(tmp_path, config, http_port)
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    status, body = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "attachments": [
            {"filename": "scan.pdf", "content_type": "application/pdf",
             "content_base64": base64.b64encode(unique("bytes").encode()).decode()}]})
    assert status == 201, body

    assert mode(data) == "0o700"
    for name in ("omnirelay.db", "omnirelay.db-wal", "omnirelay.db-shm", "omnirelay.db.lock"):
        assert mode(data / name) == "0o600", name
    blobs = [p for p in (data / "blobs").rglob("*")]
    assert blobs
    for path in blobs:
        assert mode(path) == ("0o700" if path.is_dir() else "0o600"), path
    assert await daemon.stop() == 0


async def test_a_backup_taken_with_umask_022_is_0600(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    config, http_port = crm_config(tmp_path)
    daemon = UmaskDaemon(tmp_path, config, http_port)
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    target = tmp_path / "backups" / "omnirelay.db"
    target.parent.mkdir()
    result = cli("backup", str(target), "--config", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    assert mode(target) == "0o600"
    assert await daemon.stop() == 0


def test_the_embedded_default_refuses_an_api_token_under_16_characters(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = cli("run", env={"OMNIRELAY_API_TOKEN": "short-token-123",  # 15 characters
                             "OMNIRELAY_DATA_DIR": str(data),
                             "OMNIRELAY_LISTEN": f"127.0.0.1:{free_port()}",
                             "OMNIRELAY_SMTP_LISTEN": f"127.0.0.1:{free_port()}"})
    assert result.returncode == 78, result.stderr
    assert "OMNIRELAY_API_TOKEN" in result.stderr
    assert "16 characters" in result.stderr
    assert "short-token-123" not in result.stderr + result.stdout
    assert not data.exists()  # refused before anything was written
