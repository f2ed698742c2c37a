"""SIGHUP: a good config restarts only what changed; a bad one is refused and changes nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from gateway import signing
from tests.conftest import READ_TOKEN, WRITE_TOKEN, base_config, free_port
from tests.helpers import all_events, bearer, get_json, post_inbound, unique
from tests.ops.conftest import NotifySocket, OpsDaemon

SECRET_A = "crm-secret-before-0123456789"
SECRET_B = "crm-secret-after-0123456789"
PARTNER = "partner-secret-0123456789"


def channels(crm_secret: str, *, partner: bool) -> str:
    """The crm account (secret varies) and, optionally, a new partner account."""
    text = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "{crm_secret}"
        """
    if partner:
        text += f"""
        [[channels]]
        type = "api"
        name = "partner"
        secret = "{PARTNER}"
        """
    return text


def without_reader_token(config: str) -> str:
    """Drop the read-only token: tokens take effect on reload too."""
    block = f'[[tokens]]\nname = "reader"\ntoken = "{READ_TOKEN}"\nscopes = ["read"]\n'
    assert block in config
    return config.replace(block, "")


async def post_default(http: aiohttp.ClientSession, base: str, text: str = "hi"
                       ) -> tuple[int, Any, str]:
    """An inbound message on the unchanged ``api:default`` account (bearer-authenticated)."""
    external = unique("keep")
    status, body = await post_inbound(http, base, {
        "message_id": external, "from": {"id": unique("c")}, "text": text},
        account="default", secret=None, headers=bearer(WRITE_TOKEN))
    return status, body, external


async def channel_report(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    """``/v1/channels`` keyed by ``type:name``."""
    status, body = await get_json(http, f"{base}/v1/channels")
    assert status == 200, body
    return {f"{c['type']}:{c['name']}": c for c in body["channels"]}


async def reload(daemon: OpsDaemon, sock: NotifySocket, config: str) -> dict[str, str]:
    """Write ``config``, send SIGHUP, return the READY=1 that ends the reload."""
    daemon.config_path.write_text(config)
    mark = len(sock.received)
    daemon.signal(signal.SIGHUP)
    index, _ = await sock.wait_for(lambda n: "RELOADING=1" in n, since=mark)
    _, ready = await sock.wait_for(lambda n: "READY=1" in n, since=index + 1)
    return ready.fields


async def test_sighup_restarts_changed_accounts_and_keeps_the_rest_serving(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    data = tmp_path / "data"
    before = base_config(data, http_port, smtp_port, extra=channels(SECRET_A, partner=False))
    daemon = OpsDaemon(tmp_path, before, http_port,
                       env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    async with aiohttp.ClientSession() as http:
        base = daemon.url
        status, _ = await post_inbound(http, base, {
            "message_id": unique("m"), "from": {"id": unique("c")}, "text": "before"},
            secret=SECRET_A)
        assert status == 201

        # Keep posting to the unchanged account while the reload happens.
        results: list[tuple[int, str]] = []
        stop = asyncio.Event()

        async def poster() -> None:
            while not stop.is_set():
                status, _, external = await post_default(http, base)
                results.append((status, external))

        posters = [asyncio.create_task(poster()) for _ in range(3)]
        while len(results) < 30:
            await asyncio.sleep(0.01)
        after = without_reader_token(
            base_config(data, http_port, smtp_port, extra=channels(SECRET_B, partner=True)))
        ready = await reload(daemon, notify_socket, after)
        settled = len(results)
        while len(results) < settled + 30:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*posters)

        assert {status for status, _ in results} == {201}, "a post failed during the reload"
        events = await all_events(http, base)
        stored = {e["data"]["message"]["provider"]["message_id"] for e in events
                  if e["type"] == "message.received"}
        assert {external for _, external in results} <= stored
        assert "4/4 channels running" in ready["STATUS"]

        report = await channel_report(http, base)
        # The unchanged account kept its adapter (its counter saw every message); the
        # changed one was restarted (counter from zero); the new one runs.
        assert report["api:default"]["counters"]["received"] == len(results)
        assert report["api:crm"]["counters"]["received"] == 0
        assert {report[k]["state"] for k in report} == {"running"}
        assert set(report) == {"api:default", "api:crm", "api:partner", "email:support"}

        old_secret, _ = await post_inbound(http, base, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "x"}, secret=SECRET_A)
        new_secret, _ = await post_inbound(http, base, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "x"}, secret=SECRET_B)
        partner, _ = await post_inbound(http, base, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "x"}, account="partner",
            secret=PARTNER)
        assert (old_secret, new_secret, partner) == (401, 201, 201)
        status, _ = await get_json(http, f"{base}/v1/channels", token=READ_TOKEN)
        assert status == 401

    assert await daemon.stop() == 0
    lines = daemon.lines()
    restarted = [(e["channel_type"], e["account"]) for e in lines
                 if e["event"] == "adapter.stopped_for_reload"]
    assert restarted == [("api", "crm")]
    assert any(e["event"] == "daemon.reloaded" for e in lines)


