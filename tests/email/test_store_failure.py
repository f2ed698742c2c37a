"""A store that cannot write answers 451 and acknowledges nothing; it recovers by itself."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Daemon, base_config
from tests.email.conftest import Feed
from tests.email.servers import mail, ports
from tests.email.test_smtp_inbound import smtplib_send
from tests.helpers import unique

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux")


class PipedDaemon(Daemon):
    """A daemon whose output goes through a pipe, not a file.

    The test takes away the daemon's right to grow files (RLIMIT_FSIZE), which is how a
    full disk looks to SQLite; its log must not be a file it then cannot write either.
    """

    def start(self) -> None:
        """Start with stdout on a pipe copied to the log by a thread of ours."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_handles.append(log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            cwd=self.tmp, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        proc = self.proc

        def copy() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()

        threading.Thread(target=copy, daemon=True, name="daemon-log").start()

    def limit_file_size(self, soft: str) -> None:
        """``prlimit`` on our own child only (the soft limit; the hard one stays)."""
        assert self.proc is not None
        subprocess.run(["prlimit", "--pid", str(self.proc.pid), f"--fsize={soft}:"],
                       check=True)


@pytest.fixture
async def piped_daemon(tmp_path: Path) -> AsyncIterator[PipedDaemon]:
    """A fresh daemon (its store is about to be broken on purpose)."""
    http_port, smtp_port = ports(2)
    daemon = PipedDaemon(tmp_path, base_config(tmp_path / "data", http_port, smtp_port),
                         http_port)
    daemon.smtp_port = smtp_port  # type: ignore[attr-defined]
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    daemon.limit_file_size("unlimited")
    assert await daemon.stop() == 0, daemon.logs()


async def test_full_disk_answers_451_and_nothing_is_acknowledged(
        piped_daemon: PipedDaemon, http: aiohttp.ClientSession) -> None:
    port = piped_daemon.smtp_port  # type: ignore[attr-defined]
    feed = await Feed(http, piped_daemon).skip()
    before = f"{unique('ok')}@mail.example"
    assert await asyncio.to_thread(smtplib_send, port, mail(before)) == {}

    piped_daemon.limit_file_size("1")  # every write past byte 1 fails: a full disk
    blocked = f"{unique('blocked')}@mail.example"
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(smtplib_send, port, mail(blocked))
    assert refused.value.smtp_code == 451
    await feed.settle()
    assert [m["provider"]["message_id"] for m in feed.received()] == [before]

    # The disk has room again: the sender's retry is accepted, and only once.
    piped_daemon.limit_file_size("unlimited")
    assert await asyncio.to_thread(smtplib_send, port, mail(blocked)) == {}
    await feed.settle()
    assert [m["provider"]["message_id"] for m in feed.received()] == [before, blocked]
    assert "store.commit_failed" in piped_daemon.logs()
