"""API-channel ingest benchmark: omnirelay vs a bare aiohttp app on the same route.

Usage (from the repository root; ``scripts/setup --test`` installs wrk)::

    .venv/bin/python bench/api_ingest.py [--duration S] [--concurrency 50]
        [--configs default,warning] [--loadgen wrk|python]
        [--synchronous FULL|NORMAL|FULL,NORMAL] [--prefill N] [--kill] [--no-pin]

Three kinds of process take part, all on 127.0.0.1:

* the servers: the real daemon (uvloop) in each configuration of ``--configs``, and a bare
  aiohttp app (uvloop too) whose handler reads the body and answers a fixed 201 JSON of the
  same size as omnirelay's answer, doing no work. ``default`` is ``omnirelay run`` without a
  config file: the embedded default users start with (logging at ``info``, one
  ``ingest.stored`` line per message, synchronous FULL), configured by its environment
  variables. ``warning`` is the same configuration as a file with ``[logging] level =
  "warning"`` (and the ``--synchronous`` mode);
* the load generator: by default wrk (``bench/wrk_api.lua``; C, so not the ceiling), else
  (``--loadgen python``) a Python process (aiohttp client, uvloop). Either keeps
  ``concurrency`` keep-alive connections busy, each request an API-channel message with a
  bearer token, a unique ``message_id``, a ~300-byte text and a sender from a pool of
  ``--customers`` (5,000; so customers repeat); latency percentiles are wrk's;
* this orchestrator, which prepares data, starts and stops everything, samples the
  daemon's RSS from ``/proc/<pid>/status`` and checks durability. It sleeps while the
  load runs.

On a 2-core machine the load generator is pinned to CPU 0 and the server under test to
CPU 1 (``--no-pin`` leaves placement to the kernel), so each server gets one core and the
same client. The servers are driven one after the other, never at once.

Durability: every message the daemon acknowledged (2xx; wrk records the provider
``message_id`` of each 2xx answer) must be in the database, read
directly from the SQLite file after the daemon exited. ``--kill`` adds a run per
synchronous mode in which the daemon gets SIGKILL in the middle of the load; the daemon is
then restarted (recovery), stopped, and the file is checked the same way.

``--prefill N`` first stores N messages over N/10 customers by writing the schema directly
with sqlite3 (JSON shaped exactly like the store writes it); the file is cached under
``bench/results/`` so re-runs only copy it. ``--pool new`` (default) sends as customers
that are not in the prefill, so an empty and a full store do the same work per message;
``--pool existing --customers 100000`` sends as the prefilled customers (random access
all over the big store; on an empty store the same request stream creates them).

The machine is shared: before each run the orchestrator waits (bounded) for the other
processes to go quiet, measures how much CPU they used during the window, and repeats a
disturbed run (``--max-noise``, ``--retries``). Each result reports the CPU of the server
(and of its main thread), of the load generator and of everything else, the 2xx
completions per second, and goes to ``bench/results/api_ingest-<time>.json``.

Every loop here is bounded by a count or a deadline, and every process started is ended
by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ACCOUNT = "default"  # the embedded default's API account
TOKEN = "bench-admin-token-0123456789"
ROUTE = "/hooks/api/{account}/messages"
PREFILL_PREFIX = "pre"
WORDS = ("order", "delivery", "refund", "package", "tracking", "invoice", "address", "the",
         "my", "is", "not", "arrived", "yet", "please", "help", "with", "account", "payment",
         "card", "was", "charged", "twice", "size", "exchange", "return", "label", "when",
         "will", "it", "ship", "thanks", "hello", "again", "still", "waiting", "for", "an",
         "answer", "number", "week", "ago", "color", "wrong", "item", "received", "box")


# ============================================================================ helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def texts(rng: random.Random, count: int, size: int = 300) -> list[str]:
    """``count`` realistic-looking customer texts of about ``size`` bytes."""
    out = []
    for _ in range(count):
        words: list[str] = []
        length = 0
        target = rng.randint(size - 40, size + 40)
        while length < target:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + f"? Order #{rng.randint(10**6, 10**7)}.")
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of an already sorted list, nearest-rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB, or (0, 0) once it is gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values["VmRSS"], values["VmHWM"]


def cpu_ticks(pid: int, *, children: bool = False) -> dict[str, int]:
    """CPU time (utime + stime, clock ticks) of a process's threads: "main" and by name.

    ``children``: add the threads of its child processes (wrk under its wrapper) by name.
    """
    ticks: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return ticks
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                stat = fh.read()
            if children:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    kids.extend(int(k) for k in fh.read().split())
        except FileNotFoundError:
            continue
        name = "main" if tid == str(pid) else stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    for kid in kids:
        for name, value in cpu_ticks(kid).items():
            key = f"child:{name}"
            ticks[key] = ticks.get(key, 0) + value
    return ticks


def system_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < threshold of one core.

    Returns the busy share (of one core) last seen, so a noisy run can be reported as such.
    """
    deadline = time.monotonic() + max_wait
    busy = 0.0
    while True:
        b0, t0 = system_ticks()
        time.sleep(1.0)
        b1, t1 = system_ticks()
        busy = (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        log(f"machine busy ({busy:.0%} of a core used by other processes); waiting")


def pin(cpu: int | None) -> Any:
    """A ``preexec_fn`` that pins the child (and all its threads) to one CPU."""
    if cpu is None:
        return None

    def apply() -> None:
        os.sched_setaffinity(0, {cpu})

    return apply


def log(msg: str) -> None:
    """Progress on stderr, with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================ bare app


def serve_bare(port: int, route: str, respond: Any) -> None:
    """A baseline server (uvloop): POST ``route`` reads the body and answers ``respond()``,
    doing no other work, until SIGTERM or SIGINT. The benchmarks of the other channels use
    it too, each with its own route and answer."""
    import uvloop
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        response: web.Response = respond()
        return response

    async def serve() -> None:
        app = web.Application()
        app.router.add_post(route, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(serve())


def bare_main(port: int) -> None:
    """The baseline: the same route, reads the body, answers a fixed 201 JSON."""
    import orjson
    from aiohttp import web

    canned = orjson.dumps({"message": _canned_message(), "created": True})
    serve_bare(port, ROUTE, lambda: web.Response(body=canned, status=201,
                                                 content_type="application/json"))


def _canned_message() -> dict[str, Any]:
    """A message object of the size omnirelay answers with."""
    now = "2026-01-01T00:00:00.000Z"
    return {
        "id": "msg_01KB0000000000000000000000", "conversation_id": "cnv_01KB0000000000000000",
        "customer_id": "cus_01KB0000000000000000000000", "channel": "api", "account": ACCOUNT,
        "direction": "inbound", "from": {"kind": "external", "address": "cust-1",
                                         "name": "Customer 1"},
        "to": None, "subject": None, "text": "x" * 300, "html": None, "attachments": [],
        "in_reply_to": None, "provider": {"message_id": "m-000000001", "thread_id": None},
        "status": "received", "error": None, "agent": None, "automatic": None,
        "sent_at": now, "received_at": now,
    }


# ============================================================================ load generator


@dataclass
class LoadSpec:
    """What the load generator does (passed to its process as JSON)."""

    url: str
    duration: float
    warmup: float
    concurrency: int
    max_count: int
    customers: int
    customer_base: int
    prefix: str
    seed: int
    out: str
    token: str = ""
    wrk_threads: int = 1


def loadgen_main(spec: LoadSpec) -> None:
    """Run the load and write a JSON result (and the acknowledged ids) to ``spec.out``."""
    import uvloop

    result = uvloop.run(_load(spec))
    Path(spec.out).write_text(json.dumps(result))


async def _load(spec: LoadSpec) -> dict[str, Any]:
    import aiohttp
    import orjson

    rng = random.Random(spec.seed)
    pool = texts(rng, 512)
    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=spec.concurrency,
                                     force_close=False, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=30)
    counter = 0
    latencies: list[float] = []  # completed 2xx in the measured window, seconds
    statuses: dict[str, int] = {}
    acked: list[str] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    measure_from = started + spec.warmup
    deadline = measure_from + spec.duration
    measured_ok = 0
    measured_first: float | None = None
    measured_last = measure_from
    timeline = [0] * int(spec.warmup + spec.duration + 41)  # 2xx completions per second

    async def worker(session: aiohttp.ClientSession, wid: int) -> None:
        nonlocal counter, measured_ok, measured_first, measured_last
        wrng = random.Random(spec.seed * 1000 + wid)
        while time.perf_counter() < deadline and counter < spec.max_count:
            n = counter
            counter += 1
            cust = spec.customer_base + wrng.randrange(spec.customers)
            message_id = f"{spec.prefix}-{n:09d}"
            body = orjson.dumps({
                "message_id": message_id,
                "from": {"id": f"cust-{cust}", "name": f"Customer {cust}",
                         "email": f"cust-{cust}@example.com"},
                "text": pool[n % len(pool)],
            })
            headers = {"Content-Type": "application/json",
                       "Authorization": f"Bearer {spec.token}"}
            t0 = time.perf_counter()
            try:
                async with session.post(spec.url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)  # a dead server must not become a busy loop
                continue
            t1 = time.perf_counter()
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if 200 <= status < 300:
                acked.append(message_id)
                second = int(t1 - started)
                if second < len(timeline):
                    timeline[second] += 1
                if t0 >= measure_from and t1 <= deadline:
                    latencies.append(t1 - t0)
                    measured_ok += 1
                    measured_first = t0 if measured_first is None else measured_first
                    measured_last = max(measured_last, t1)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = [asyncio.create_task(worker(session, i)) for i in range(spec.concurrency)]
        hard_stop = spec.warmup + spec.duration + 40
        _done, pending = await asyncio.wait(workers, timeout=hard_stop)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    latencies.sort()
    window = spec.duration
    return {
        "sent": counter, "acked": len(acked), "statuses": statuses, "errors": errors,
        "measured_ok": measured_ok, "window_s": window,
        "rate": measured_ok / window if window else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "per_second": timeline[:int(spec.warmup + spec.duration) + 1],
        "acked_ids": acked,
    }


def wrk_main(spec: LoadSpec) -> None:
    """Run wrk for the warm-up, then for the measured window; write one result like _load's.

    Both runs' acknowledged ids go to the durability check; rate and latency come from the
    measured run only (wrk's own latency distribution).
    """
    runs = []
    for phase, seconds in (("warmup", spec.warmup), ("measured", spec.duration)):
        if seconds <= 0:
            continue
        out = Path(f"{spec.out}.{phase}")
        cmd = ["wrk", f"-t{spec.wrk_threads}", f"-c{spec.concurrency}",
               f"-d{seconds:g}s", "--timeout", "30s", "--latency",
               "-s", str(ROOT / "bench" / "wrk_api.lua"), spec.url, "--",
               f"{spec.prefix}.{phase[0]}", spec.token, str(spec.customers), str(spec.seed),
               str(spec.customer_base)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "WRK_RESULT": str(out)})
        runs.append((phase, json.loads(out.read_text())))
    measured = runs[-1][1]
    seconds = measured["duration_us"] / 1e6
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for _phase, run in runs:
        for key, count in run["statuses"].items():
            statuses[key] = statuses.get(key, 0) + count
        for key, count in run["errors"].items():
            if count:
                errors[key] = errors.get(key, 0) + count
    acked = [i for _phase, run in runs for i in run["acked_ids"]]
    result = {
        "generator": "wrk", "sent": sum(run["requests"] for _phase, run in runs),
        "acked": len(acked), "statuses": statuses, "errors": errors,
        "measured_ok": measured["ok"], "window_s": seconds,
        "rate": measured["ok"] / seconds if seconds else 0.0,
        "p50_ms": measured["p50_us"] / 1000, "p95_ms": measured["p95_us"] / 1000,
        "p99_ms": measured["p99_us"] / 1000, "max_ms": measured["max_us"] / 1000,
        "acked_ids": acked,
    }
    Path(spec.out).write_text(json.dumps(result))


# ============================================================================ prefill


def _ulid(ms: int, rng: random.Random) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = (ms << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(alphabet[rem])
    return "".join(reversed(chars))


def _iso_ms(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def prefill_path(messages: int) -> Path:
    """Where the cached prefilled database of this size and schema lives."""
    from gateway.store.sqlite import migration_scripts

    versions = "-".join(str(v) for v, _ in migration_scripts())
    digest = hashlib.sha256("".join(sql for _, sql in migration_scripts()).encode()
                            ).hexdigest()[:8]
    return RESULTS / f"prefill-{messages}-{ACCOUNT}-s{versions}-{digest}.db"


def build_prefill(target: Path, messages: int, seed: int = 7) -> None:
    """Store ``messages`` API-channel messages over ``messages // 10`` customers.

    The rows are what ``_ingest`` writes for the same traffic: a customer with an external
    and an e-mail identity, conversations (a new one when the previous was closed for more
    than the reopen window), every message with its raw payload and its
    ``message.received`` event, ``customer.created`` and ``conversation.opened`` events,
    all spread over the past year, ids time-sorted like the daemon's.
    """
    import orjson

    from gateway.store import compact
    from gateway.store.sqlite import _message_json, apply_migrations
    from normalizer.model import Party

    customers = max(1, messages // 10)
    rng = random.Random(seed)
    end_ms = int(time.time() * 1000) - 3_600_000
    start_ms = end_ms - 365 * 86_400_000
    log(f"prefill: planning {messages} messages over {customers} customers")
    # Each customer writes in 1-4 bursts (conversations) spread over the year.
    plan: list[tuple[int, int]] = []  # (time ms, customer index)
    per_customer = [messages // customers] * customers
    for i in range(messages - sum(per_customer)):
        per_customer[i] += 1
    for cust, count in enumerate(per_customer):
        bursts = rng.randint(1, min(4, count))
        cuts = sorted(rng.sample(range(1, count), bursts - 1)) if bursts > 1 else []
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, count], strict=True)]
        for size in sizes:
            t = rng.randint(start_ms, end_ms - 86_400_000)
            for _ in range(size):
                plan.append((t, cust))
                t += rng.randint(60_000, 1_800_000)
    plan.sort()
    pool = texts(rng, 512)
    tmp = target.with_suffix(".tmp")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    apply_migrations(conn)
    conn.execute("INSERT INTO codec_dictionaries (id, data) VALUES (?, ?)",
                 compact.builtin_dictionary())
    day = 86_400_000
    window = 7 * day
    cust_id: list[str | None] = [None] * customers
    conv_of: dict[int, list[Any]] = {}  # customer → [id, opened, last, context-json]
    conv_rows: list[tuple[Any, ...]] = []
    rows_c: list[tuple[Any, ...]] = []
    rows_i: list[tuple[Any, ...]] = []
    rows_m: list[tuple[Any, ...]] = []
    rows_r: list[tuple[Any, ...]] = []
    rows_e: list[tuple[Any, ...]] = []
    seq = 0

    def conv_json(conv: list[Any], cid: str, status: str, closed: str | None) -> dict[str, Any]:
        return {"id": conv[0], "customer_id": cid, "channel": "api", "account": ACCOUNT,
                "status": status, "opened_at": _iso_ms(conv[1]), "closed_at": closed,
                "last_message_at": _iso_ms(conv[2]), "tags": [], "priority": "normal",
                "queue": None, "context": {}}

    def close_row(conv: list[Any], cid: str, status: str) -> tuple[Any, ...]:
        closed = None if status == "open" else _iso_ms(conv[2] + day)
        return (conv[0], cid, "api", ACCOUNT, status, _iso_ms(conv[1]), closed,
                _iso_ms(conv[2]), "[]", "normal", None, "{}")

    def event(type_: str, ms: int, data: dict[str, Any], conv: str | None, cid: str,
              shares: tuple[str, bytes] | None = None) -> int:
        """Stored as Tx.emit stores it: compressed, without the JSON it shares with a row."""
        nonlocal seq
        seq += 1
        eid = "evt_" + _ulid(ms, rng)
        created = _iso_ms(ms)
        body = orjson.dumps({"id": eid, "seq": str(seq), "type": type_, "created_at": created,
                             "data": data})
        ref = at = None
        if shares is not None:
            ref, at = shares[0], body.find(shares[1])
            body = body[:at] + body[at + len(shares[1]):]
        rows_e.append((seq, eid, type_, created, conv, cid, compact.pack(body), ref, at))
        return seq

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO customers (id, name, name_source, created_at, "
                         "updated_at) VALUES (?, ?, ?, ?, ?)", rows_c)
        conn.executemany("INSERT INTO identities VALUES (?, ?, ?, ?, ?)", rows_i)
        conn.executemany("INSERT INTO conversations (id, customer_id, channel, account, status,"
                         " opened_at, closed_at, last_message_at, tags, priority, queue, "
                         "context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", conv_rows)
        conn.executemany("INSERT INTO messages (id, conversation_id, customer_id, channel, "
                         "account, direction, provider_message_id, status, created_at, data, "
                         "event_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows_m)
        conn.executemany("INSERT INTO raw_payloads VALUES (?, ?, ?, ?)", rows_r)
        conn.executemany("INSERT INTO events (seq, id, type, created_at, conversation_id, "
                         "customer_id, body, message_ref, message_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows_e)
        conn.execute("COMMIT")
        for rows in (rows_c, rows_i, conv_rows, rows_m, rows_r, rows_e):
            rows.clear()

    started = time.monotonic()
    for n, (ms, cust) in enumerate(plan):
        name = f"Customer {cust}"
        external = f"cust-{cust}"
        email = f"cust-{cust}@example.com"
        cid = cust_id[cust]
        now = _iso_ms(ms)
        if cid is None:
            cid = cust_id[cust] = "cus_" + _ulid(ms, rng)
            rows_c.append((cid, name, f"external:{external}", now, now))  # as _take_name
            rows_i.append(("email", email, cid, "[]", now))
            rows_i.append(("external", external, cid, '["api"]', now))
            event("customer.created", ms, {"customer": {
                "id": cid, "name": name, "merged_into": None, "identities": [
                    {"kind": "email", "address": email, "channels": []},
                    {"kind": "external", "address": external, "channels": ["api"]}],
                "created_at": now}}, None, cid)
        conv = conv_of.get(cust)
        if conv is not None and ms > conv[2] + day + window:
            conv_rows.append(close_row(conv, cid, "closed"))  # closed by an agent, long ago
            conv = None
        if conv is None:
            conv = conv_of[cust] = ["cnv_" + _ulid(ms, rng), ms, ms]
            event("conversation.opened", ms, {"conversation": conv_json(conv, cid, "open",
                                                                        None)}, conv[0], cid)
        conv[2] = ms
        text = pool[n % len(pool)]
        provider_id = f"{PREFILL_PREFIX}-{n:09d}"
        raw = orjson.dumps({"message_id": provider_id, "from": {"id": external, "name": name,
                                                                "email": email},
                            "text": text})
        message = _message_json(
            message_id="msg_" + _ulid(ms, rng), conversation_id=conv[0], customer_id=cid,
            channel="api", account=ACCOUNT, direction="inbound",
            sender=Party("external", external, name), recipient=None, subject=None,
            text=text, html=None, attachments=(), in_reply_to=None,
            provider_message_id=provider_id, thread_id=None, status="received", agent=None,
            automatic=None, sent_at=now, received_at=now)
        encoded = orjson.dumps(message)
        event_seq = event("message.received", ms,
                          {"message": orjson.Fragment(encoded),
                           "conversation": conv_json(conv, cid, "open", None)},
                          conv[0], cid, shares=(message["id"], encoded))
        rows_m.append((message["id"], conv[0], cid, "api", ACCOUNT, "inbound", provider_id,
                       "received", now, compact.pack(encoded), event_seq))
        rows_r.append((message["id"], "application/json", compact.pack_raw(raw), now))
        if len(rows_m) >= 50_000:
            flush()
            log(f"prefill: {n + 1}/{messages} messages "
                f"({time.monotonic() - started:.0f} s)")
    for cust, conv in conv_of.items():
        cid = cust_id[cust]
        status = "open" if conv[2] + day > end_ms else "closed"
        conv_rows.append(close_row(conv, cid, status))
    flush()
    # No ANALYZE: the daemon never runs it, so its query plans come without statistics.
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    tmp.replace(target)
    log(f"prefill: done in {time.monotonic() - started:.0f} s, "
        f"{target.stat().st_size / 1e9:.2f} GB at {target}")


# ============================================================================ orchestration


@dataclass
class Run:
    """One measured run against one server."""

    label: str
    server: str
    synchronous: str | None = None
    prefill: int = 0
    killed: bool = False
    config: str | None = None  # a key of CONFIGS
    load: dict[str, Any] = field(default_factory=dict)
    rss_max_kb: int = 0
    rss_hwm_kb: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core, by role
    threads: dict[str, float] = field(default_factory=dict)  # the server's, % of one core
    durability: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Summary without the id list."""
        load = {k: v for k, v in self.load.items() if k != "acked_ids"}
        return {"label": self.label, "server": self.server, "config": self.config,
                "synchronous": self.synchronous,
                "prefill": self.prefill, "killed": self.killed, "load": load,
                "rss_max_mb": round(self.rss_max_kb / 1024, 1),
                "rss_hwm_mb": round(self.rss_hwm_kb / 1024, 1), "server_cpu_pct": self.cpu,
                "server_threads_cpu_pct": self.threads,
                "durability": self.durability}


CONFIGS = {"default": "embedded default (info logs)", "warning": "level = warning"}


def config_text(data_dir: Path, port: int, smtp_port: int, synchronous: str) -> str:
    """The ``warning`` configuration: the embedded default as a file, logging at warning."""
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{port}"
        [store]
        url = "sqlite:///{data_dir}/omnirelay.db"
        data_dir = "{data_dir}"
        synchronous = "{synchronous}"
        [logging]
        level = "warning"
        [[tokens]]
        name = "default"
        token = "{TOKEN}"
        scopes = ["admin"]
        [[channels]]
        type = "email"
        name = "default"
        address = "support@localhost"
        smtp_listen = "127.0.0.1:{smtp_port}"
        accept_any_recipient = true
        [[channels]]
        type = "api"
        name = "{ACCOUNT}"
        """)


class Bench:
    """Starts servers and the load generator, collects :class:`Run` results."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.server_cpu = 1 if args.pin else None
        self.load_cpu = 0 if args.pin else None
        self.runs: list[Run] = []
        self.spy: subprocess.Popen[bytes] | None = None
        self.load_started = time.monotonic()

    # ---------------------------------------------------------------- processes

    def _wait_port(self, proc: subprocess.Popen[bytes], port: int, timeout: float,
                   what: str) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                if getattr(exc, "code", None) == 404:  # the bare app has no /readyz
                    return
            time.sleep(0.05)
        raise SystemExit(f"{what} not ready in {timeout} s")

    def start_daemon(self, data_dir: Path, port: int, config: str, synchronous: str
                     ) -> subprocess.Popen[bytes]:
        """``config`` default: no file, the embedded default from its environment variables."""
        smtp_port = free_port()
        src = Path(self.args.src).resolve() if self.args.src else ROOT
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("OMNIRELAY_")}
        if self.args.src:
            env["PYTHONPATH"] = str(src)
        if config == "default":
            env.update(OMNIRELAY_DATA_DIR=str(data_dir), OMNIRELAY_LISTEN=f"127.0.0.1:{port}",
                       OMNIRELAY_SMTP_LISTEN=f"127.0.0.1:{smtp_port}",
                       OMNIRELAY_API_TOKEN=TOKEN)
            config_args: list[str] = []
        else:
            cfg = data_dir.parent / f"{data_dir.name}.toml"
            cfg.write_text(config_text(data_dir, port, smtp_port, synchronous))
            config_args = ["--config", str(cfg)]
        # Logs go to a file (journald in production): a pipe nobody reads would block.
        logfile = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, *self.args.python_opt, "-m", "gateway", "run",
                                 *config_args],
                                cwd=src, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                preexec_fn=pin(self.server_cpu))
        logfile.close()
        self._wait_port(proc, port, 120, "omnirelay")
        return proc

    def start_bare(self, port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, __file__, "--role", "bare", "--port",
                                 str(port)], cwd=ROOT, preexec_fn=pin(self.server_cpu))
        self._wait_port(proc, port, 30, "bare app")
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        """SIGTERM our own child by pid and wait for it."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def start_load(self, url: str, duration: float, warmup: float, tag: str
                   ) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.workdir / f"load-{tag}.json"
        spec = LoadSpec(url=url, duration=duration, warmup=warmup,
                        concurrency=self.args.concurrency, max_count=self.args.max_count,
                        customers=self.args.customers,
                        customer_base=0 if self.args.pool == "existing" else 10_000_000,
                        prefix=f"{tag}-{os.getpid()}", seed=self.args.seed,
                        out=str(out), token=TOKEN, wrk_threads=self.args.wrk_threads)
        role = "wrk" if self.args.loadgen == "wrk" else "load"
        proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--spec",
                                 json.dumps(spec.__dict__)], cwd=ROOT,
                                preexec_fn=pin(self.load_cpu))
        self.load_started = time.monotonic()
        return proc, out

    # ---------------------------------------------------------------- runs

    def data_dir(self, tag: str) -> Path:
        """A fresh data dir, with the prefilled database copied in when asked."""
        data = self.workdir / tag
        data.mkdir()
        if self.args.prefill:
            shutil.copyfile(prefill_path(self.args.prefill), data / "omnirelay.db")
            os.sync()  # no write-back of the copy during the measurement
        return data

    def quiet(self) -> None:
        """Start a run only on an otherwise idle machine (bounded wait)."""
        if self.args.quiet_wait > 0:
            busy = wait_quiet(self.args.quiet_wait)
            if busy >= 0.15:
                log(f"machine still busy ({busy:.0%} of a core); measuring anyway")

    def measured(self, make: Any) -> Run:
        """Run ``make()``; repeat (bounded) while other processes disturbed the window."""
        for attempt in range(1, self.args.retries + 2):
            run = make()
            noise = run.cpu.get("everything_else", 0.0)
            if noise <= self.args.max_noise or attempt > self.args.retries:
                if noise > self.args.max_noise:
                    log(f"{run.label}: other processes used {noise:.0f} % of a core; kept")
                return run
            log(f"{run.label}: other processes used {noise:.0f} % of a core during the "
                f"window; measuring again ({attempt}/{self.args.retries})")
        raise AssertionError("unreachable")

    def run_bare(self) -> Run:
        port = free_port()
        proc = self.start_bare(port)
        self.quiet()
        try:
            run = Run("bare aiohttp", "bare")
            load, out = self.start_load(f"http://127.0.0.1:{port}{ROUTE.format(account=ACCOUNT)}",
                                        self.args.duration, self.args.warmup, "bare")
            self._wait_load(load, proc, run)
            run.load = json.loads(out.read_text())
        finally:
            self.stop(proc)
        return run

    def run_daemon(self, config: str, synchronous: str, kill_at: float | None) -> Run:
        tag = f"{config}-{synchronous.lower()}{'-kill' if kill_at else ''}"
        data = self.data_dir(tag)
        base_seq = max_seq(data / "omnirelay.db")
        port = free_port()
        proc = self.start_daemon(data, port, config, synchronous)
        label = f"omnirelay {CONFIGS[config]} {synchronous}" + (" kill -9" if kill_at else "")
        run = Run(label, "omnirelay", synchronous, self.args.prefill, killed=kill_at is not None,
                  config=config)
        url = f"http://127.0.0.1:{port}{ROUTE.format(account=ACCOUNT)}"
        self.quiet()
        try:
            if kill_at is None:
                load, out = self.start_load(url, self.args.duration, self.args.warmup, tag)
                if self.args.profile:
                    self.profile(proc.pid, tag)
            else:
                load, out = self.start_load(url, kill_at + 2.0, 0.0, tag)
            self._wait_load(load, proc, run, kill_at=kill_at)
            if self.spy is not None:  # py-spy ends by itself after --duration
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.spy.wait(30)
                self.spy = None
            run.load = json.loads(out.read_text())
            if proc.poll() is None:
                run.rss_hwm_kb = rss_kb(proc.pid)[1]
        finally:
            code = self.stop(proc)
        if kill_at is not None:
            run.durability["exit_after_kill"] = code
            # Restart on the crashed files (recovery), then stop cleanly.
            proc = self.start_daemon(data, port, config, synchronous)
            run.durability["restart_exit"] = self.stop(proc)
        else:
            run.durability["exit"] = code
        run.durability.update(verify(data / "omnirelay.db", run.load["acked_ids"],
                                     run.load["sent"], tag, base_seq))
        if not self.args.keep:
            shutil.rmtree(data, ignore_errors=True)
        return run

    def profile(self, pid: int, tag: str) -> None:
        """py-spy the daemon (all threads) over the measured window, on the load's CPU."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = RESULTS / f"profile-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [spy, "record", "--pid", str(pid), "--rate", "250", "--threads",
               "--nonblocking", "--duration", str(int(self.args.duration)),
               *(["--gil"] if self.args.profile_gil else []),
               "--format", "raw", "-o", f"{out}.txt"]
        time.sleep(self.args.warmup)
        self.spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=pin(self.load_cpu))
        log(f"py-spy: collapsed stacks in {out}.txt")

    def _wait_load(self, load: subprocess.Popen[bytes], daemon: subprocess.Popen[bytes] | None,
                   run: Run, kill_at: float | None = None) -> None:
        """Wait for the load generator, sampling the daemon's RSS; SIGKILL it at kill_at."""
        started = self.load_started
        limit = self.args.warmup + self.args.duration + 90
        window = (self.args.warmup, self.args.warmup + self.args.duration)
        snapshots: list[tuple[float, dict[str, int], dict[str, int], tuple[int, int]]] = []
        while load.poll() is None:
            elapsed = time.monotonic() - started
            if kill_at is None and daemon is not None and len(snapshots) < 2 \
                    and elapsed >= window[len(snapshots)]:
                snapshots.append((time.monotonic(), cpu_ticks(daemon.pid),
                                  cpu_ticks(load.pid, children=True), system_ticks()))
            if elapsed > limit:
                load.kill()
                load.wait(10)
                raise SystemExit("the load generator did not finish in time")
            if daemon is not None and daemon.poll() is None:
                run.rss_max_kb = max(run.rss_max_kb, rss_kb(daemon.pid)[0])
                if kill_at is not None and elapsed >= kill_at:
                    run.rss_hwm_kb = rss_kb(daemon.pid)[1]
                    daemon.send_signal(signal.SIGKILL)
                    daemon.wait(10)
                    log(f"{run.label}: SIGKILL at {elapsed:.1f} s")
            time.sleep(0.25)
        if len(snapshots) == 2:
            (t0, a, la, sa), (t1, b, lb, sb) = snapshots
            hz = os.sysconf("SC_CLK_TCK")
            server = sum(b.values()) - sum(a.values())
            loadgen = sum(lb.values()) - sum(la.values())
            run.cpu = {"server": round(100 * server / hz / (t1 - t0), 1),
                       "server_main_thread": round(100 * (b.get("main", 0) - a.get("main", 0))
                                                   / hz / (t1 - t0), 1),
                       "load_generator": round(100 * loadgen / hz / (t1 - t0), 1),
                       "everything_else": round(100 * max(0, sb[0] - sa[0] - server - loadgen)
                                                / hz / (t1 - t0), 1)}
            # The server's threads by name (store-writer, store-sync, log-writer, …).
            run.threads = {name: round(100 * (b[name] - a.get(name, 0)) / hz / (t1 - t0), 1)
                           for name in sorted(b) if b[name] - a.get(name, 0) > 0}
        if load.returncode != 0:
            raise SystemExit(f"the load generator failed ({load.returncode})")


