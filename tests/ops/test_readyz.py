"""``/readyz`` says 503 with reasons when the store cannot write or a required account is down."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import base_config, free_port
from tests.helpers import get_json, post_inbound, unique
from tests.ops.conftest import NotifySocket, OpsDaemon, crm_config


@pytest.fixture
def taken_ports() -> Iterator[list[socket.socket]]:
    """Listening sockets holding ports, so an adapter cannot bind them."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def hold_port(sockets: list[socket.socket]) -> int:
    """Occupy a port on 127.0.0.1 the way another mail server would."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sockets.append(sock)
    return int(sock.getsockname()[1])


async def readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
    """GET /readyz (no token: load balancers call it)."""
    async with http.get(f"{base}/readyz") as resp:
        return resp.status, await resp.json()


async def channel_metrics(http: aiohttp.ClientSession, base: str
                          ) -> dict[tuple[str, tuple[str, ...]], float]:
    """The ``omnirelay_channel_*`` samples of /metrics (no token: Prometheus scrapes it),
    by name and label values (type, account, then state or loop)."""
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("omnirelay_channel_"):
                labels = sample.labels
                found[(sample.name, (labels["type"], labels["account"],
                                     labels.get("state") or labels["loop"]))] = sample.value
    return found


def states(metrics: dict[tuple[str, tuple[str, ...]], float], account: str) -> list[str]:
    """The states whose series is 1 for an account (exactly one, when all is well)."""
    return [labels[2] for (name, labels), value in metrics.items()
            if name == "omnirelay_channel_state" and labels[1] == account and value == 1]


async def wait_readyz(http: aiohttp.ClientSession, base: str, status: int,
                      timeout: float = 15.0) -> Any:
    """Poll /readyz until it answers ``status`` (the daemon changes state on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await readyz(http, base)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {code}: {body}")
        await asyncio.sleep(0.1)


async def test_a_required_account_that_cannot_start_fails_readyz_until_it_recovers(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon],
        taken_ports: list[socket.socket]) -> None:
    http_port = free_port()
    support_port, optional_port = hold_port(taken_ports), hold_port(taken_ports)
    extra = f"""
        [[channels]]
        type = "email"
        name = "backup-mx"
        address = "backup@shop.example"
        smtp_listen = "127.0.0.1:{optional_port}"
        required = false
        """
    daemon = OpsDaemon(tmp_path, base_config(tmp_path / "data", http_port, support_port,
                                             extra=extra),
                       http_port, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(daemon)
    daemon.start()
    # The daemon still comes up (other accounts work) and says what is down.
    _, ready = await notify_socket.wait_for(lambda n: "READY=1" in n)
    assert "1/3 channels running" in ready.fields["STATUS"]
    assert "email:support down" in ready.fields["STATUS"]
    await daemon.wait_healthy()
    async with aiohttp.ClientSession() as http:
        status, body = await readyz(http, daemon.url)
        assert status == 503
        assert body["status"] == "unavailable"
        # The optional account does not count; which account, never its error text
        # (unauthenticated): that is on /v1/channels, behind a token.
        assert body["problems"] == ["channel email:support: failed"]
        status, report = await get_json(http, f"{daemon.url}/v1/channels")
        by_name = {c["name"]: c for c in report["channels"]}
        assert by_name["support"]["state"] == "failed" and by_name["support"]["required"]
        assert "address already in use" in by_name["support"]["last_error"]
        assert by_name["backup-mx"]["state"] == "failed"
        assert not by_name["backup-mx"]["required"]
        assert by_name["default"]["state"] == "running"
        # Prometheus sees the same, without a token: one state series at 1 per account.
        metrics = await channel_metrics(http, daemon.url)
        assert states(metrics, "support") == ["failed"]
        assert states(metrics, "backup-mx") == ["failed"]
        assert states(metrics, "default") == ["running"]
        assert metrics[("omnirelay_channel_state", ("email", "support", "running"))] == 0

        # The other mail server goes away: the adapter is retried and readiness returns.
        taken_ports[0].close()
        await wait_readyz(http, daemon.url, 200)
        status, report = await get_json(http, f"{daemon.url}/v1/channels")
        by_name = {c["name"]: c for c in report["channels"]}
        assert by_name["support"]["state"] == "running"
        assert by_name["support"]["last_error"] is None
        assert by_name["backup-mx"]["state"] == "failed"
        assert states(await channel_metrics(http, daemon.url), "support") == ["running"]
    assert await daemon.stop() == 0
    assert any(e["event"] == "adapter.recovered" for e in daemon.lines())


async def test_a_store_that_cannot_write_fails_readyz_and_recovers_by_itself(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    """A full disk, for real: the daemon's file-size limit drops to one byte, so SQLite's
    next WAL append fails the way it does on ENOSPC; the limit is put back after."""
    config, http_port = crm_config(tmp_path)
    daemon = OpsDaemon(tmp_path, config, http_port)
    daemons.append(daemon)
    daemon.start()  # output on a pipe: the log keeps working under the limit
    await daemon.wait_ready()
    assert daemon.proc is not None
    pid = daemon.proc.pid

    def post(http: aiohttp.ClientSession) -> Any:
        return post_inbound(http, daemon.url, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "hello"})

    async with aiohttp.ClientSession() as http:
        assert (await post(http))[0] == 201
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
        try:
            status, body = await post(http)
            assert status == 503
            assert body["error"]["code"] == "store_unavailable"
            status, body = await readyz(http, daemon.url)
            assert status == 503
            assert body["problems"] == ["store: cannot write"]
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        # No message needed: /readyz probes the store itself once it has failed.
        status, body = await readyz(http, daemon.url)
        assert (status, body) == (200, {"status": "ready"})
        assert (await post(http))[0] == 201
    assert await daemon.stop() == 0
    assert any(e["event"] == "store.commit_failed" for e in daemon.lines())


async def test_a_mailbox_that_cannot_connect_shows_in_the_loop_metrics(
        tmp_path: Path, daemons: list[OpsDaemon], taken_ports: list[socket.socket]) -> None:
    """IMAP mailboxes whose server refuses connections: the account runs (its SMTP
    listener works), its supervised loops are down and restarting, with no success yet; an
    alert on /metrics needs no API token and sees no error text, no mailbox user and no
    host, while each mailbox keeps a series of its own: two on INBOX (different users), one
    on another folder. ``/v1/channels`` (token) names each mailbox in full."""
    closed = socket.socket()  # a port nobody listens on: bound, never listening
    closed.bind(("127.0.0.1", 0))
    taken_ports.append(closed)
    port = closed.getsockname()[1]
    http_port = free_port()  # after: bind(0) could hand out the port free_port just let go
    server = f'host = "localhost", port = {port}, security = "none", password = "secret-pw"'
    extra = f"""
        [[channels]]
        type = "email"
        name = "inbox"
        address = "inbox@shop.example"
        imap = [
            {{ {server}, username = "ji-woo.park" }},
            {{ {server}, username = "ji-woo.park", folder = "Support" }},
            {{ {server}, username = "sam.lee" }},
        ]
        """
    daemon = OpsDaemon(tmp_path, base_config(tmp_path / "data", http_port, free_port(),
                                             extra=extra), http_port)
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 20
        while True:
            metrics = await channel_metrics(http, daemon.url)
            loops = {labels[2]: value for (name, labels), value in metrics.items()
                     if name == "omnirelay_channel_loop_restarts_total"
                     and labels[:2] == ("email", "inbox")}
            if len(loops) == 3 and min(loops.values()) >= 1:
                break
            assert time.monotonic() < deadline, metrics
            await asyncio.sleep(0.1)
        # The account, the mailbox's place in its imap list, the folder.
        assert sorted(loops) == ["imap:inbox:0:INBOX", "imap:inbox:1:Support",
                                 "imap:inbox:2:INBOX"]
        for loop in loops:
            assert metrics[("omnirelay_channel_loop_up", ("email", "inbox", loop))] == 0
            assert ("omnirelay_channel_loop_last_success_timestamp_seconds",
                    ("email", "inbox", loop)) not in metrics
        async with http.get(f"{daemon.url}/metrics") as resp:
            exposition = await resp.text()
        for private in ("secret-pw", "ji-woo.park", "sam.lee", "localhost", f":{port}"):
            assert private not in exposition, private
        _, report = await get_json(http, f"{daemon.url}/v1/channels")
        [inbox] = [c for c in report["channels"] if c["name"] == "inbox"]
        assert states(metrics, "inbox") == [inbox["state"]]
        assert [(entry["label"], entry["name"]) for entry in inbox["loops"]] == [
            ("imap:inbox:0:INBOX", f"imap:inbox:ji-woo.park@localhost:{port}/INBOX"),
            ("imap:inbox:1:Support", f"imap:inbox:ji-woo.park@localhost:{port}/Support"),
            ("imap:inbox:2:INBOX", f"imap:inbox:sam.lee@localhost:{port}/INBOX")]
    assert await daemon.stop() == 0
