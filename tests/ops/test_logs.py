"""Logs as journald gets them: JSON lines on stdout, ids bound, no secrets, no bodies."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import textwrap
from email.message import EmailMessage
from pathlib import Path

import aiohttp

from tests.conftest import Receiver, free_port
from tests.helpers import bearer, post_inbound, post_json, unique
from tests.ops.conftest import OpsDaemon

LEVELS = {"debug", "info", "warning", "error", "critical"}


def secret_config(tmp: Path, http_port: int, smtp_port: int, hook_url: str,
                  level: str = "info") -> tuple[str, dict[str, str], dict[str, str]]:
    """A config whose every secret comes from a file or the environment.

    Returns the config, the environment it needs, and every secret value by name.
    """
    secrets = {name: f"{name}-value-{unique('s')}" for name in (
        "admin-token", "writer-token", "crm-secret", "partner-secret", "hook-secret",
        "smtp-password")}
    files = tmp / "secrets"
    files.mkdir(exist_ok=True)
    for name in ("admin-token", "crm-secret", "hook-secret", "smtp-password"):
        (files / name).write_text(secrets[name] + "\n")
    env = {"OMNIRELAY_WRITER_TOKEN": secrets["writer-token"],
           "OMNIRELAY_PARTNER_SECRET": secrets["partner-secret"]}
    closed_port = free_port()  # replies by e-mail fail here, and are retried (and logged)
    config = textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{http_port}"
        shutdown_timeout = 5
        [store]
        url = "sqlite:///{tmp}/data/omnirelay.db"
        data_dir = "{tmp}/data"
        [outbox]
        base_delay = 0.1
        max_delay = 0.5
        [logging]
        level = "{level}"
        format = "json"
        [[tokens]]
        name = "admin"
        token_file = "{files}/admin-token"
        scopes = ["admin"]
        [[tokens]]
        name = "writer"
        token_env = "OMNIRELAY_WRITER_TOKEN"
        scopes = ["write"]
        [[webhooks]]
        name = "helpdesk"
        url = "{hook_url}/webhook"
        secret_file = "{files}/hook-secret"
        [[channels]]
        type = "api"
        name = "crm"
        secret_file = "{files}/crm-secret"
        callback_url = "{hook_url}/callback"
        [[channels]]
        type = "api"
        name = "partner"
        secret_env = "OMNIRELAY_PARTNER_SECRET"
        [[channels]]
        type = "email"
        name = "support"
        address = "support@shop.example"
        smtp_listen = "127.0.0.1:{smtp_port}"
        smtp = {{ host = "127.0.0.1", port = {closed_port}, security = "none", username = "support", password_file = "{files}/smtp-password", timeout = 2 }}
        """)  # noqa: E501
    return config, env, secrets


def send_mail(port: int, body: str) -> None:
    """Deliver one e-mail to the daemon's SMTP listener."""
    msg = EmailMessage()
    msg["From"] = "Kim <kim@example.com>"
    msg["To"] = "support@shop.example"
    msg["Subject"] = "Order question"
    msg["Message-ID"] = f"<{unique('mail')}@example.com>"
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