def max_seq(db: Path) -> int:
    """The newest event seq of a database file (0 when there is none)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    finally:
        conn.close()


def verify(db: Path, acked: list[str], sent: int, prefix_tag: str,
           base_seq: int) -> dict[str, Any]:
    """Every acknowledged message_id must be stored, exactly once, with its event."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored_ids = {r[0] for r in conn.execute(
            "SELECT provider_message_id FROM messages WHERE channel = 'api' AND account = ? "
            "AND provider_message_id >= ? AND provider_message_id < ?",
            (ACCOUNT, f"{prefix_tag}-", f"{prefix_tag}.")) }
        columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        if "message_ref" in columns:
            events = conn.execute(
                "SELECT COUNT(*) FROM events e JOIN messages m ON m.id = e.message_ref "
                "WHERE e.seq > ? "
                "AND e.type = 'message.received' "
                "AND m.provider_message_id >= ? AND m.provider_message_id < ?",
                (base_seq, f"{prefix_tag}-", f"{prefix_tag}.")).fetchone()[0]
        else:  # a store from before migration 0007 (an A/B run with --src)
            events = conn.execute(
                "SELECT COUNT(*) FROM events WHERE seq > ? AND type = 'message.received'",
                (base_seq,)).fetchone()[0]
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()
    acked_set = set(acked)
    missing = acked_set - stored_ids
    return {"acknowledged": len(acked_set), "found": len(acked_set & stored_ids),
            "missing": len(missing), "missing_sample": sorted(missing)[:5],
            "stored_total": len(stored_ids), "stored_not_acked": len(stored_ids - acked_set),
            "received_events": events, "sent": sent, "quick_check": integrity}


