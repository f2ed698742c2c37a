"""``omnirelay migrate --from URL --to URL``: move a store between SQLite and PostgreSQL.

Every row is copied as it is: ids, event seqs (a help desk's cursor goes on working),
outbox and delivery ids, webhook cursors, checkpoints, the compact values with the
dictionaries they were packed with. Attachment bytes: SQLite keeps them as files under
``<data_dir>/blobs``, PostgreSQL in its ``blobs`` table (migration 0011); they are carried
from the one to the other (``blob_dir``: the SQLite end's, by default ``blobs`` beside its
database file).

- The target is migrated to the current schema first and must hold no data: a store is
  never merged into another. A source column the target has no place for is an error
  (nothing is dropped silently).
- Resumable: each chunk is inserted in one transaction with the position it reached
  (``transfer_progress`` in the target); a copy run again after an interruption goes on
  from there. The table goes when the copy is complete and checked (row counts).
- On PostgreSQL the identity sequences and ``feed_head`` are set past the copied rows.
- Progress goes to stderr on a TTY.

Stop the daemons first: a source that changes during the copy is not a consistent copy.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import StoreError

# Parents before children (conversations need customers, messages conversations), each
# with the key it is read in order of.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codec_dictionaries", ("id",)),
    ("customers", ("id",)),
    ("identities", ("kind", "address")),
    ("conversations", ("id",)),
    ("messages", ("id",)),
    ("attachments", ("id",)),
    ("raw_payloads", ("message_id",)),
    ("events", ("seq",)),
    ("outbox", ("seq",)),
    ("idempotency_keys", ("scope", "key")),
    ("webhook_cursors", ("subscription",)),
    ("webhook_deliveries", ("id",)),
    ("checkpoints", ("key",)),
    ("pending_fetches", ("id",)),
    # Automation's dedupe keys and the metrics' aggregates (migrations 0008, 0009). Not
    # conversation_tags: the target's triggers fill it as the conversations go in.
    ("automatic_sends", ("key",)),
    ("stat_buckets", ("bucket", "channel", "account", "agent")),
    ("stat_durations", ("bucket", "channel", "account", "agent")),
    ("stat_open", ("bucket", "channel", "account", "agent")),
    ("stat_open_days", ("day", "channel", "account", "agent")),
    ("stat_writers", ("bucket", "channel", "account", "customer")),
    ("stat_conversations", ("id",)),
)
# Columns one backend has and the other does not need (PostgreSQL's claim leases).
ENGINE_ONLY = {"lease_until"}
# PostgreSQL identity columns, set past the copied rows at the end.
SEQUENCES = (("outbox", "seq"), ("webhook_deliveries", "id"), ("pending_fetches", "id"))
CHUNK = 2000


class TransferError(StoreError):
    """The copy cannot start or go on (the message says why and what to do)."""


@dataclass
class Side:
    """One end of the copy: a connection speaking SQLite's spelling (``?``), either
    sqlite3's own or the PostgreSQL adapter."""

    url: str
    conn: Any
    backend: str

    def columns(self, table: str) -> list[str]:
        """The table's columns, in order."""
        if self.backend == "sqlite":
            return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]
        return [r[0] for r in self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]

    def binary_columns(self, table: str) -> set[str]:
        """Columns that hold bytes (PostgreSQL's bytea: SQLite text goes in as UTF-8)."""
        if self.backend == "sqlite":
            return set()
        return {r[0] for r in self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? AND data_type = 'bytea'", (table,))}

    def count(self, table: str) -> int:
        """Rows in a table."""
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def has_table(self, table: str) -> bool:
        """Whether the table exists."""
        if self.backend == "sqlite":
            return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                     "name = ?", (table,)).fetchone() is not None
        row = self.conn.execute("SELECT to_regclass(?)", (table,)).fetchone()
        return row is not None and row[0] is not None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def open_side(url: str) -> Side:
    """Connect to a store URL and bring its schema up to date."""
    if url.startswith("postgresql://"):
        from gateway.store.postgres.conn import Connection
        from gateway.store.postgres.migrate import apply_migrations as pg_migrate
        try:
            pg_conn = Connection.connect(url, application_name="omnirelay-migrate")
        except Exception as exc:
            raise TransferError(f"cannot connect to {_redact(url)}: {exc}") from exc
        pg_migrate(pg_conn)
        return Side(url, pg_conn, "postgresql")
    if url.startswith("sqlite:///"):
        from gateway.config import StoreConfig
        from gateway.store.migrate import apply_migrations
        path = StoreConfig(url=url).sqlite_path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # a new file (see engine.py)
        conn.execute("PRAGMA journal_mode = WAL")
        apply_migrations(conn)
        return Side(url, conn, "sqlite")
    raise TransferError(f"unsupported store URL {url.split(':', 1)[0]!r}: "
                        "sqlite:///path.db or postgresql://…")


