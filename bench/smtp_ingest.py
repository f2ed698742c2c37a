"""Inbound SMTP throughput: omnirelay (through to the feed) against a do-nothing aiosmtpd sink.

Both servers run as their own processes on 127.0.0.1, the way they would in production:
the sink is aiosmtpd on uvloop with a handler that answers 250 and keeps nothing; omnirelay
is ``python -m gateway run`` with a SQLite store (``synchronous = FULL``, the default). The
senders are 20 concurrent aiosmtplib connections in this process, each sending its share of
the messages over one session (MAIL/RCPT/DATA per message, as a relaying MTA does).

omnirelay's rate counts a message only once it is in the feed (``GET /v1/events``), so the
number is "accepted, committed and visible to a help desk", not just "250 sent".

    .venv/bin/python bench/smtp_ingest.py                 # print the table
    .venv/bin/python bench/smtp_ingest.py --write-docs    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
SECTION = "## E-mail (SMTP) ingest"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the sink (own process)


def serve_sink(port: int) -> None:
    """Run aiosmtpd with a handler that does nothing (the baseline)."""
    import uvloop
    from aiosmtpd.smtp import SMTP

    class NullHandler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = NullHandler()
        server = await loop.create_server(
            lambda: SMTP(handler, data_size_limit=25 * 1024 * 1024, hostname="sink.test",
                         enable_SMTPUTF8=True),
            host="127.0.0.1", port=port)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    uvloop.run(main())


# ---------------------------------------------------------------- messages


def make_message(index: int, size: int) -> bytes:
    """A realistic customer mail of about ``size`` bytes (text, plus an attachment if big)."""
    msg = EmailMessage()
    customer = index % 500
    msg["From"] = f"Customer {customer} <customer{customer}@mail.example>"
    msg["To"] = "support@shop.example"
    msg["Subject"] = f"Order #{100000 + index}: where is my parcel?"
    msg["Date"] = "Sun, 22 Nov 2026 10:00:00 +0900"
    msg["Message-ID"] = f"<bench-{size}-{index}-{os.getpid()}@mail.example>"
    line = "Hello, I ordered a pair of shoes last week and the tracking page has not moved. "
    if size <= 16 * 1024:
        body = (line * (size // len(line) + 1))[: max(0, size - 420)]
        msg.set_content(textwrap.fill(body, 76))
    else:
        msg.set_content(textwrap.fill(line * 4, 76))
        blob = (b"%PDF-1.4 bench " * (size // 15 + 1))[: int(size * 0.74)]
        msg.add_attachment(blob, maintype="application", subtype="pdf",
                           filename="invoice.pdf")
    return msg.as_bytes()


# ---------------------------------------------------------------- senders


async def send_all(port: int, messages: list[bytes], senders: int, *, reuse: bool) -> float:
    """Send every message from ``senders`` concurrent clients; return seconds taken.

    ``reuse``: each sender keeps one session open (MAIL/RCPT/DATA per message, as a relay
    with a backlog does); otherwise every message is a connection of its own (connect,
    EHLO, MAIL, RCPT, DATA, QUIT: mail from many different servers).
    """
    import aiosmtplib

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in messages:
        queue.put_nowait(raw)

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        try:
            while True:
                try:
                    raw = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await client.sendmail("customer@mail.example", ["support@shop.example"], raw)
        finally:
            await client.quit()

    async def one_by_one() -> None:
        while True:
            try:
                raw = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await aiosmtplib.send(raw, sender="customer@mail.example",
                                  recipients=["support@shop.example"], hostname="127.0.0.1",
                                  port=port, start_tls=False, timeout=60)

    started = time.perf_counter()
    await asyncio.gather(*((session if reuse else one_by_one)() for _ in range(senders)))
    return time.perf_counter() - started


async def feed_count(http: object, base: str, after: str, want: int,
                     deadline: float) -> tuple[str, float]:
    """Long-poll the feed until ``want`` message.received events arrived after ``after``."""
    import aiohttp

    assert isinstance(http, aiohttp.ClientSession)
    seen = 0
    cursor = after
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while seen < want:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"feed has {seen}/{want} messages at the deadline")
        async with http.get(f"{base}/v1/events", headers=headers,
                            params={"after": cursor, "limit": "1000", "wait": "5"}) as resp:
            page = await resp.json()
        seen += sum(1 for e in page["events"] if e["type"] == "message.received")
        cursor = page["next"]
    return cursor, time.perf_counter()


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process we started (stopped by pid only)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_sink(tmp: Path, port: int) -> Proc:
    """The baseline aiosmtpd process."""
    log = tmp / "sink.log"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(port)],
                            stdout=subprocess.PIPE, stderr=open(log, "wb"))  # noqa: SIM115
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"sink did not start: {log.read_text()}")
    return Proc(proc, log)


def start_daemon(tmp: Path, http_port: int, smtp_port: int) -> Proc:
    """omnirelay with one e-mail account taking any recipient."""
    data = tmp / "data"
    config = tmp / "omnirelay.toml"
    config.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{http_port}"
        [store]
        url = "sqlite:///{data}/omnirelay.db"
        data_dir = "{data}"
        [logging]
        level = "info"
        format = "json"
        [[tokens]]
        name = "bench"
        token = "{TOKEN}"
        scopes = ["admin"]
        [[channels]]
        type = "email"
        name = "bench"
        address = "support@shop.example"
        smtp_listen = "127.0.0.1:{smtp_port}"
        accept_any_recipient = true
        """))
    log = tmp / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                            cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", smtp_port), timeout=1) as sock:
                if sock.recv(100).startswith(b"220"):
                    import urllib.request

                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz") as r:
                        if r.status == 200:
                            return Proc(proc, log)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"daemon not ready: {log.read_text()}")