async def test_logs_are_json_lines_with_ids_and_without_secrets_or_bodies(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    receiver = Receiver()
    await receiver.start()
    http_port, smtp_port = free_port(), free_port()
    config, env, secrets = secret_config(tmp_path, http_port, smtp_port, receiver.url)
    daemon = OpsDaemon(tmp_path, config, http_port, env=env)
    daemons.append(daemon)
    daemon.start()
    texts = [f"my card number is {unique('body')}" for _ in range(5)]
    try:
        await daemon.wait_ready()
        admin = secrets["admin-token"]
        async with aiohttp.ClientSession() as http:
            status, crm = await post_inbound(http, daemon.url, {
                "message_id": unique("m"), "from": {"id": unique("c"), "name": "Kim Minsu"},
                "text": texts[0]}, secret=secrets["crm-secret"])
            assert status == 201
            status, _ = await post_inbound(http, daemon.url, {
                "message_id": unique("m"), "from": {"id": unique("c")}, "text": texts[1]},
                account="partner", secret=secrets["partner-secret"])
            assert status == 201
            await asyncio.to_thread(send_mail, smtp_port, texts[2])
            # Replies: one to the CRM callback (signed), one by e-mail (its server is down).
            conversation = crm["message"]["conversation_id"]
            status, _ = await post_json(
                http, f"{daemon.url}/v1/conversations/{conversation}/messages",
                {"text": texts[3]}, token=admin)
            assert status == 202
            await receiver.wait_for(lambda reqs: any(r.path == "/callback" for r in reqs))
            await receiver.wait_for(lambda reqs: any(r.path == "/webhook" for r in reqs))
            async with http.get(f"{daemon.url}/v1/conversations",
                                headers=bearer(admin)) as resp:
                conversations = (await resp.json())["conversations"]
            mail = next(c for c in conversations if c["channel"] == "email")
            status, _ = await post_json(
                http, f"{daemon.url}/v1/conversations/{mail['id']}/messages",
                {"text": texts[4]}, token=secrets["writer-token"])
            assert status == 202
            await daemon.wait_log(lambda e: e["event"] == "outbox.retry_scheduled"
                                  and e.get("channel") == "email")
            # A wrong token is not ours, but it may be someone's: not logged either.
            wrong = f"wrong-token-{unique('w')}"
            async with http.get(f"{daemon.url}/v1/events", headers=bearer(wrong)) as resp:
                assert resp.status == 401

        # Rotate a secret and reload: neither the old nor the new value is logged.
        secrets["crm-secret-new"] = f"rotated-{unique('s')}"
        (tmp_path / "secrets" / "crm-secret").write_text(secrets["crm-secret-new"])
        daemon.signal(signal.SIGHUP)
        await daemon.wait_log(lambda e: e["event"] == "daemon.reloaded")
    finally:
        assert await daemon.stop() == 0, daemon.logs()
        await receiver.stop()

    output = daemon.logs()
    for name, value in secrets.items():
        assert value not in output, f"the {name} secret is in the log"
    assert wrong not in output
    for text in texts:
        assert text not in output, "a message body is in the log"

    lines = output.splitlines()
    records = daemon.lines()  # raises if any line is not JSON
    assert len(records) == len(lines)
    assert records[-1]["event"] == "daemon.stopped"  # queued lines are written out at exit
    for record in records:
        assert isinstance(record, dict) and isinstance(record["event"], str)
        assert record["level"] in LEVELS and record["timestamp"]
    assert not [r for r in records if r["level"] == "error"], "an error was logged"
    stored = [r for r in records if r["event"] == "ingest.stored"]
    first = crm["message"]
    assert {"message_id": first["id"], "conversation_id": first["conversation_id"]}.items() \
        <= next(r for r in stored if r["message_id"] == first["id"]).items()
    assert all(r.get("conversation_id") for r in stored)
    assert len(stored) == 3


async def test_log_level_warning_drops_info_and_only_stdout_is_used(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    config, env, secrets = secret_config(tmp_path, http_port, smtp_port,
                                         "http://127.0.0.1:9", level="warning")
    daemon = OpsDaemon(tmp_path, config, http_port, env=env)
    daemon.separate_stderr = True
    daemons.append(daemon)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            status, _ = await post_inbound(http, daemon.url, {
                "message_id": unique("m"), "from": {"id": "c"}, "text": "hello"},
                secret=secrets["crm-secret"])
            assert status == 201
            status, _ = await post_inbound(http, daemon.url, {
                "message_id": unique("m"), "from": {"id": "c"}, "text": "hello"},
                secret="not-the-secret")
            assert status == 401
        await daemon.wait_log(lambda e: e["event"] == "hook.rejected")
    finally:
        assert await daemon.stop() == 0
    levels = {r["level"] for r in daemon.lines()}
    assert levels <= {"warning", "error"}, levels
    assert daemon.stderr_text() == ""


async def send_raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as raw bytes on a new connection; the answer's first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), 10)
    finally:
        writer.close()


async def test_a_malformed_header_line_is_logged_without_its_bearer_token(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    config, env, secrets = secret_config(tmp_path, http_port, smtp_port, "http://127.0.0.1:9")
    daemon = OpsDaemon(tmp_path, config, http_port, env=env)
    daemons.append(daemon)
    daemon.start()
    tokens = [secrets["admin-token"], f"not-ours-{unique('t')}"]
    # aiohttp's parser refuses each and logs the offending line as it came in.
    shapes = [b"Authorization: Bearer %s\x01", b"Authorization Bearer %s",
              b" Authorization: Bearer %s", b"X-Trace\x01 Bearer %s"]
    try:
        await daemon.wait_ready()
        for token in tokens:
            for shape in shapes:
                line = shape % token.encode()
                answer = await send_raw(http_port, b"GET /v1/events HTTP/1.1\r\n"
                                        b"Host: 127.0.0.1\r\n" + line + b"\r\n\r\n")
                assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
        expected = len(tokens) * len(shapes)
        await daemon.wait_log(lambda _e: len([r for r in daemon.lines()
                                              if r.get("logger") == "aiohttp.server"])
                              >= expected)
    finally:
        assert await daemon.stop() == 0
    output = daemon.logs()
    parser_errors = [r for r in daemon.lines() if r.get("logger") == "aiohttp.server"]
    assert all("Bearer ********" in r["exception"] for r in parser_errors), parser_errors
    for token in tokens:
        assert token not in output