def transfer(source_url: str, target_url: str, *, progress: TextIO | None = None,
             chunk: int = CHUNK, stop_after: int | None = None,
             blob_dir: Path | None = None) -> dict[str, int]:
    """Copy the store at ``source_url`` into the empty (or half-copied) one at
    ``target_url``; return the rows per table (and ``blobs``: attachment bytes carried
    between files and PostgreSQL's table). ``stop_after`` (tests): stop after that many
    chunks, as an interruption would."""
    if source_url == target_url:
        raise TransferError("--from and --to name the same store")
    source = open_side(source_url)
    try:
        target = open_side(target_url)
        try:
            return _copy(source, target, progress, chunk, stop_after, blob_dir)
        finally:
            target.close()
    finally:
        source.close()


class Interrupted(TransferError):
    """Raised by ``stop_after`` (tests): the copy stopped where a crash could."""


def _copy(source: Side, target: Side, progress: TextIO | None, chunk: int,
          stop_after: int | None, blob_dir: Path | None) -> dict[str, int]:
    resuming = target.has_table("transfer_progress")
    if not resuming:
        busy = [t for t, _k in TABLES if t != "codec_dictionaries" and target.count(t)]
        if busy:
            raise TransferError(f"the target {_redact(target.url)} is not empty ({', '.join(busy)}"
                                " hold rows): omnirelay migrate copies into an empty store only")
        target.conn.execute("CREATE TABLE transfer_progress (name TEXT PRIMARY KEY, "
                            "position TEXT, done INTEGER NOT NULL DEFAULT 0)")
    plans = []
    for table, key in TABLES:
        mine, theirs = source.columns(table), set(target.columns(table))
        lost = [c for c in mine if c not in theirs and c not in ENGINE_ONLY]
        if lost:
            raise TransferError(f"the target has no place for {table}.{', '.join(lost)}: "
                                "upgrade omnirelay where the target's migrations come from")
        plans.append((table, key, [c for c in mine if c in theirs]))
    counts: dict[str, int] = {}
    chunks = 0
    for table, key, columns in plans:
        total = source.count(table)
        state = target.conn.execute("SELECT position, done FROM transfer_progress WHERE "
                                    "name = ?", (table,)).fetchone()
        position: list[Any] | None = _decode(state[0]) if state and state[0] else None
        if state is not None and state[1]:
            counts[table] = total
            continue
        binary = target.binary_columns(table)
        copied = target.count(table) if position is not None else 0
        while True:
            rows = _read_chunk(source, table, key, columns, position, chunk)
            if rows:
                position = [rows[-1][columns.index(k)] for k in key]
            _write_chunk(target, table, columns, binary, rows, position, done=len(rows) < chunk)
            copied += len(rows)
            _show(progress, table, copied, total)
            chunks += 1
            if len(rows) < chunk:
                break
            if stop_after is not None and chunks >= stop_after:
                raise Interrupted(f"stopped after {chunks} chunks (as a crash would)")
        counts[table] = copied
    if source.backend != target.backend:
        counts.update(_carry_blobs(source, target, blob_dir, progress))
    _finish(source, target, counts)
    return counts


def _carry_blobs(source: Side, target: Side, blob_dir: Path | None,
                 progress: TextIO | None) -> dict[str, int]:
    """Every attachment's bytes from SQLite's files into PostgreSQL's ``blobs`` table, or
    back into files. Bytes already there are skipped, so a copy run again goes on; a file
    missing from the SQLite side is counted (``blobs_missing``) and left out."""
    from gateway.store.postgres import blobs

    sqlite_side = source if source.backend == "sqlite" else target
    folder = blob_dir or _sqlite_path(sqlite_side.url).parent / "blobs"
    digests = [r[0] for r in source.conn.execute(
        "SELECT DISTINCT sha256 FROM attachments ORDER BY sha256").fetchall()]
    carried = missing = 0
    for digest in digests:
        path = folder / digest[:2] / digest[2:4] / digest
        if source.backend == "sqlite":
            if path.is_file():
                blobs.copy_in(target.conn, digest, path)
            else:
                missing += 1
        elif not path.is_file():
            blobs.fill_cache(source.conn, digest, path)
            missing += not path.is_file()
        carried += 1
        _show(progress, "blobs", carried, len(digests))
    if missing and progress is not None:
        progress.write(f"{missing} attachment(s) had no bytes in {folder}: left out\n")
    return {"blobs": carried - missing, "blobs_missing": missing}