def ensure_prefill(messages: int) -> None:
    """Build the cached prefilled database once."""
    path = prefill_path(messages)
    if path.exists():
        log(f"prefill: using cached {path}")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    build_prefill(path, messages)


def fmt_table(runs: list[Run]) -> str:
    """A markdown table of the runs."""
    bare = next((r for r in runs if r.server == "bare"), None)
    lines = ["| run | store | msgs/s | p50 ms | p95 ms | p99 ms | ratio vs bare | errors "
             "| RSS max MB | CPU server / load gen / other % | acked / found |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in runs:
        load = r.load
        ratio = (f"{load['rate'] / bare.load['rate']:.2f}"
                 if bare and r.server != "bare" and not r.killed else "")
        store = "-" if r.server == "bare" else (f"{r.prefill:,} msgs" if r.prefill else "empty")
        errors = sum(load["errors"].values()) + sum(
            v for k, v in load["statuses"].items() if not k.startswith("2"))
        dur = r.durability
        found = f"{dur['acknowledged']} / {dur['found']}" if dur else ""
        rate = "" if r.killed else f"{load['rate']:.0f}"
        lat = ("", "", "") if r.killed else (f"{load['p50_ms']:.1f}", f"{load['p95_ms']:.1f}",
                                             f"{load['p99_ms']:.1f}")
        rss = f"{r.rss_max_kb / 1024:.0f}" if r.rss_max_kb and r.server != "bare" else ""
        cpu = (f"{r.cpu['server']:.0f} / {r.cpu['load_generator']:.0f} / "
               f"{r.cpu['everything_else']:.0f}") if r.cpu else ""
        lines.append(f"| {r.label} | {store} | {rate} | {lat[0]} | {lat[1]} | {lat[2]} "
                     f"| {ratio} | {errors} | {rss} | {cpu} | {found} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "bare", "load", "wrk"], default="bench",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="measured seconds of load per run (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of load before measuring (default 3)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--loadgen", choices=["wrk", "python"], default="wrk",
                        help="load generator: wrk (default; scripts/setup --test installs it) "
                             "or the Python aiohttp client")
    parser.add_argument("--wrk-threads", type=int, default=1,
                        help="wrk threads (default 1: wrk has one core)")
    parser.add_argument("--configs", default="default,warning",
                        help="daemon configurations, a comma list of: default (the embedded "
                             "default, info logs), warning (the same, level = warning)")
    parser.add_argument("--max-count", type=int, default=2_000_000,
                        help="stop a run after this many requests")
    parser.add_argument("--synchronous", default="FULL",
                        help="FULL, NORMAL or a comma list, e.g. FULL,NORMAL (the embedded "
                             "default runs FULL only)")
    parser.add_argument("--prefill", type=int, default=0,
                        help="store this many messages (over N/10 customers) first")
    parser.add_argument("--customers", type=int, default=5000,
                        help="size of the load's customer pool (default 5000)")
    parser.add_argument("--pool", choices=["new", "existing"], default="new",
                        help="load customers cust-10000000… outside the prefill (new) or "
                             "cust-0… (existing: the prefilled customers; on an empty store "
                             "the same request stream, but every customer is new)")
    parser.add_argument("--kill", action="store_true",
                        help="also run a kill -9 variant per synchronous mode")
    parser.add_argument("--kill-at", type=float, default=8.0,
                        help="seconds into the load of the kill -9 variant")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare aiohttp run")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin load generator to CPU 0 and server to CPU 1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--src", help="run the daemon from this source tree (A/B comparisons "
                                      "against a copy of another revision)")
    parser.add_argument("--python-opt", action="append", default=[],
                        help="extra interpreter option for the daemon, e.g. -X importtime")
    parser.add_argument("--max-noise", type=float, default=25.0,
                        help="repeat a run when other processes used more than this "
                             "%% of a core during its window (default 25)")
    parser.add_argument("--retries", type=int, default=2,
                        help="at most this many repeats of a disturbed run (default 2)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each run wait up to this many seconds for other "
                             "processes to leave the CPUs idle (0: don't wait)")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy record the daemon during each measured window "
                             "(collapsed stacks under bench/results/)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL "
                             "(where the Python CPU goes)")
    args = parser.parse_args()

    if args.role == "bare":
        bare_main(args.port)
        return 0
    if args.role == "load":
        loadgen_main(LoadSpec(**json.loads(args.spec)))
        return 0
    if args.role == "wrk":
        wrk_main(LoadSpec(**json.loads(args.spec)))
        return 0

    modes = [m.strip().upper() for m in args.synchronous.split(",") if m.strip()]
    if any(m not in ("FULL", "NORMAL", "EXTRA", "OFF") for m in modes):
        parser.error("--synchronous takes FULL, NORMAL (or EXTRA, OFF)")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        parser.error(f"--configs takes a comma list of {', '.join(CONFIGS)}")
    # The embedded default has no [store] synchronous: it runs the store's default, FULL.
    variants = [(c, m) for c in configs for m in modes if c != "default" or m == "FULL"]
    if not variants:
        parser.error("nothing to run: the embedded default runs synchronous FULL only")
    if args.loadgen == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed: scripts/setup --test (Debian package wrk), "
                     "or --loadgen python")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        args.pin = False
    if args.prefill:
        ensure_prefill(args.prefill)
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="omnirelay-bench-"))
    bench = Bench(args, workdir)
    try:
        if not args.no_bare:
            log("bare aiohttp: load")
            bench.runs.append(bench.measured(bench.run_bare))
        for config, mode in variants:
            log(f"omnirelay {CONFIGS[config]}, synchronous={mode}: load")
            bench.runs.append(bench.measured(
                lambda c=config, m=mode: bench.run_daemon(c, m, None)))
        if args.kill:
            for config, mode in variants:
                log(f"omnirelay {CONFIGS[config]}, synchronous={mode}: load with kill -9")
                bench.runs.append(bench.run_daemon(config, mode, args.kill_at))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"args": vars(args), "cpus": os.cpu_count(),
              "pinning": "load generator CPU 0, server CPU 1" if args.pin else "none",
              "load_generator": args.loadgen,
              "runs": [r.row() for r in bench.runs]}
    out = RESULTS / f"api_ingest-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(fmt_table(bench.runs))
    bare = next((r for r in bench.runs if r.server == "bare"), None)
    if bare and bare.cpu:
        print(f"bare aiohttp: CPU % of one core {bare.cpu}")
    for r in bench.runs:
        if r.server == "omnirelay":
            d = r.durability
            ok = d["missing"] == 0 and d["quick_check"] == "ok"
            print(f"{r.label}: acknowledged {d['acknowledged']}, found {d['found']}, "
                  f"missing {d['missing']}, stored but not acknowledged "
                  f"{d['stored_not_acked']}, events {d['received_events']}, "
                  f"quick_check {d['quick_check']} -> {'durable' if ok else 'LOST MESSAGES'}")
            if r.cpu:
                print(f"{r.label}: CPU % of one core {r.cpu}")
            if r.threads and r.load.get("rate"):
                per = {name: round(10_000 * pct / r.load["rate"], 1)
                       for name, pct in r.threads.items()}
                print(f"{r.label}: CPU µs per message by thread {per}")
            if bare and not r.killed:
                print(f"{r.label}: ratio {r.load['rate'] / bare.load['rate']:.2f}, "
                      f"RSS max {r.rss_max_kb / 1024:.0f} MB")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
