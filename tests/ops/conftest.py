"""Ops fixtures: a stand-in for systemd's notify socket and a daemon that can be watched."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.store import compact
from tests.conftest import API_SECRET, Daemon, base_config, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram: when it came, its ``KEY=value`` fields and the sender pid."""

    at: float
    fields: dict[str, str]
    pid: int | None

    def __contains__(self, item: str) -> bool:
        key, _, value = item.partition("=")
        return self.fields.get(key) == value


class NotifySocket:
    """An ``AF_UNIX``/``SOCK_DGRAM`` socket playing systemd's ``NOTIFY_SOCKET``.

    ``SO_PASSCRED`` makes the kernel attach the sender's credentials, so a test can check
    that the daemon's main process (not some helper) sent each message. Datagrams are read
    by a loop reader as they arrive and kept in ``received``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[Notification] = []
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except BlockingIOError:
                break
            pid = next((struct.unpack("3i", payload)[0] for level, kind, payload in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS),
                       None)
            fields = dict(line.split("=", 1) for line in data.decode().split("\n")
                          if "=" in line)
            self.received.append(Notification(time.monotonic(), fields, pid))
        self._arrived.set()

    async def wait_for(self, predicate: Callable[[Notification], bool], *, since: int = 0,
                       timeout: float = 15.0) -> tuple[int, Notification]:
        """The first notification from index ``since`` on matching ``predicate``."""
        deadline = time.monotonic() + timeout
        index = since
        while True:
            while index < len(self.received):
                if predicate(self.received[index]):
                    return index, self.received[index]
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [n.fields for n in self.received[since:]][-10:]
                raise AssertionError(f"no matching sd_notify message; last seen: {seen}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    def close(self) -> None:
        """Stop reading and remove the socket."""
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    """A fresh notify socket in the test's temp dir."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


class OpsDaemon(Daemon):
    """:class:`Daemon` whose output goes through a pipe (copied to the log file).

    A pipe keeps logging working when a test caps the process's file size to break the
    store; ``lines()`` parses the JSON log.
    """

    separate_stderr = False  # True: stderr goes to its own file (see stderr_text)

    @property
    def stderr_path(self) -> Path:
        """Where stderr goes when kept apart from stdout."""
        return self.tmp / "daemon.stderr"

    def stderr_text(self) -> str:
        """What the daemon wrote to stderr (with ``separate_stderr``)."""
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def start(self) -> None:
        """Start ``omnirelay run`` with stdout (and stderr, unless kept apart) on a pipe."""
        stderr: Any = subprocess.STDOUT
        if self.separate_stderr:
            stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - the child owns it now
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            cwd=self.tmp, env=self.env, stdout=subprocess.PIPE, stderr=stderr)
        if self.separate_stderr:
            stderr.close()
        pipe = self.proc.stdout
        assert pipe is not None

        def copy() -> None:
            with open(self.log_path, "ab") as log:
                for line in pipe:
                    log.write(line)
                    log.flush()

        self._copier = threading.Thread(target=copy, name="daemon-log", daemon=True)
        self._copier.start()

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, and wait for the log copy to reach the end."""
        code = await super().stop(timeout)
        await self.wait_log_closed()
        return code

    async def wait_log_closed(self) -> None:
        """Let the copying thread drain the pipe after the process ended."""
        await asyncio.to_thread(self._copier.join, 5)

    def lines(self) -> list[dict[str, Any]]:
        """Every complete log line, parsed (each must be one JSON object)."""
        text = self.logs()
        text = text[:text.rfind("\n") + 1]  # a line still being copied is not read yet
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]

    async def wait_log(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 15.0) -> dict[str, Any]:
        """Poll the log (another process writes it) until a line matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if predicate(line):
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching log line:\n{self.logs()[-3000:]}")

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait for /healthz (the daemon serves even when /readyz says 503)."""
        await self.wait_ready(timeout, path="/healthz")


@pytest.fixture
def daemons() -> Iterator[list[OpsDaemon]]:
    """Daemons a test started; any still running at the end are killed (by pid)."""
    started: list[OpsDaemon] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


def omnirelay(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``omnirelay`` CLI as ops would (``python -m gateway``)."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=60,
                          check=False)


async def omnirelay_async(*args: str, env: dict[str, str] | None = None
                          ) -> subprocess.CompletedProcess[str]:
    """:func:`omnirelay` without blocking the test's loop (daemons answer meanwhile)."""
    return await asyncio.to_thread(omnirelay, *args, env=env)


def table_text(db: Path) -> str:
    """Every text and blob value of every table, for grepping personal data (compressed
    values too: gateway/store/compact.py)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        chunks = []
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):  # compact values decompressed
                        chunks.append(compact.unpack_bytes(value).decode("utf-8", "replace"))
                    elif isinstance(value, str):
                        chunks.append(value)
        return "\n".join(chunks)
    finally:
        conn.close()


def crm_config(tmp: Path, *, retention_days: int | None = None, callback: str | None = None,
               data: Path | None = None) -> tuple[str, int]:
    """base_config plus the signed ``api:crm`` account; returns (config, http port)."""
    http_port, smtp_port = free_port(), free_port()
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "{API_SECRET}"
        """
    if callback:
        extra += f'callback_url = "{callback}"\n'
    config = base_config(data or tmp / "data", http_port, smtp_port, extra=extra)
    if retention_days:
        config = config.replace('default_region = "KR"',
                                f'default_region = "KR"\nretention_days = {retention_days}')
    return config, http_port