def _sqlite_path(url: str) -> Path:
    from gateway.config import StoreConfig
    return StoreConfig(url=url).sqlite_path


def _read_chunk(source: Side, table: str, key: tuple[str, ...], columns: list[str],
                after: Sequence[Any] | None, limit: int) -> list[tuple[Any, ...]]:
    names = ", ".join(columns)
    order = ", ".join(key)
    if after is None:
        sql = f"SELECT {names} FROM {table} ORDER BY {order} LIMIT ?"
        params: list[Any] = [limit]
    else:
        marks = ", ".join("?" * len(key))
        sql = (f"SELECT {names} FROM {table} WHERE ({order}) > ({marks}) "
               f"ORDER BY {order} LIMIT ?")
        params = [*after, limit]
    return [tuple(r) for r in source.conn.execute(sql, params).fetchall()]


def _write_chunk(target: Side, table: str, columns: list[str], binary: set[str],
                 rows: list[tuple[Any, ...]], position: Sequence[Any] | None,
                 done: bool) -> None:
    """Insert a chunk and record how far the table got, in one transaction."""
    fix: list[Callable[[Any], Any]] = [
        (_as_bytes if c in binary else (lambda v: None) if (table, c) == (
            "customers", "merged_into") else _same) for c in columns]
    conn = target.conn
    conn.execute("BEGIN")
    try:
        if rows:
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                   f"({', '.join('?' * len(columns))})")
            if table == "codec_dictionaries":  # the store may have added the built-in one
                sql = sql.replace("INSERT INTO", "INSERT OR IGNORE INTO")
            conn.executemany(sql, [tuple(f(v) for f, v in zip(fix, row, strict=True))
                                   for row in rows])
        conn.execute("INSERT INTO transfer_progress (name, position, done) VALUES (?, ?, ?) "
                     "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
                     "done = excluded.done",
                     (table, _encode(position) if position is not None else None, int(done)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _finish(source: Side, target: Side, counts: dict[str, int]) -> None:
    """Merged customers point at their survivors (copied first without: any order of
    creation), sequences and the feed head go past the copied rows, counts are checked,
    and the progress table goes."""
    conn = target.conn
    conn.execute("BEGIN")
    try:
        for row in source.conn.execute("SELECT id, merged_into FROM customers "
                                       "WHERE merged_into IS NOT NULL").fetchall():
            conn.execute("UPDATE customers SET merged_into = ? WHERE id = ?", (row[1], row[0]))
        if target.backend == "postgresql":
            for table, column in SEQUENCES:
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                             f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)")
            conn.execute("UPDATE feed_head SET seq = GREATEST(seq, "
                         "COALESCE((SELECT MAX(seq) FROM events), 0))")
        for table, _key in TABLES:
            have, want = target.count(table), source.count(table)
            if have < want or (table != "codec_dictionaries" and have != want):
                raise TransferError(f"{table}: {have} rows copied of {want}")
        conn.execute("DROP TABLE transfer_progress")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _same(value: Any) -> Any:
    return value


def _as_bytes(value: Any) -> Any:
    """SQLite keeps JSON written before compact storage as text: bytea takes bytes."""
    return value.encode() if isinstance(value, str) else value


def _encode(position: Sequence[Any]) -> str:
    import orjson
    return orjson.dumps(list(position)).decode()


def _decode(text: str) -> list[Any]:
    import orjson
    value: list[Any] = orjson.loads(text)
    return value


_last_shown = [0.0]


def _show(progress: TextIO | None, table: str, done: int, total: int) -> None:
    """A one-line progress bar (at most ten redraws a second)."""
    if progress is None:
        return
    now = time.monotonic()
    if done < total and now - _last_shown[0] < 0.1:
        return
    _last_shown[0] = now
    width = 30
    filled = width if total == 0 else min(width, width * done // max(total, 1))
    progress.write(f"\r{table:<20} [{'#' * filled}{'.' * (width - filled)}] "
                   f"{done:,}/{total:,}\033[K")
    if done >= total:
        progress.write("\n")
    progress.flush()


def _redact(url: str) -> str:
    """A URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


def default_progress() -> TextIO | None:
    """stderr when it is a terminal (no bar in logs and pipes)."""
    return sys.stderr if sys.stderr.isatty() else None


__all__ = ["TransferError", "default_progress", "transfer"]
