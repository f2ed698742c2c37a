"""Twilio webhook ingest benchmark: signed SMS webhooks into omnirelay vs a bare aiohttp route.

Usage (from the repository root; wrk from ``scripts/setup --test``)::

    .venv/bin/python bench/twilio_ingest.py [--duration 10] [--warmup 2] [--concurrency 50]
        [--messages 150000] [--customers 5000] [--no-pin]

Built like ``bench/api_ingest.py`` (whose helpers it imports): in the same run and one
after the other, wrk (``bench/wrk_twilio.lua``, one thread, 50 keep-alive connections)
posts Twilio incoming-message webhooks to

* a bare aiohttp app (uvloop) on the same route that reads the body and answers the empty
  TwiML, doing no work: the baseline;
* ``omnirelay run`` with one ``twilio`` account (logging at ``info``: one ``ingest.stored``
  line per message, synchronous FULL), which checks each ``X-Twilio-Signature`` with the
  twilio library's RequestValidator, parses the form, stores the message (customers from a
  pool of ``--customers`` numbers, so they repeat) and answers only after the commit.

wrk cannot compute HMAC-SHA1, so every request body is precomputed here: one form per
message (a distinct MessageSid, a ~160-character SMS text, all the fields Twilio sends) with
its signature over ``public_url`` + the route. The load generator is pinned to CPU 0 and
the server to CPU 1. After the daemon stopped, the database must hold at least as many of
these messages as were acknowledged. The ratio of the two msgs/s is the figure (the machine
is shared; the run waits, bounded, for the other processes to go quiet and reports what they
used). Results go to ``bench/results/twilio_ingest-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_ingest import free_port, log, pin, serve_bare, system_ticks, texts, wait_quiet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ACCOUNT = "bench"
ROUTE = f"/hooks/twilio/{ACCOUNT}/messages"
PUBLIC_URL = "https://sms.bench.example"
SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
TOKEN = "bench-admin-token-0123456789"
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def bodies_file(path: Path, messages: int, customers: int, seed: int) -> None:
    """One ``signature<TAB>form body`` line per message, signed as Twilio signs."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(AUTH_TOKEN)
    rng = random.Random(seed)
    pool = texts(rng, 256, size=160)
    run = f"{os.getpid():x}{int(time.time()):x}"
    with path.open("w") as out:
        for n in range(messages):
            sid = f"SM{run}{n:012d}".ljust(34, "0")[:34]
            number = f"+1555{rng.randrange(customers):07d}"
            fields = {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid,
                      "NumMedia": "0", "ToCity": "", "FromZip": "", "SmsSid": sid,
                      "FromState": "NY", "SmsStatus": "received", "FromCity": "",
                      "Body": pool[n % len(pool)], "FromCountry": "US", "To": "+15550001111",
                      "MessagingServiceSid": "", "ToZip": "", "NumSegments": "2",
                      "MessageSid": sid, "AccountSid": SID, "From": number,
                      "ApiVersion": "2010-04-01"}
            signature = validator.compute_signature(PUBLIC_URL + ROUTE, fields)
            out.write(f"{signature}\t{urlencode(fields)}\n")


def bare_main(port: int) -> None:
    """The baseline: the same route, reads the body, answers the empty TwiML."""
    from aiohttp import web

    serve_bare(port, ROUTE, lambda: web.Response(
        body=TWIML, headers={"Content-Type": "text/xml; charset=utf-8"}))


def config_text(data_dir: Path, port: int) -> str:
    """One twilio account, logging at info (the daemon's default), synchronous FULL."""
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{port}"
        public_url = "{PUBLIC_URL}"
        [store]
        url = "sqlite:///{data_dir}/omnirelay.db"
        data_dir = "{data_dir}"
        default_region = "US"
        [logging]
        level = "info"
        format = "json"
        [[tokens]]
        name = "bench"
        token = "{TOKEN}"
        scopes = ["admin"]
        [[channels]]
        type = "twilio"
        name = "{ACCOUNT}"
        account_sid = "{SID}"
        auth_token = "{AUTH_TOKEN}"
        from = "+15550001111"
        api_base_url = "http://127.0.0.1:9"
        """)


def wait_ready(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    """Until the port answers (any HTTP status), or the process died."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the bare app has no /readyz: it answered, so it listens
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} not ready in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own child by pid and wait for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(args: argparse.Namespace, port: int, bodies: Path, work: Path, tag: str,
            load_cpu: int | None, server_pid: int) -> dict[str, Any]:
    """A warm-up and a measured wrk run; the measured one's numbers, both runs' 2xx.

    Also the server's CPU seconds per answered request in the measured run: on a shared
    machine the server may not get its core, and CPU per message does not depend on that.
    """
    results: list[dict[str, Any]] = []
    cpu = 0.0
    for phase, seconds in (("warmup", args.warmup), ("measured", args.duration)):
        if seconds <= 0:
            continue
        cpu = process_cpu_seconds(server_pid)
        out = work / f"{tag}-{phase}.json"
        subprocess.run(["wrk", "-t1", f"-c{args.concurrency}", f"-d{seconds:g}s", "--timeout",
                        "30s", "--latency", "-s", str(ROOT / "bench" / "wrk_twilio.lua"),
                        f"http://127.0.0.1:{port}{ROUTE}", "--", str(bodies),
                        # past what the warm-up completed and what it left in flight
                        str(sum(r["requests"] + args.concurrency for r in results))],
                       check=True, stdout=subprocess.DEVNULL, preexec_fn=pin(load_cpu),
                       env={**os.environ, "WRK_RESULT": str(out)})
        results.append(json.loads(out.read_text()))
        cpu = process_cpu_seconds(server_pid) - cpu
    measured = results[-1]
    seconds = measured["duration_us"] / 1e6
    return {"rate": measured["ok"] / seconds,
            "server_cpu_ms_per_msg": round(cpu * 1000 / max(1, measured["ok"]), 3),
            "server_cpu_share": round(cpu / seconds, 2) if seconds else 0.0,
            "p50_ms": measured["p50_us"] / 1000,
            "p99_ms": measured["p99_us"] / 1000, "max_ms": measured["max_us"] / 1000,
            "statuses": measured["statuses"], "errors": measured["errors"],
            "sent": sum(r["requests"] + args.concurrency for r in results),
            "acked": sum(r["ok"] for r in results)}


