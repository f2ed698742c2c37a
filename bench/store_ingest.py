"""Store-level ingest microbenchmark: CPU per message and bytes per message.

Usage (from the repository root)::

    .venv/bin/python bench/store_ingest.py [--messages 20000] [--rounds 3] [--text real]

Stores ``--messages`` API-channel messages (a ~300-byte text, the API channel's raw JSON
payload, senders from a pool of ``messages // 10``) through ``SQLiteStore.ingest`` in
concurrent waves of 256 (the writer batches them as under load), synchronous FULL, into a
fresh database per round. Reports the process CPU time (every thread: event loop, writer,
syncer, checkpointer) per message, the lowest of ``--rounds`` (the machine is shared: the
lowest is the least disturbed), and the database's bytes per message, per table and index
(SQLite's ``dbstat``), after a clean close.

``--text bench`` uses bench/api_ingest.py's texts (46 words); ``--text real`` (default)
sentences cut from the GPL's text, which compress like prose. Run it with another checkout
on ``PYTHONPATH`` to compare versions: it uses only the store's public methods.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gateway.config import StoreConfig  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402
from normalizer.model import InboundMessage, Party  # noqa: E402

PROSE = Path("/usr/share/common-licenses/GPL-3")


def make_texts(kind: str, count: int, rng: random.Random) -> list[str]:
    """``count`` texts of about 300 bytes."""
    if kind == "bench" or not PROSE.exists():
        import api_ingest
        return api_ingest.texts(rng, count)
    words = PROSE.read_text().split()
    out = []
    for _ in range(count):
        start = rng.randrange(len(words) - 80)
        text = ""
        for word in words[start:]:
            if len(text) > 300:
                break
            text += word + " "
        out.append(text.strip())
    return out


def inbound(n: int, sender: int, text: str) -> InboundMessage:
    """What the API channel hands the store for one posted message."""
    provider_id = f"m-{n:09d}"
    external, name, email = f"cust-{sender}", f"Customer {sender}", f"cust-{sender}@example.com"
    raw = orjson.dumps({"message_id": provider_id,
                        "from": {"id": external, "name": name, "email": email}, "text": text})
    return InboundMessage(channel="api", account="default", provider_message_id=provider_id,
                          sender=Party("external", external, name),
                          linked_identities=[Party("email", email)], text=text, raw=raw,
                          raw_content_type="application/json")


async def one_round(folder: Path, messages: list[InboundMessage]) -> float:
    """Ingest every message into a fresh store; return the process CPU seconds it took."""
    config = StoreConfig(url=f"sqlite:///{folder}/s.db", data_dir=folder)
    store = SQLiteStore(config)
    await store.open()
    started = time.process_time()
    for start in range(0, len(messages), 256):
        await asyncio.gather(*(store.ingest(m, []) for m in messages[start:start + 256]))
    used = time.process_time() - started
    await store.close()
    return used


def compression_cpu(db: Path, messages: int) -> float | None:
    """CPU seconds per message that compressing a batch's values takes on its own (what
    ``BatchRows`` hands ``compact.pack_many``: each message's JSON, its events' stored
    bodies, its raw payload), lowest of 7 passes; None before compact storage."""
    try:
        from gateway.store import compact
    except ImportError:
        return None
    conn = sqlite3.connect(db)
    try:
        json_values = [compact.unpack_bytes(r[0]) for table, column in (
            ("messages", "data"), ("events", "body"))
            for r in conn.execute(f"SELECT {column} FROM {table}")]
        raw_values = [compact.unpack_bytes(r[0])
                      for r in conn.execute("SELECT body FROM raw_payloads")]
    finally:
        conn.close()
    best = float("inf")
    for _ in range(7):
        started = time.thread_time()
        for start in range(0, len(json_values), 768):
            compact.pack_many(json_values[start:start + 768])
        for start in range(0, len(raw_values), 256):
            compact.pack_many(raw_values[start:start + 256], compact.LEVEL_RAW)
        best = min(best, time.thread_time() - started)
    return best / messages


def bytes_per_table(db: Path, messages: int) -> list[tuple[str, float]]:
    """(table or index, bytes per message) from dbstat, biggest first."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name "
                            "ORDER BY 2 DESC").fetchall()
    finally:
        conn.close()
    return [(name, size / messages) for name, size in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--text", choices=("real", "bench"), default="real")
    args = parser.parse_args()
    rng = random.Random(7)
    texts = make_texts(args.text, 512, rng)
    senders = max(1, args.messages // 10)
    messages = [inbound(n, rng.randrange(senders), texts[n % len(texts)])
                for n in range(args.messages)]
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="store-ingest-") as tmp:
        for round_ in range(args.rounds):
            folder = Path(tmp) / f"r{round_}"
            folder.mkdir()
            best = min(best, asyncio.run(one_round(folder, messages)))
        db = Path(tmp) / "r0" / "s.db"
        size = db.stat().st_size
        print(f"CPU per message: {1e6 * best / args.messages:.1f} µs (lowest of "
              f"{args.rounds} rounds of {args.messages:,})")
        print(f"database: {size:,} bytes, {size / args.messages:,.0f} bytes per message")
        codec = compression_cpu(db, args.messages)
        if codec is not None:
            print(f"of which compression alone: {1e6 * codec:.1f} µs per message")
        for name, per_message in bytes_per_table(db, args.messages):
            if per_message >= 1:
                print(f"  {name:40s} {per_message:8.1f}")


if __name__ == "__main__":
    main()
