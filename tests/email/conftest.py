"""Fixtures of the e-mail tests: a session-wide Dovecot and SMTP sink, daemons, the feed."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon, base_config
from tests.email.oauth2_server import OAuth2Server
from tests.email.servers import Dovecot, SmtpSink, Xoauth2Sink, ports
from tests.helpers import get_json

MakeDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture(scope="session")
async def oauth2_server() -> AsyncIterator[OAuth2Server]:
    """The OAuth2 authorization server (token endpoint, Dovecot's introspection)."""
    server = OAuth2Server()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def oauth(oauth2_server: OAuth2Server) -> OAuth2Server:
    """The session's authorization server, knobs back to their defaults."""
    server = oauth2_server
    server.expires_in, server.rotate, server.revoke_used = 3600, False, False
    server.clock_skew = 0.0
    server.failures.clear()
    server.requests.clear()
    server.introspections.clear()
    server.assertions.clear()
    return server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The daemon's kind of HTTP client session (for an AccessTokens)."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture(scope="session")
def dovecot(oauth2_server: OAuth2Server) -> Iterator[Dovecot]:
    """One real Dovecot for the whole session (stopping one takes about a second).

    Its directory is not under pytest's tmp: that one is private to root (0700), and
    Dovecot's auth process runs as its own user and must reach the passwd file. XOAUTH2
    tokens are checked with ``oauth2_server`` (a password login never asks it).
    """
    root = Path(tempfile.mkdtemp(prefix="omnirelay-dovecot-"))
    server = Dovecot(root, oauth2_server.introspection_url)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    """The shop's SMTP relay, as far as omnirelay can tell."""
    sink = SmtpSink()
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture(scope="session")
async def xoauth2_sink(oauth2_server: OAuth2Server) -> AsyncIterator[Xoauth2Sink]:
    """A relay that takes mail only after AUTH XOAUTH2 with a token of ``oauth2_server``."""
    sink = Xoauth2Sink(oauth=oauth2_server)
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
async def make_daemon(tmp_path: Path) -> AsyncIterator[MakeDaemon]:
    """Start ``omnirelay run`` with the base config plus ``extra`` TOML; stopped after."""
    started: list[Daemon] = []

    async def make(extra: str = "", *, data_dir: Path | None = None,
                   http_port: int | None = None, smtp_port: int | None = None) -> Daemon:
        picked = ports(2)
        http_port = http_port or picked[0]
        smtp_port = smtp_port or picked[1]
        home = tmp_path / f"daemon{len(started)}"
        home.mkdir()
        config = base_config(data_dir or tmp_path / "data", http_port, smtp_port, extra=extra)
        daemon = Daemon(home, config, http_port)
        daemon.smtp_port = smtp_port  # type: ignore[attr-defined]
        daemon.start()
        started.append(daemon)
        await daemon.wait_ready()
        return daemon

    yield make
    for daemon in started:
        code = await daemon.stop()
        assert code in (0, -9), daemon.logs()


class Feed:
    """The daemon's event feed, read the way a help desk does (long-polling, no sleeps)."""

    def __init__(self, http: aiohttp.ClientSession, daemon: Daemon | str) -> None:
        self.http = http
        self.daemon = daemon if isinstance(daemon, Daemon) else None
        self.base = daemon.url if isinstance(daemon, Daemon) else daemon
        self.cursor = "0"
        self.events: list[dict[str, Any]] = []

    async def poll(self, wait: float = 0) -> list[dict[str, Any]]:
        """Fetch what is new (waiting up to ``wait`` seconds for something)."""
        status, page = await get_json(self.http, f"{self.base}/v1/events", after=self.cursor,
                                      limit=1000, wait=int(wait))
        assert status == 200, page
        self.events += page["events"]
        self.cursor = page["next"]
        return page["events"]

    def received(self, account: str | None = None) -> list[dict[str, Any]]:
        """Messages of every ``message.received`` event so far."""
        return [e["data"]["message"] for e in self.events if e["type"] == "message.received"
                and (account is None or e["data"]["message"]["account"] == account)]

    async def wait_for(self, predicate: Callable[[Feed], Any], timeout: float = 20.0) -> Any:
        """Long-poll until ``predicate(self)`` is truthy."""
        deadline = time.monotonic() + timeout
        while not (result := predicate(self)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logs = self.daemon.logs()[-4000:] if self.daemon else ""
                raise AssertionError(f"feed condition not met; {len(self.events)} events; "
                                     f"daemon log:\n{logs}")
            await self.poll(wait=min(5, max(1, remaining)))
        return result

    async def settle(self) -> None:
        """Read everything committed so far."""
        while await self.poll():
            pass

    async def skip(self) -> Feed:
        """Start from now: what came before is not this test's."""
        await self.settle()
        self.events.clear()
        return self

