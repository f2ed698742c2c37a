"""sd_notify against a real daemon process: READY, WATCHDOG, RELOADING, STOPPING.

The test plays systemd: it binds the notify socket, starts ``omnirelay run`` with
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set and reads what arrives, checking with
``SO_PASSCRED`` that the daemon's own pid sent it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from gateway.systemd import Notifier
from tests.conftest import API_SECRET, base_config, free_port
from tests.helpers import all_events, post_inbound, unique
from tests.ops.conftest import Notification, NotifySocket, OpsDaemon

CRM = f"""
    [[channels]]
    type = "api"
    name = "crm"
    secret = "{API_SECRET}"
    """
WATCHDOG_USEC = 200_000  # pings every 0.1 s


def is_ping(n: Notification) -> bool:
    """A watchdog keep-alive."""
    return "WATCHDOG=1" in n


def notify_env(sock: NotifySocket, **extra: str) -> dict[str, str]:
    """What systemd puts in a Type=notify service's environment."""
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": str(WATCHDOG_USEC), **extra}


async def test_ready_watchdog_reload_and_stopping_come_from_the_main_pid(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    daemon = OpsDaemon(tmp_path, base_config(tmp_path / "data", http_port, smtp_port, extra=CRM),
                       http_port, env=notify_env(notify_socket, OMNIRELAY_TEST_HOOKS="1",
                                                 OMNIRELAY_TEST_BLOCK_SECONDS="2.0"))
    daemons.append(daemon)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid

    _, ready = await notify_socket.wait_for(lambda n: "READY=1" in n)
    assert ready.pid == pid
    assert ready.fields["MAINPID"] == str(pid)
    assert "3/3 channels running" in ready.fields["STATUS"]
    # READY=1 came only after the store opened and every adapter started: all of it
    # answers the moment READY arrives, with no waiting.
    assert sqlite3.connect(tmp_path / "data" / "omnirelay.db").execute(
        "SELECT COUNT(*) FROM schema_migrations").fetchone()[0] >= 1
    reader, writer = await asyncio.open_connection("127.0.0.1", smtp_port)
    assert (await reader.readline()).startswith(b"220 ")
    writer.close()
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.url}/readyz") as resp:
        assert resp.status == 200

    # WATCHDOG=1 every WATCHDOG_USEC/2, from the main pid.
    index, _ = await notify_socket.wait_for(is_ping)
    pings = [notify_socket.received[index]]
    while len(pings) < 4:
        index, ping = await notify_socket.wait_for(is_ping, since=index + 1, timeout=5)
        pings.append(ping)
    assert {p.pid for p in pings} == {pid}
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    assert all(0.05 < gap < 1.0 for gap in gaps), gaps

    # A blocked event loop stops the pings; they resume when it runs again.
    def gap_before(n: Notification) -> float:
        index = notify_socket.received.index(n)
        previous = max(i for i in range(index) if is_ping(notify_socket.received[i]))
        return n.at - notify_socket.received[previous].at

    mark = len(notify_socket.received)
    daemon.signal(signal.SIGUSR1)  # test hook: time.sleep(2.0) on the loop
    index, after = await notify_socket.wait_for(
        lambda n: is_ping(n) and gap_before(n) >= 1.8, since=mark, timeout=10)
    assert gap_before(after) < 4.0
    assert all(gap_before(n) < 1.0 for n in notify_socket.received[mark:index] if is_ping(n))
    index, resumed = await notify_socket.wait_for(is_ping, since=index + 1, timeout=2)
    assert resumed.at - after.at < 1.0
    await daemon.wait_log(lambda e: e["event"] == "daemon.test_loop_released")

    # SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as systemd >= 253 wants), then READY=1.
    mark = len(notify_socket.received)
    daemon.signal(signal.SIGHUP)
    index, reloading = await notify_socket.wait_for(lambda n: "RELOADING=1" in n, since=mark)
    assert reloading.pid == pid and int(reloading.fields["MONOTONIC_USEC"]) > 0
    _, ready_again = await notify_socket.wait_for(lambda n: "READY=1" in n, since=index)
    assert "3/3 channels running" in ready_again.fields["STATUS"]

    # SIGTERM: STOPPING=1 first, then a clean exit.
    mark = len(notify_socket.received)
    assert await daemon.stop() == 0, daemon.logs()
    _, stopping = await notify_socket.wait_for(lambda n: "STOPPING=1" in n, since=mark,
                                               timeout=2)
    assert stopping.pid == pid


async def test_sigterm_under_load_drains_every_acknowledged_message(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    config = base_config(tmp_path / "data", http_port, smtp_port, extra=CRM)
    daemon = OpsDaemon(tmp_path, config, http_port, env=notify_env(notify_socket))
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()

    acked: list[str] = []
    enough = asyncio.Event()

    async def poster(http: aiohttp.ClientSession) -> None:
        while True:
            external = unique("drain")
            try:
                status, _ = await post_inbound(http, daemon.url, {
                    "message_id": external, "from": {"id": unique("c")}, "text": "hello"})
            except (TimeoutError, aiohttp.ClientError):
                return  # the listener closed: this one was never acknowledged
            if status == 201:
                acked.append(external)
            else:
                assert status == 503, status  # refused while draining: not acknowledged
            if len(acked) >= 60:
                enough.set()

    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        posters = [asyncio.create_task(poster(http)) for _ in range(6)]
        await asyncio.wait_for(enough.wait(), 20)
        mark = len(notify_socket.received)
        code = await daemon.stop()
        await asyncio.wait_for(asyncio.gather(*posters), 10)
    assert code == 0, daemon.logs()
    await notify_socket.wait_for(lambda n: "STOPPING=1" in n, since=mark, timeout=2)
    assert any(e["event"] == "daemon.stopped" for e in daemon.lines())

    again = OpsDaemon(tmp_path, config, http_port)
    daemons.append(again)
    again.start()
    await again.wait_ready()
    async with aiohttp.ClientSession() as http:
        events = await all_events(http, again.url)
    stored = [e["data"]["message"]["provider"]["message_id"] for e in events
              if e["type"] == "message.received"]
    assert len(stored) == len(set(stored))
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"
    assert await again.stop() == 0


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.reloading()
    notifier.stopping()
    notifier.close()


async def test_watchdog_returns_at_once_without_watchdog_usec(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nothing.sock")})
    await asyncio.wait_for(notifier.watchdog(), 1)


def test_watchdog_is_off_when_it_is_meant_for_another_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000",
           "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(env).watchdog_interval is None
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier(env).watchdog_interval == pytest.approx(0.5)


def test_abstract_socket_address_and_a_missing_socket_never_raise(tmp_path: Path) -> None:
    name = f"omnirelay-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.status("abstract works")
        assert sock.recv(4096) == b"STATUS=abstract works"
        notifier.close()
    missing = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    missing.ready("nobody listens")  # logged, not raised: the daemon must keep running
    missing.close()