def start_profiler(args: argparse.Namespace, daemon: Proc, tmp: Path,
                   label: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the daemon while it takes one batch (``--py-spy /path/to/py-spy``)."""
    if not args.py_spy:
        return None
    out = tmp / f"profile-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.txt"
    print(f"profiling into {out}", flush=True)
    return subprocess.Popen([args.py_spy, "record", "-p", str(daemon.proc.pid), "-r", "250",
                             "--gil", "--threads", "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- the run


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One size: rates (best round) and CPU per message (median round) of both servers."""

    label: str
    count: int
    sink_rate: float
    omnirelay_rate: float
    omnirelay_ack_rate: float
    sink_cpu_ms: float
    omnirelay_cpu_ms: float

    @property
    def ratio(self) -> float:
        """omnirelay through to the feed, divided by the bare sink."""
        return self.omnirelay_rate / self.sink_rate

    @property
    def cpu_ratio(self) -> float:
        """The sink's CPU per message over ours: the ratio a dedicated core would give."""
        return self.sink_cpu_ms / self.omnirelay_cpu_ms


async def run(args: argparse.Namespace) -> list[Result]:
    """Measure each size against both servers, alternating rounds (the machine is shared:
    best rate and median CPU per message are reported)."""
    import statistics

    import aiohttp

    tmp = Path(tempfile.mkdtemp(prefix="omnirelay-bench-"))
    sink_port, smtp_port, http_port = free_port(), free_port(), free_port()
    sink = start_sink(tmp, sink_port)
    daemon = start_daemon(tmp, http_port, smtp_port)
    base = f"http://127.0.0.1:{http_port}"
    results = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/events", params={"limit": "1"},
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                cursor = (await resp.json())["next"]
            # Warm both up (imports, first connections, SQLite pages).
            warm = [make_message(-i - 1, 2048) for i in range(200)]
            await send_all(sink_port, warm, args.senders, reuse=True)
            await send_all(smtp_port, warm, args.senders, reuse=True)
            cursor, _ = await feed_count(http, base, cursor, len(warm), time.perf_counter() + 60)
            serial = 0
            plan = [("2 KB, one session per sender", 2048, args.small, True),
                    ("2 KB, one connection per message", 2048, args.small, False),
                    ("200 KB, one session per sender", 200 * 1024, args.large, True)]
            for label, size, count, reuse in plan:
                sink_rates, our_rates, ack_rates = [], [], []
                sink_cpu, our_cpu = [], []
                for _ in range(args.rounds):
                    batch = [make_message(serial + i, size) for i in range(count)]
                    serial += count
                    cpu = cpu_seconds(sink.proc.pid)
                    took = await send_all(sink_port, batch, args.senders, reuse=reuse)
                    sink_cpu.append((cpu_seconds(sink.proc.pid) - cpu) / count * 1000)
                    sink_rates.append(count / took)
                    batch = [make_message(serial + i, size) for i in range(count)]
                    serial += count
                    spy = start_profiler(args, daemon, tmp, label)
                    cpu = cpu_seconds(daemon.proc.pid)
                    started = time.perf_counter()
                    feed = asyncio.create_task(
                        feed_count(http, base, cursor, count, started + 300))
                    took = await send_all(smtp_port, batch, args.senders, reuse=reuse)
                    cursor, done = await feed
                    our_cpu.append((cpu_seconds(daemon.proc.pid) - cpu) / count * 1000)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                    ack_rates.append(count / took)
                    our_rates.append(count / (done - started))
                    print(f"  {label} round: sink {sink_rates[-1]:.0f}/s "
                          f"({sink_cpu[-1]:.3f} ms CPU/msg), omnirelay {our_rates[-1]:.0f}/s "
                          f"({our_cpu[-1]:.3f} ms CPU/msg)", flush=True)
                result = Result(label, count, max(sink_rates), max(our_rates),
                                max(ack_rates), statistics.median(sink_cpu),
                                statistics.median(our_cpu))
                results.append(result)
                print(f"{label}: sink {result.sink_rate:.0f}/s, omnirelay "
                      f"{result.omnirelay_rate:.0f}/s to the feed "
                      f"({result.omnirelay_ack_rate:.0f}/s acknowledged), ratio "
                      f"{result.ratio:.2f}; CPU per message {result.sink_cpu_ms:.3f} vs "
                      f"{result.omnirelay_cpu_ms:.3f} ms, ratio {result.cpu_ratio:.2f}",
                      flush=True)
    finally:
        daemon.stop()
        sink.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    return results


def render(results: list[Result], args: argparse.Namespace) -> str:
    """The docs section (markdown)."""
    rows = "\n".join(
        f"| {r.label} | {r.count} x {args.rounds} | {r.sink_rate:.0f} | "
        f"{r.omnirelay_rate:.0f} | {r.omnirelay_ack_rate:.0f} | **{r.ratio:.2f}** | "
        f"{r.sink_cpu_ms:.3f} / {r.omnirelay_cpu_ms:.3f} | {r.cpu_ratio:.2f} |"
        for r in results)
    cpu = platform.processor() or platform.machine()
    return textwrap.dedent(f"""\
        {SECTION}

        `bench/smtp_ingest.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {cpu},
        Python {platform.python_version()}): {args.senders} concurrent senders in one
        aiosmtplib process, either each keeping one session open (a relay with a backlog) or
        opening a connection per message (mail from many servers); each server in its own
        process on 127.0.0.1, on uvloop. The baseline is aiosmtpd whose handler
        answers 250 and keeps nothing. omnirelay counts a message when it is in the feed
        (`GET /v1/events` long-poll), i.e. parsed, committed to SQLite (`synchronous =
        FULL`) and visible to a help desk; "250/s" is the rate of acknowledgements. Rounds
        alternate between the two servers; the rate is the best round, CPU per message
        (user + system, all threads, from /proc) the median round.

        <<header>>
        <<rows>>

        <<verdict>>

        Where a 2 KB message's CPU goes in omnirelay (py-spy on the daemon, one session per
        sender): aiosmtpd's own protocol work, about what the whole sink spends; the MIME
        parse, about 0.07 ms; the store's ingest (customer and conversation resolution, the
        batch's multi-row inserts, the event); the `ingest.stored` log line; and serving
        the feed to the consumer. What changed, from a first measurement of ratio 0.15
        (about 650 msg/s, 2 KB, sessions):

        - The parser uses the stdlib's `compat32` feed parser and decodes only the headers
          it uses, with its own charset handling: 0.9 ms → about 0.09 ms per 2 KB message.
          A single-part message (most customer mail) no longer goes through the feed
          parser at all: its header lines are split and stored the way the feed parser
          stores them, and the body becomes the payload as it is (0.08 → 0.07 ms); anything
          unusual takes the full parse, and a test holds the fast path to the feed parser's
          result on the corpus and on mutated mail. Messages up to 64 KiB are parsed on the
          loop (cheaper than a thread hop); larger ones in a thread.
        - `MAIL FROM`/`RCPT TO` paths are matched by a regular expression in our aiosmtpd
          subclass (aiosmtpd parses each with the RFC 5322 header grammar and defines a
          `typing.Protocol` class per call); anything unusual still goes to aiosmtpd's parser,
          and a test checks both give the same answer.
        - The store (see the API section): a batch looks up its provider ids in one query
          and writes its rows with one multi-row `INSERT` per table; the writer no longer
          waits for the fsync (a syncer thread does, and answers callers after it); the
          checkpoints run on their own thread; the feed's newest events are served from
          memory, so the consumer's long-poll costs no database read. In this benchmark
          the 20 senders each wait for their 250, so the time a message waits for its
          commit is what limits the rate: instrumented, that wait was about 5 ms of a
          7 to 8 ms cycle before these changes.
        - JSON log lines are written as the bytes orjson makes (no decode and re-encode),
          and the secret-field check is cached per key: 8.7 → 6.3 µs per line.
        - Not done: committing the raw bytes first and normalizing after the 250. It takes
          the parse off the acknowledgement path, not off the CPU, so messages per second
          into the feed would not rise; and a message would then reach the feed after its
          250, where today the 250 means it is already there.

        Run it with `.venv/bin/python bench/smtp_ingest.py --write-docs` (add
        `--py-spy PATH` to profile the daemon while it takes each batch).
        """).replace("<<rows>>", rows).replace("<<header>>", _HEADER).replace(
        "<<verdict>>", verdict(results))


def verdict(results: list[Result]) -> str:
    """One sentence on the 2 KB target, from this run's numbers."""
    small = [r for r in results if r.label.startswith("2 KB")]
    parts = [f"{r.label.removeprefix('2 KB, ')}: **{r.ratio:.2f}**" for r in small]
    met = all(r.ratio >= 0.5 for r in small)
    some = any(r.ratio >= 0.5 for r in small)
    state = "met" if met else ("met for one kind of traffic only" if some else "missed")
    return (f"Target: ratio ≥ 0.5 for 2 KB messages — {state} ({'; '.join(parts)}). "
            "The rates move with the load of the shared machine; the CPU ratio (same "
            "work, measured per message) is the steadier figure.")


_HEADER = ("| size | messages x rounds | sink msg/s | omnirelay msg/s (to the feed) | "
           "omnirelay 250/s | ratio | CPU ms/msg sink / omnirelay | CPU ratio |\n"
           "|---|---|---|---|---|---|---|---|")


def write_docs(section: str) -> None:
    """Replace (or append) only this section of docs/benchmarks.md."""
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    """Parse arguments and run (or serve the sink when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--small", type=int, default=3000, help="2 KB messages per round")
    parser.add_argument("--large", type=int, default=300, help="200 KB messages per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the daemon with this py-spy")
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return 0
    import uvloop

    results = uvloop.run(run(args))
    section = render(results, args)
    print(section)
    if args.write_docs:
        write_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