def measure(args: argparse.Namespace, what: str, start: Any, bodies: Path, work: Path,
            pins: tuple[int | None, int | None]) -> dict[str, Any]:
    """Start a server, load it, stop it; with the CPU the rest of the machine used."""
    other = wait_quiet(args.quiet_wait)
    port = free_port()
    proc = start(port)
    try:
        busy0, total0 = system_ticks()
        result = run_wrk(args, port, bodies, work, what, pins[0], proc.pid)
        busy1, total1 = system_ticks()
    finally:
        stop(proc)
    result["machine_busy_cores"] = round((busy1 - busy0) / max(1, total1 - total0)
                                         * (os.cpu_count() or 1), 2)
    result["other_before_cores"] = round(other, 2)
    log(f"{what}: {result['rate']:,.0f} msgs/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, server CPU {result['server_cpu_ms_per_msg']} ms/msg "
        f"({result['server_cpu_share']:.0%} of a core), statuses {result['statuses']}")
    return result


def main() -> int:
    """Parse arguments, run bare then omnirelay, print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "bare"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--messages", type=int, default=150_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quiet-wait", type=float, default=20.0)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    if args.role == "bare":
        bare_main(args.port)
        return 0
    pins: tuple[int | None, int | None] = (None, None) if args.no_pin or \
        (os.cpu_count() or 1) < 2 else (0, 1)
    with tempfile.TemporaryDirectory(prefix="twilio-bench-") as tmp:
        work = Path(tmp)
        bodies = work / "bodies.tsv"
        started = time.monotonic()
        bodies_file(bodies, args.messages, args.customers, args.seed)
        log(f"{args.messages:,} signed bodies in {time.monotonic() - started:.1f} s")

        def start_bare(port: int) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen([sys.executable, __file__, "--role", "bare", "--port",
                                     str(port)], cwd=ROOT, preexec_fn=pin(pins[1]))
            wait_ready(proc, port, "bare app")
            return proc

        data = work / "data"

        def start_daemon(port: int) -> subprocess.Popen[bytes]:
            data.mkdir(exist_ok=True)
            config = work / "omnirelay.toml"
            config.write_text(config_text(data, port))
            env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIRELAY_")}
            with (work / "daemon.log").open("ab") as logfile:
                proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                         str(config)], cwd=ROOT, env=env, stdout=logfile,
                                        stderr=subprocess.STDOUT, preexec_fn=pin(pins[1]))
            wait_ready(proc, port, "omnirelay")
            return proc

        bare = measure(args, "bare aiohttp", start_bare, bodies, work, pins)
        daemon = measure(args, "omnirelay (signed Twilio webhooks)", start_daemon, bodies, work,
                         pins)
        with sqlite3.connect(data / "omnirelay.db") as db:
            stored = db.execute("SELECT count(*) FROM messages WHERE account = ?",
                                (ACCOUNT,)).fetchone()[0]
    daemon["stored"] = stored
    ratio = daemon["rate"] / bare["rate"] if bare["rate"] else 0.0
    cpu_ratio = bare["server_cpu_ms_per_msg"] / max(1e-9, daemon["server_cpu_ms_per_msg"])
    ok = stored >= daemon["acked"] and daemon["sent"] <= args.messages
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
              "bare": bare, "omnirelay": daemon, "ratio": round(ratio, 3),
              "cpu_ratio": round(cpu_ratio, 3),
              "durable": stored >= daemon["acked"],
              "all_distinct": daemon["sent"] <= args.messages}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"twilio_ingest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"bare {bare['rate']:,.0f} msgs/s | omnirelay {daemon['rate']:,.0f} msgs/s | "
          f"ratio {ratio:.2f} (CPU per message: {cpu_ratio:.2f}) | "
          f"acked {daemon['acked']:,}, stored {stored:,} | {out}")
    if daemon["sent"] > args.messages:
        print(f"NOT VALID: wrk sent {daemon['sent']:,} requests but only {args.messages:,} "
              "distinct bodies exist, so some were repeats (answered as duplicates, cheaper "
              f"than new messages); run again with --messages {daemon['sent'] * 3 // 2:,}",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
