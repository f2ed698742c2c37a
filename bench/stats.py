"""How long ``GET /v1/stats`` takes for a month of 1,000,000 messages.

    .venv/bin/python bench/stats.py [--messages 1000000] [--days 30] [--agents 20]

Builds (once, cached under ``bench/results/``) a store whose aggregates hold a month of
help-desk traffic: conversations of 2-6 customer messages answered by one of ``--agents``
agents (some replies failing, some conversations reopened, acknowledgements and surveys
sent, CSAT answers), over two accounts. The events go through the same function the
store calls as it writes them (``gateway.store.jobs.stats.apply_event``), one transaction
per 20,000. Then times the stats of the whole month (as the API computes them) for each
``group_by``, best of three, and a bare baseline in the same run: reading the month's rows
of ``stat_buckets`` without computing anything.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.stats.query import StatsQuery, compute_stats  # noqa: E402
from gateway.store.jobs.stats import BUCKET_SECONDS, apply_event  # noqa: E402
from gateway.store.migrate import apply_migrations  # noqa: E402

RESULTS = ROOT / "bench" / "results"
START = 1_793_491_200  # 2026-11-01 00:00 UTC


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build(path: Path, messages: int, days: int, agents: int, seed: int = 7) -> None:
    """A month of traffic, through the aggregates' write path."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    apply_migrations(conn)
    span = days * 86_400
    # (time, order, event type, data): generated per conversation, applied in time order.
    plan: list[tuple[float, int, str, dict[str, Any]]] = []
    made = n = 0
    customers = max(1, messages // 8)
    while made < messages:
        n += 1
        cid = f"cnv_{n:09d}"
        account = "smartstore" if n % 3 else "default"
        channel = "navertalk" if n % 3 else "email"
        conv = {"id": cid, "channel": channel, "account": account, "assignee": None}
        customer = f"cus_{rng.randrange(customers):09d}"
        agent = {"id": f"a-{rng.randrange(agents)}", "name": None}
        t = START + rng.random() * (span - 86_400)
        events: list[tuple[float, str, dict[str, Any]]] = [
            (t, "conversation.opened", {"conversation": conv})]
        mid = 0

        def message(direction: str, status: str, who: Any = None, automatic: Any = None,
                    cid: str = cid, channel: str = channel, account: str = account,
                    customer: str = customer) -> dict[str, Any]:
            nonlocal mid
            mid += 1
            return {"id": f"msg_{cid}_{mid}", "conversation_id": cid, "customer_id": customer,
                    "channel": channel, "account": account, "direction": direction,
                    "status": status, "agent": who, "automatic": automatic}
        events.append((t + 1, "message.status",
                       {"message": message("outbound", "sent", None, "acknowledgement")}))
        for _ in range(rng.randint(1, 3)):
            for _ in range(rng.randint(1, 2)):
                events.append((t, "message.received", {
                    "message": message("inbound", "received"), "conversation": conv}))
                made += 1
                t += rng.expovariate(1 / 120)
            t += rng.expovariate(1 / 1800)
            if rng.random() < 0.05:
                events.append((t, "message.status",
                               {"message": message("outbound", "failed", agent)}))
                t += 60
            events.append((t, "message.status", {"message": message("outbound", "sent",
                                                                        agent)}))
            made += 1
            t += rng.expovariate(1 / 3600)
        events.append((t, "conversation.closed", {"conversation": conv, "agent": agent}))
        if rng.random() < 0.1:
            t += rng.expovariate(1 / 7200)
            events.append((t, "conversation.reopened", {"conversation": conv, "agent": None}))
            events.append((t, "message.received", {
                "message": message("inbound", "received"), "conversation": conv}))
            t += rng.expovariate(1 / 1800)
            events.append((t, "message.status", {"message": message("outbound", "sent",
                                                                        agent)}))
            events.append((t + 600, "conversation.closed", {"conversation": conv,
                                                            "agent": agent}))
            made += 2
            t += 600
        events.append((t + 60, "message.status",
                       {"message": message("outbound", "sent", None, "survey")}))
        if rng.random() < 0.3:
            events.append((t + 900, "conversation.updated", {
                "conversation": conv, "agent": None, "changes": {"csat": {
                    "from": None, "to": {"score": rng.randint(1, 5), "agent": agent}}}}))
        plan += [(at, len(plan) + i, kind, data) for i, (at, kind, data) in enumerate(events)]
    plan.sort(key=lambda item: (item[0], item[1]))
    log(f"build: {made:,} messages in {n:,} conversations, {len(plan):,} events")
    started = time.monotonic()
    for start in range(0, len(plan), 20_000):
        conn.execute("BEGIN")
        for at, _order, kind, data in plan[start:start + 20_000]:
            apply_event(conn, kind, data, at)
        conn.execute("COMMIT")
        if start % 200_000 == 0:
            log(f"build: {start:,}/{len(plan):,} events ({time.monotonic() - started:.0f} s)")
    per_event = (time.monotonic() - started) / len(plan) * 1e6
    log(f"build: done, {per_event:.0f} us an event")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    tmp.replace(path)


def timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"stats-{args.messages}-{args.days}d-{args.agents}a.db"
    if not path.exists():
        build(path, args.messages, args.days, args.agents)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    end = START + args.days * 86_400
    rows = {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("stat_buckets", "stat_durations", "stat_open", "stat_writers")}
    samples = conn.execute("SELECT SUM(LENGTH(frt) + LENGTH(response) + LENGTH(resolution)) "
                           "/ 8 FROM stat_durations").fetchone()[0]
    log(f"store: {path.stat().st_size / 1e6:.0f} MB, rows {rows}, "
        f"{samples:,} duration samples")
    span = (START // BUCKET_SECONDS, end // BUCKET_SECONDS)
    baseline = timed(lambda: (
        conn.execute("SELECT * FROM stat_buckets WHERE bucket >= ? AND bucket < ?",
                     span).fetchall(),
        conn.execute("SELECT * FROM stat_durations WHERE bucket >= ? AND bucket < ?",
                     span).fetchall()))
    print(f"baseline (read the month's counter and duration rows): {baseline * 1000:.0f} ms")
    for group_by in (None, "channel", "account", "agent", "day"):
        query = StatsQuery(START, end, group_by, "Asia/Seoul")
        seconds = timed(lambda query=query: compute_stats(conn, query))
        answer = compute_stats(conn, query)
        total = sum(g["conversations_created"] for g in answer["groups"])
        print(f"group_by={group_by}: {seconds * 1000:.0f} ms "
              f"({len(answer['groups'])} groups, {total:,} conversations)")
    conn.close()


if __name__ == "__main__":
    main()
