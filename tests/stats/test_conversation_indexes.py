"""Every filter of GET /v1/conversations is served by an index, never a scan of the table."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from gateway.store import queries
from gateway.store.migrate import apply_migrations


@pytest.mark.parametrize("filters", [
    {"channel": "api"}, {"account": "crm"}, {"tag": "refund"}, {"queue": "billing"},
    {"assignee": "a-1"}, {"updated_since": "2026-11-01T00:00:00.000Z"},
    {"status": "open"}, {"customer_id": "cus_1"},
])
def test_each_filter_uses_an_index(filters: dict[str, Any]) -> None:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    apply_migrations(conn)
    conn.execute("INSERT INTO customers (id, created_at, updated_at) VALUES ('cus_1', '', '')")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    status = filters.pop("status", None)
    customer = filters.pop("customer_id", None)
    queries.list_conversations(conn, status, customer, None, 100, **filters)
    conn.set_trace_callback(None)
    [listing] = [s for s in statements if s.startswith("SELECT c.*")]
    plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + listing))
    assert "SCAN" not in plan, plan
    if customer is None:  # a customer's few conversations may be sorted in memory
        assert "TEMP B-TREE" not in plan, plan


def test_updated_since_finds_the_first_event_at_that_time_across_gaps() -> None:
    conn = sqlite3.connect(":memory:")
    apply_migrations(conn)
    times = {1: "2026-11-01T00:00:00.000Z", 2: "2026-11-01T00:00:00.000Z",
             5: "2026-11-02T10:00:00.000Z", 9: "2026-11-03T00:00:00.000Z"}
    for seq, created in times.items():  # gaps: erasures and purges leave holes
        conn.execute("INSERT INTO events (seq, id, type, created_at, body) VALUES "
                     "(?, ?, 'x', ?, x'')", (seq, f"evt_{seq}", created))
    first = queries._first_seq_at
    assert first(conn, "2026-10-01T00:00:00.000Z") <= 1
    assert first(conn, "2026-11-01T00:00:00.000Z") <= 1
    assert 3 <= first(conn, "2026-11-01T00:00:00.001Z") <= 5
    assert 6 <= first(conn, "2026-11-02T10:00:00.001Z") <= 9
    assert first(conn, "2026-11-03T00:00:00.001Z") > 9
