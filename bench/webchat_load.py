"""Web chat load: 1,000 concurrent WebSocket visitors writing while agents reply.

Usage (from the repository root)::

    .venv/bin/python bench/webchat_load.py [--visitors 1000] [--duration 20]
        [--reply-rate 100] [--visitor-interval 10] [--agents 16] [--no-bare]

What runs, all on 127.0.0.1:

* the server: the real daemon (a config file with one ``webchat`` account whose limits are
  opened up for one client address), or the bare baseline: an aiohttp app (uvloop) that
  keeps the same sockets and pushes a reply from ``POST /reply`` straight to the visitor's
  socket, storing nothing. The ratio of the two is what omnirelay's path costs: validation,
  the store's commit, the outbox, the push;
* this load client (aiohttp, uvloop): ``--visitors`` sockets, each says hello and writes
  its first message (a customer and a conversation per visitor), then writes again every
  ``--visitor-interval`` seconds (jittered) and acknowledges every reply, as the widget
  does; ``--agents`` concurrent agents post ``--reply-rate`` replies a second in total
  (``POST /v1/conversations/{id}/messages``) to random visitors' conversations.

Latency is measured from just before an agent's reply request is sent to the moment the
reply's frame is read from the visitor's socket (the reply's text carries its number, so a
push that arrives before the 202 is counted right). The daemon's RSS (VmRSS, and VmHWM,
its peak) is read from ``/proc/<pid>/status`` when idle, with every visitor connected, and
at the end. Results go to ``bench/results/webchat_load-<time>.json``.

Every loop is bounded by a count or a deadline; every process started is ended by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789"
ORIGIN = "http://bench.example"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

BARE_SERVER = textwrap.dedent('''
    import asyncio, sys, orjson, uvloop
    from aiohttp import web, WSMsgType
    sockets = {}
    async def ws(request):
        sock = web.WebSocketResponse(max_msg_size=1 << 20)
        await sock.prepare(request)
        visitor = None
        async for frame in sock:
            if frame.type is not WSMsgType.TEXT:
                continue
            data = orjson.loads(frame.data)
            if data["type"] == "hello":
                visitor = "v%d" % len(sockets)
                sockets[visitor] = sock
                await sock.send_str(orjson.dumps({"type": "welcome", "visitor": visitor,
                                                  "token": visitor}).decode())
                await sock.send_str('{"type": "history", "messages": []}')
            elif data["type"] == "message":
                await sock.send_str(orjson.dumps({"type": "message", "client_id": data["id"],
                    "message": {"id": data["id"], "conversation_id": visitor,
                                "direction": "inbound", "text": data["text"]}}).decode())
        return sock
    async def reply(request):
        body = await request.json()
        sock = sockets[body["conversation_id"]]
        await sock.send_str(orjson.dumps({"type": "message", "client_id": None, "message": {
            "id": "m", "direction": "outbound", "text": body["text"]}}).decode())
        return web.json_response({"id": "m"}, status=202)
    app = web.Application()
    app.router.add_get("/chat/bench/ws", ws)
    app.router.add_post("/reply", reply)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
''')


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def daemon_config(data_dir: Path, port: int, smtp_port: int) -> str:
    """One web chat account whose limits let 1,000 visitors share one client address."""
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{port}"
        public_url = "http://127.0.0.1:{port}"
        shutdown_timeout = 5
        [store]
        url = "sqlite:///{data_dir}/omnirelay.db"
        data_dir = "{data_dir}"
        [logging]
        level = "warning"
        format = "json"
        [[tokens]]
        name = "admin"
        token = "{TOKEN}"
        scopes = ["admin"]
        [[channels]]
        type = "email"
        name = "support"
        address = "support@shop.example"
        smtp_listen = "127.0.0.1:{smtp_port}"
        [[channels]]
        type = "webchat"
        name = "bench"
        allowed_origins = ["{ORIGIN}"]
        send_concurrency = 64
        visitor_messages_per_minute = 1000000
        ip_messages_per_minute = 1000000
        max_connections_per_ip = 1000000
        """)


