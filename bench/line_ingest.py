"""LINE webhook ingest benchmark: events stored per second vs the API channel, same run.

Usage (from the repository root)::

    .venv/bin/python bench/line_ingest.py [--duration 10] [--concurrency 16] [--users 500]

One daemon (``omnirelay run`` with a config: SQLite synchronous FULL, logging at warning)
serves an API account and a LINE account whose Messaging API is a small fake in this
process (it answers profile look-ups; names are cached by the daemon after the first).
A Python load generator (aiohttp, ``--concurrency`` keep-alive connections) drives, one
after the other and for ``--duration`` seconds each:

* ``api``: ``POST /hooks/api/default/messages``, one message a request (bearer token);
* ``line``: ``POST /hooks/line/shop``, each a webhook body of 5 text events from one user
  of a pool of ``--users``, signed with ``X-Line-Signature`` the real way.

It reports requests/s and messages (events) stored per second for each, and the LINE/API
ratio of messages per second. Afterwards the daemon is stopped and the SQLite file is read:
every acknowledged message must be there (durability), and nothing twice.

On a 2-core machine the load generator (this process) shares the machine with the daemon;
the ratio between the two runs of the same session is what counts, not the absolute
figures. Every loop is bounded by a deadline, and the daemon is ended by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789"
SECRET = "bench-line-channel-secret-0123456789"
ACCESS = "bench-line-access-token"
EVENTS_PER_BODY = 5
TEXT = ("ご注文の商品はいつ届きますか\uff1f 주문한 상품 언제 도착하나요? "
        "Where is my order #{n}? 🙏 サイズ交換も希望します。")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fake_line(port: int) -> web.AppRunner:
    """Profiles for every user: the daemon looks each up once and caches the name."""
    async def profile(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        return web.json_response({"displayName": f"顧客 {user[-4:]}", "userId": user})

    app = web.Application()
    app.router.add_get("/v2/bot/profile/{user}", profile)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def line_body(user: str, counter: itertools.count[int]) -> bytes:
    now = int(time.time() * 1000)
    events = []
    for _ in range(EVENTS_PER_BODY):
        n = next(counter)
        events.append({"type": "message", "mode": "active", "timestamp": now,
                       "source": {"type": "user", "userId": user},
                       "webhookEventId": f"01BENCH{n:012d}", "replyToken": f"rt{n}",
                       "deliveryContext": {"isRedelivery": False},
                       "message": {"type": "text", "id": f"9{n:014d}", "quoteToken": "q",
                                   "text": TEXT.format(n=n)}})
    return orjson.dumps({"destination": "Ubench", "events": events})


async def drive(kind: str, base: str, duration: float, concurrency: int,
                users: int) -> dict[str, Any]:
    counter = itertools.count(1 if kind == "api" else 10**8)
    acked = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + duration

    async def worker(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal acked, errors
        rotation = itertools.count(index)
        while time.monotonic() < deadline:
            user = f"U{next(rotation) % users:032d}"
            if kind == "api":
                n = next(counter)
                body = orjson.dumps({"message_id": f"bench-{n}", "from": {"id": user},
                                     "text": TEXT.format(n=n)})
                url = f"{base}/hooks/api/default/messages"
                headers = {"Authorization": f"Bearer {TOKEN}",
                           "Content-Type": "application/json"}
            else:
                body = line_body(user, counter)
                signature = base64.b64encode(hmac.new(SECRET.encode(), body,
                                                      hashlib.sha256).digest()).decode()
                url = f"{base}/hooks/line/shop"
                headers = {"X-Line-Signature": signature, "Content-Type": "application/json"}
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    acked += 1
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    per_request = 1 if kind == "api" else EVENTS_PER_BODY
    return {"kind": kind, "requests": acked, "errors": errors, "seconds": round(elapsed, 2),
            "requests_per_s": round(acked / elapsed, 1),
            "messages_per_s": round(acked * per_request / elapsed, 1),
            "messages_acked": acked * per_request,
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1)
            if latencies else None}


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}")
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("daemon not ready")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--users", type=int, default=500)
    args = parser.parse_args()
    fake_port, http_port = free_port(), free_port()
    runner = await fake_line(fake_port)
    with tempfile.TemporaryDirectory(prefix="line-bench-") as tmp:
        data = Path(tmp) / "data"
        config = Path(tmp) / "omnirelay.toml"
        config.write_text(textwrap.dedent(f"""
            [server]
            listen = "127.0.0.1:{http_port}"
            [store]
            url = "sqlite:///{data}/omnirelay.db"
            data_dir = "{data}"
            synchronous = "FULL"
            [logging]
            level = "warning"
            [[tokens]]
            name = "admin"
            token = "{TOKEN}"
            scopes = ["admin"]
            [[channels]]
            type = "api"
            name = "default"
            [[channels]]
            type = "line"
            name = "shop"
            channel_secret = "{SECRET}"
            channel_access_token = "{ACCESS}"
            api_base_url = "http://127.0.0.1:{fake_port}"
            data_api_base_url = "http://127.0.0.1:{fake_port}"
            """))
        log = open(Path(tmp) / "daemon.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                 str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{http_port}"
        try:
            await wait_ready(base, proc)
            results = []
            for kind in ("api", "line"):
                result = await drive(kind, base, args.duration, args.concurrency, args.users)
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)
            log.close()
            await runner.cleanup()
        db = sqlite3.connect(data / "omnirelay.db")
        stored = dict(db.execute("SELECT channel, COUNT(*) FROM messages GROUP BY channel"))
        distinct_line = db.execute("SELECT COUNT(DISTINCT provider_message_id) FROM messages "
                                   "WHERE channel = 'line'").fetchone()[0]
        db.close()
    api, line = results
    summary = {
        "api_messages_per_s": api["messages_per_s"],
        "line_events_per_s": line["messages_per_s"],
        "ratio_line_events_to_api_messages": round(line["messages_per_s"]
                                                   / max(api["messages_per_s"], 1e-9), 2),
        "stored": stored, "acked": {"api": api["messages_acked"], "line": line["messages_acked"]},
        "durable": stored.get("api", 0) >= api["messages_acked"]
        and stored.get("line", 0) >= line["messages_acked"]
        and distinct_line == stored.get("line", 0),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