async def test_sighup_with_a_broken_config_is_refused_and_the_old_one_keeps_serving(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    data = tmp_path / "data"
    good = base_config(data, http_port, smtp_port, extra=channels(SECRET_A, partner=False))
    daemon = OpsDaemon(tmp_path, good, http_port,
                       env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()

    broken = good.replace('listen = "127.0.0.1', 'listn = "127.0.0.1', 1) + (
        '[[channels]]\ntype = "carrier-pigeon"\nname = "loft"\n')
    ready = await reload(daemon, notify_socket, broken)
    assert "last reload refused (2 errors)" in ready["STATUS"]
    # The log reaches its file through a pipe: wait for the summary, the last line written.
    await daemon.wait_log(lambda e: e["event"] == "daemon.reload_refused" and "errors" in e)
    refused = [e for e in daemon.lines() if e["event"] == "daemon.reload_refused"]
    by_key = {e.get("key"): e for e in refused}
    assert by_key["server.listn"]["line"] == 3
    assert by_key["server.listn"]["hint"] == "did you mean 'listen'?"
    assert by_key["channels[3].type"]["error"] == "unknown channel type 'carrier-pigeon'"
    summary = by_key[None]
    assert summary["level"] == "error" and summary["errors"] == 2
    assert "running configuration stays" in summary["hint"]

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.url}/readyz") as resp:
            assert resp.status == 200
        status, _ = await post_inbound(http, daemon.url, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "still here"},
            secret=SECRET_A)
        assert status == 201
        assert set(await channel_report(http, daemon.url)) == {
            "api:default", "api:crm", "email:support"}

        # Fixed and reloaded: the refusal note goes away, and [logging] level applies.
        fixed = good.replace('level = "info"', 'level = "warning"')
        ready = await reload(daemon, notify_socket, fixed)
        assert "refused" not in ready["STATUS"]
        status, body, _ = await post_default(http, daemon.url)
        assert status == 201
        bad, _ = await post_inbound(http, daemon.url, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "x"}, secret="wrong")
        assert bad == 401
    rejected = await daemon.wait_log(lambda e: e["event"] == "hook.rejected")
    assert rejected["level"] == "warning"
    message_id = body["message"]["id"]
    assert not [e for e in daemon.lines() if e.get("message_id") == message_id]
    assert await daemon.stop() == 0


async def signed(http: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any],
                 secret: str) -> tuple[int, Any]:
    """A signed hook request; ``url`` is sent as it is (already percent-encoded)."""
    raw = orjson.dumps(body)
    headers = {"Content-Type": "application/json",
               "Omnirelay-Signature": signing.sign(secret, raw)}
    async with http.request(method, URL(url, encoded=True), data=raw,
                            headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_an_account_added_by_sighup_serves_its_paths_with_parameters(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon]) -> None:
    """``/messages/{message_id}`` and ``/users/{user_id}`` of an account a reload added (no
    exact route of its own) work as on an account configured at start (they were 404)."""
    http_port, smtp_port = free_port(), free_port()
    data = tmp_path / "data"
    before = base_config(data, http_port, smtp_port, extra=channels(SECRET_A, partner=False))
    daemon = OpsDaemon(tmp_path, before, http_port,
                       env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    after = base_config(data, http_port, smtp_port, extra=channels(SECRET_A, partner=True))
    ready = await reload(daemon, notify_socket, after)
    assert "4/4 channels running" in ready["STATUS"]
    async with aiohttp.ClientSession() as http:
        base = daemon.url
        for account, secret in (("crm", SECRET_A), ("partner", PARTNER)):
            message_id, user = f"{unique('m')}/ü 1", unique("u")  # encoded in the path
            status, _ = await post_inbound(http, base, {
                "message_id": message_id, "from": {"id": user, "name": "Kim"},
                "text": "typo"}, account=account, secret=secret)
            assert status == 201
            status, body = await signed(
                http, "PATCH", f"{base}/hooks/api/{account}/messages/{quote(message_id, '')}",
                {"text": "fixed"}, secret)
            assert (status, body["changed"]) == (200, ["text", "edited_at"]), (account, body)
            assert body["message"]["provider"]["message_id"] == message_id
            status, body = await signed(
                http, "DELETE", f"{base}/hooks/api/{account}/users/{quote(user, '')}", {},
                secret)
            assert status == 200, (account, body)
            assert body["customer"]["identities"] == [] and body["customer"]["name"] is None
            # Still nothing matched for a path no route declares.
            status, _ = await signed(
                http, "PATCH", f"{base}/hooks/api/{account}/messages/a/b", {"text": "x"},
                secret)
            assert status == 404
        events = await all_events(http, base)
        assert sum(e["type"] == "message.updated" for e in events) == 2
    assert await daemon.stop() == 0