class Load:
    """The visitors and agents against one server."""

    def __init__(self, args: argparse.Namespace, base: str, bare: bool) -> None:
        self.args = args
        self.base = base
        self.bare = bare
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.conversations: list[str] = []
        self.visitor_messages = 0
        self.errors: list[str] = []
        self.stop = asyncio.Event()

    async def visitor(self, session: aiohttp.ClientSession, ready: asyncio.Queue[str]) -> None:
        """One browser: hello, a first message, then more while reading replies."""
        ws = await session.ws_connect(f"{self.base.replace('http', 'ws')}/chat/bench/ws",
                                      headers={"Origin": ORIGIN}, heartbeat=None,
                                      max_msg_size=1 << 20)
        await ws.send_str('{"type": "hello"}')
        counter = 0

        async def write() -> None:
            nonlocal counter
            counter += 1
            await ws.send_str(orjson.dumps({"type": "message", "id": f"c{counter}",
                                            "text": "Where is my order? " * 3}).decode())

        await write()
        conversation = None
        next_write = time.monotonic() + random.uniform(0, self.args.visitor_interval)
        while not self.stop.is_set():
            timeout = max(0.05, next_write - time.monotonic())
            try:
                frame = await ws.receive(timeout=timeout)
            except TimeoutError:
                await write()
                next_write = time.monotonic() + self.args.visitor_interval * random.uniform(
                    0.5, 1.5)
                continue
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            data = orjson.loads(frame.data)
            if data["type"] != "message":
                continue
            message = data["message"]
            if message["direction"] == "inbound":
                self.visitor_messages += 1
                if conversation is None:
                    conversation = message["conversation_id"]
                    await ready.put(conversation)
                continue
            tag = message["text"].rsplit(" ", 1)[-1]
            started = self.sent_at.pop(tag, None)
            if started is not None:
                self.latencies.append(time.monotonic() - started)
            if not self.bare:
                await ws.send_str(orjson.dumps({"type": "ack", "ids": [message["id"]]}).decode())
        await ws.close()

    async def agent(self, session: aiohttp.ClientSession, number: int,
                    deadline: float) -> None:
        """Post replies at this agent's share of ``--reply-rate`` until the deadline."""
        interval = self.args.agents / self.args.reply_rate
        next_at = time.monotonic() + random.uniform(0, interval)
        n = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            n += 1
            tag = f"r{number}-{n}"
            conversation = random.choice(self.conversations)
            body = {"text": f"Your parcel left the warehouse, reference {tag}",
                    "agent": {"id": f"a-{number}", "name": "Mina"}}
            url = f"{self.base}/v1/conversations/{conversation}/messages"
            if self.bare:
                body["conversation_id"] = conversation
                url = f"{self.base}/reply"
            self.sent_at[tag] = time.monotonic()
            try:
                async with session.post(url, json=body, headers=AUTH) as response:
                    if response.status != 202:
                        self.errors.append(f"{response.status} {await response.text()}"[:200])
            except aiohttp.ClientError as exc:
                self.errors.append(repr(exc)[:200])

    async def run(self, pid: int | None) -> dict[str, Any]:
        """Connect everyone, load for ``--duration``, report."""
        connector = aiohttp.TCPConnector(limit=0)
        result: dict[str, Any] = {"server": "bare aiohttp" if self.bare else "omnirelay"}
        if pid:
            result["rss_idle_kib"] = rss(pid)
        async with aiohttp.ClientSession(connector=connector) as session:
            ready: asyncio.Queue[str] = asyncio.Queue()
            started = time.monotonic()
            tasks = []
            for _ in range(self.args.visitors):
                tasks.append(asyncio.ensure_future(self.visitor(session, ready)))
                await asyncio.sleep(0.002)  # a ramp, not a thundering herd
            while len(self.conversations) < self.args.visitors:
                try:
                    self.conversations.append(await asyncio.wait_for(ready.get(), 60))
                except TimeoutError:
                    count = len(self.conversations)
                    raise SystemExit(f"only {count} visitors connected") from None
            result["connect_seconds"] = round(time.monotonic() - started, 2)
            if pid:
                result["rss_connected_kib"] = rss(pid)
            self.visitor_messages = 0
            deadline = time.monotonic() + self.args.duration
            await asyncio.gather(*(self.agent(session, n, deadline)
                                   for n in range(self.args.agents)))
            await asyncio.sleep(2)  # the last replies arrive
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        lat = sorted(self.latencies)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)) \
            if lat else (lambda q: None)
        result.update({
            "visitors": self.args.visitors, "duration_s": self.args.duration,
            "replies_delivered": len(lat), "replies_lost": len(self.sent_at),
            "reply_rate_per_s": round(len(lat) / self.args.duration, 1),
            "visitor_messages_per_s": round(self.visitor_messages / self.args.duration, 1),
            "latency_ms": {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99),
                           "max": pick(1.0)},
            "errors": self.errors[:5], "error_count": len(self.errors)})
        if pid:
            result["rss_end_kib"] = rss(pid)
        return result


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the server accepts connections (or fail with its exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own process by its pid, then wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def main() -> None:
    """Run the baseline and omnirelay one after the other, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--reply-rate", type=float, default=100.0)
    parser.add_argument("--visitor-interval", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--no-bare", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # children inherit
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_bare:
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
            try:
                wait_port(port, proc)
                results.append(await Load(args, f"http://127.0.0.1:{port}", True).run(proc.pid))
            finally:
                stop(proc)
        port = free_port()
        config = Path(tmp) / "omnirelay.toml"
        config.write_text(daemon_config(Path(tmp) / "data", port, free_port()))
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                 str(config)], cwd=ROOT)
        try:
            wait_port(port, proc)
            results.append(await Load(args, f"http://127.0.0.1:{port}", False).run(proc.pid))
        finally:
            stop(proc)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"webchat_load-{time.strftime('%Y%m%dT%H%M%S')}.json"
    report = {"args": vars(args), "load": os.getloadavg(), "results": results}
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main())
