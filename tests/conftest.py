"""Shared fixtures: free ports, a real daemon subprocess, a webhook/callback receiver."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

# Store fixtures for both backends (SQLite and a real PostgreSQL): tests/postgres/fixtures.py
pytest_plugins = ["tests.postgres.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-admin-token-0123456789"
READ_TOKEN = "test-read-token-0123456789"
WRITE_TOKEN = "test-write-token-0123456789"
API_SECRET = "crm-secret-0123456789"
WEBHOOK_SECRET = "hook-secret-0123456789"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    """One request a :class:`Receiver` got."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP endpoint standing in for a help desk's webhook or a CRM callback.

    ``fail_with`` makes it answer that status (e.g. 500) until reset; ``requests`` keeps
    every request that was answered 2xx, ``attempts`` every request at all.
    """

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    attempts: list[Received] = field(default_factory=list)
    fail_with: int | None = None
    fail_paths: dict[str, int] = field(default_factory=dict)
    headers_on_fail: dict[str, str] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request and answer as configured."""
        item = Received(request.path, dict(request.headers), await request.read())
        self.attempts.append(item)
        self.arrived.set()  # waiters re-check their condition on every request
        status = self.fail_paths.get(request.path, self.fail_with)
        if status is not None:
            return web.Response(status=status, headers=self.headers_on_fail,
                                text='{"error": "refused by the test"}')
        self.requests.append(item)
        self.arrived.set()
        return web.json_response({"ok": True})

    async def start(self) -> None:
        """Listen on a free port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening (requests to it are then refused)."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def wait_for(self, predicate: Callable[[list[Received]], bool],
                       timeout: float = 15.0) -> list[Received]:
        """Wait until ``predicate(requests)`` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.requests):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"receiver: condition not met; got {len(self.requests)}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                pass
        return self.requests


def base_config(data_dir: Path, http_port: int, smtp_port: int, *, extra: str = "",
                store_url: str | None = None) -> str:
    """A config with tokens of each scope, two API accounts and an e-mail account; its
    store is SQLite in ``data_dir``, or ``store_url`` (PostgreSQL, with ``data_dir`` as
    the instance's own directory)."""
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{http_port}"
        public_url = "http://127.0.0.1:{http_port}"
        max_body_bytes = 1048576
        shutdown_timeout = 5
        [store]
        url = "{store_url or f'sqlite:///{data_dir}/omnirelay.db'}"
        data_dir = "{data_dir}"
        default_region = "KR"
        [outbox]
        base_delay = 0.2
        max_delay = 1.0
        [logging]
        level = "info"
        format = "json"
        [[tokens]]
        name = "admin"
        token = "{TOKEN}"
        scopes = ["admin"]
        [[tokens]]
        name = "reader"
        token = "{READ_TOKEN}"
        scopes = ["read"]
        [[tokens]]
        name = "writer"
        token = "{WRITE_TOKEN}"
        scopes = ["write"]
        [[channels]]
        type = "api"
        name = "default"
        [[channels]]
        type = "email"
        name = "support"
        address = "support@shop.example"
        smtp_listen = "127.0.0.1:{smtp_port}"
        """) + textwrap.dedent(extra)


class Daemon:
    """``omnirelay run`` as a subprocess, the way ops run it."""

    def __init__(self, tmp: Path, config_text: str, http_port: int,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.config_path = tmp / "omnirelay.toml"
        self.config_path.write_text(config_text)
        self.http_port = http_port
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "daemon.log"
        self._log_handles: list[Any] = []

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_handles.append(log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            cwd=self.tmp, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 20.0, path: str = "/readyz") -> None:
        """Poll ``path`` (/readyz) until 200, or fail with the daemon's log."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
                try:
                    async with session.get(f"{self.url}{path}") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        # A fixture whose daemon never got ready never reaches its teardown: end the
        # process here (ours, by pid), or it outlives the test run.
        assert self.proc is not None
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
        raise AssertionError(f"{path} not 200 in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        """Everything the daemon wrote."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon process (only ours, by pid)."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, timeout)
        for handle in self._log_handles:
            handle.close()
        return code

    def kill(self) -> None:
        """SIGKILL: a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir for session-scoped servers."""
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    """A session-wide help-desk webhook / CRM callback receiver."""
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture(scope="session")
async def daemon(session_tmp: Path, receiver: Receiver) -> AsyncIterator[Daemon]:
    """One daemon for the API tests: an API account with a callback and a webhook."""
    http_port, smtp_port = free_port(), free_port()
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "{API_SECRET}"
        callback_url = "{receiver.url}/callback"
        [[webhooks]]
        name = "helpdesk"
        url = "{receiver.url}/webhook"
        secret = "{WEBHOOK_SECRET}"
        events = ["message.*", "conversation.*", "customer.*"]
        """
    data_dir = session_tmp / "data"
    proc = Daemon(session_tmp, base_config(data_dir, http_port, smtp_port, extra=extra),
                  http_port)
    proc.smtp_port = smtp_port  # type: ignore[attr-defined]
    proc.start()
    await proc.wait_ready()
    yield proc
    code = await proc.stop()
    assert code == 0, proc.logs()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def auth() -> dict[str, str]:
    """Admin bearer header."""
    return {"Authorization": f"Bearer {TOKEN}"}


