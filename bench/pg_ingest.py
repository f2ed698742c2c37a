"""Ingest throughput with one, two and three instances on one PostgreSQL against the SQLite
single instance, in the same run.

Usage (from the repository root; needs Debian's postgresql)::

    .venv/bin/python bench/pg_ingest.py [--messages 6000] [--instances 1,2,3]

Each instance is a process with its own store (``PostgresStore``, or ``SQLiteStore`` for
the baseline) ingesting its share of ``--messages`` API-channel messages through
``store.ingest`` in concurrent waves of 256, as under load (bench/store_ingest.py's
messages: ~300-byte texts, senders from one pool shared by all instances, so customers
meet on several instances). Every instance opens its store first, then all start at once;
throughput is all messages over the time from the start to the last instance's end.

The server is started here (initdb into a temporary directory, 127.0.0.1, random port)
with durable settings (fsync on, synchronous_commit on), as SQLite's synchronous FULL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import store_ingest  # noqa: E402

from gateway.config import StoreConfig  # noqa: E402


async def worker(url: str, data_dir: Path, first: int, count: int, senders: int) -> None:
    """One instance: open, say ready, wait for go, ingest, report."""
    from gateway.store.select import make_store
    rng = random.Random(first)
    texts = store_ingest.make_texts("real", 256, rng)
    messages = [store_ingest.inbound(n, rng.randrange(senders), texts[n % len(texts)])
                for n in range(first, first + count)]
    store = make_store(StoreConfig(url=url, data_dir=data_dir))
    await store.open()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.time()
    cpu = time.process_time()
    for start in range(0, len(messages), 256):
        await asyncio.gather(*(store.ingest(m, []) for m in messages[start:start + 256]))
    ended = time.time()
    cpu = time.process_time() - cpu
    await store.close()
    print(json.dumps({"started": started, "ended": ended, "cpu": cpu}), flush=True)


def run_config(url: str, instances: int, messages: int, data_dir: Path) -> dict[str, float]:
    """Start ``instances`` workers on one store; return msgs/s and CPU per message."""
    share = messages // instances
    procs = []
    for i in range(instances):
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", url, "--first", str(i * share),
             "--count", str(share), "--senders", str(max(1, messages // 10)),
             "--data-dir", str(data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"worker failed to start: {line!r}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        results.append(json.loads(out.strip().splitlines()[-1]))
    started = min(r["started"] for r in results)
    ended = max(r["ended"] for r in results)
    total = share * instances
    return {"msgs_per_s": total / (ended - started),
            "cpu_ms_per_msg": 1000 * sum(r["cpu"] for r in results) / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--worker")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker, Path(args.data_dir), args.first, args.count,
                           args.senders))
        return

    from tests.postgres.server import running_server
    print(f"{args.messages} messages per configuration, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f} at start)")
    with (tempfile.TemporaryDirectory(prefix="pg-ingest-") as tmp,
          running_server(durable=True) as server):
        rows = []
        sqlite_url = f"sqlite:///{tmp}/baseline.db"
        rows.append(("SQLite, 1 instance", run_config(sqlite_url, 1, args.messages,
                                                      Path(tmp) / "s")))
        for count in (int(n) for n in args.instances.split(",")):
            url = server.new_database()
            rows.append((f"PostgreSQL, {count} instance{'s' if count > 1 else ''}",
                         run_config(url, count, args.messages, Path(tmp) / f"p{count}")))
        base = rows[0][1]["msgs_per_s"]
        print(f"{'configuration':<26} {'msgs/s':>8} {'vs SQLite':>10} {'CPU ms/msg':>11}")
        for name, row in rows:
            print(f"{name:<26} {row['msgs_per_s']:>8.0f} {row['msgs_per_s'] / base:>9.2f}x "
                  f"{row['cpu_ms_per_msg']:>11.2f}")


if __name__ == "__main__":
    main()
