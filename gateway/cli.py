"""``omnirelay`` command line: run, migrate, check-config, backup, erase-customer, purge,
vacuum, report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TextIO

from gateway import __version__
from gateway.config import Config, embedded_default, load_config
from gateway.errors import ConfigErrors, OmnirelayError
from gateway.logging import configure_logging
from gateway.permissions import (
    PRIVATE_FILE_MODE,
    make_file_private,
    make_store_private,
    restrict_umask,
)

EX_CONFIG = 78
EX_PROBE_FAILED = 1
"""``check-config --online``: the file is valid, but an account failed its online check."""


def _config(args: argparse.Namespace, *, resolve_secrets: bool = True) -> Config:
    """The config of ``--config``/``$OMNIRELAY_CONFIG``, else the embedded default.

    Store-only commands pass ``resolve_secrets=False``: they run from an admin shell
    (``runuser -u omnirelay --``) where the unit's credentials are not available.
    """
    path = args.config or os.environ.get("OMNIRELAY_CONFIG")
    if path:
        return load_config(path, resolve_secrets=resolve_secrets)
    return embedded_default()


def _print_config_errors(exc: ConfigErrors, source: str) -> None:
    for error in exc.errors:
        print(f"{source}: {error}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    from gateway.daemon import run

    path = args.config or os.environ.get("OMNIRELAY_CONFIG")
    try:
        config = _config(args)
    except ConfigErrors as exc:
        _print_config_errors(exc, str(path or "<embedded default>"))
        return EX_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    loader = (lambda: load_config(path)) if path else None
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    return runner(run(config, config_loader=loader))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Report every error of a config file with its key, line and a hint; ``--online``:
    then check every account against its provider."""
    if args.online and not args.timeout > 0:
        print("omnirelay: --timeout must be a number of seconds above 0", file=sys.stderr)
        return 2
    try:
        config = load_config(args.file)
    except ConfigErrors as exc:
        _print_config_errors(exc, args.file)
        print(f"{args.file}: {len(exc.errors)} error(s)", file=sys.stderr)
        return EX_CONFIG
    for warning in config.warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    for note in _privileged_ports(config):
        print(f"{args.file}: note: {note}", file=sys.stderr)
    for channel in config.channels:  # what an account's type wants ops to see (allowed_ips)
        check_notes = getattr(channel.options, "check_notes", None)
        for note in check_notes() if callable(check_notes) else ():
            print(f"{args.file}: note: {channel.type}:{channel.name} {note}", file=sys.stderr)
    print(f"{args.file}: OK — {len(config.channels)} channel(s): "
          + ", ".join(f"{c.name} ({c.type})" for c in config.channels))
    if args.online:
        return _check_online(config, args.timeout)
    return 0


def _check_online(config: Config, timeout: float) -> int:
    """``--online``: one line per account on stdout; 0 when every check passed, else
    EX_PROBE_FAILED. Log lines (a token refreshed, a rotated one kept) go to stderr."""
    from gateway.probe import probe_accounts

    _log_to_stderr()
    sys.stdout.flush()  # the OK line before the probes' lines, also through a pipe
    results = asyncio.run(probe_accounts(config, timeout=timeout))
    width = max((len(r.channel_type) + 1 + len(r.account) for r in results), default=0)
    for result in results:
        print(result.line(width))
    failed = sum(r.status == "FAIL" for r in results)
    if failed:
        print(f"{config.source}: {failed} of {len(results)} account(s) failed the online "
              "check", file=sys.stderr)
        return EX_PROBE_FAILED
    return 0


def _log_to_stderr() -> None:
    """Warnings and errors of the probes, masked as the daemon's are, on stderr."""
    import logging

    import structlog

    from gateway.logging import mask_secrets

    structlog.configure(
        processors=[structlog.processors.add_log_level, mask_secrets,
                    structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False)


def _privileged_ports(config: Config) -> list[str]:
    """Listeners below 1024 need CAP_NET_BIND_SERVICE, which the unit does not grant."""
    notes = []
    if config.server.port and config.server.port < 1024:
        notes.append(f"server.listen port {config.server.port} is privileged")
    for channel in config.channels:
        listen = getattr(channel.options, "smtp_listen", None)
        if listen and 0 < listen[1] < 1024:
            notes.append(f"{channel.type}:{channel.name} smtp_listen port {listen[1]} "
                         "is privileged")
    return [f"{note}: under systemd install systemd/smtp-port-25.conf as a drop-in "
            "(grants CAP_NET_BIND_SERVICE)" for note in notes]


def _store_config(args: argparse.Namespace) -> Config:
    """The configuration of a command that only touches the store (secrets unread); a
    broken file prints its errors and exits 78, as ``check-config`` does."""
    try:
        return _config(args, resolve_secrets=False)
    except ConfigErrors as exc:
        _print_config_errors(exc, str(args.config))
        raise SystemExit(EX_CONFIG) from None


@contextlib.contextmanager
def _store_locked(path: Path, hint: str) -> Iterator[None]:
    """Hold the store's lock for an offline command; exit 1 with ``hint`` while a daemon
    (or another command) holds it: the daemon numbers events in memory, a second writer
    would collide with it."""
    from gateway.daemon import StoreLock

    lock = StoreLock(path)
    try:
        lock.acquire()
    except OmnirelayError as exc:
        print(f"omnirelay: {exc.message}; {hint}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def progress(description: str, stream: TextIO | None = None
             ) -> Iterator[Callable[[int, int], None]]:
    """``update(done, total)`` drawing a progress bar on a terminal (stderr), nothing
    otherwise (a pipe, a log, systemd). Until the first update with a total, or with none,
    the bar pulses: the work is under way."""
    out = stream or sys.stderr
    if not out.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(),
                  TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(file=out), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)
        yield update


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending schema migrations (the daemon does this at start too); with
    ``--from``/``--to``, move a store between SQLite and PostgreSQL."""
    from gateway.store.migrate import migrate_file

    if args.source or args.target:
        return _transfer(args)
    config = _store_config(args)
    if config.store.backend == "postgresql":
        from gateway.store.postgres.conn import Connection
        from gateway.store.postgres.migrate import apply_migrations as pg_migrate
        pg_conn = Connection.connect(config.store.url, application_name="omnirelay-migrate")
        try:
            applied = pg_migrate(pg_conn)
        finally:
            pg_conn.close()
        print(f"PostgreSQL store: applied {applied or 'nothing'}; schema is current")
        return 0
    path = config.store.sqlite_path
    make_store_private(config.store)
    with _store_locked(path, "the daemon migrates at start"), progress("applying migrations"):
        applied = migrate_file(path)
    print(f"{path}: applied {applied or 'nothing'}; schema is current")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    """``migrate --from URL --to URL`` (docs/postgresql.md): copy every row, ids and seqs
    kept, into an empty store; resumable; a SQLite end is locked against a running daemon."""
    from gateway.config import StoreConfig
    from gateway.store.transfer import TransferError, default_progress, transfer

    if not (args.source and args.target):
        print("omnirelay: migrate needs both --from URL and --to URL", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        for url in (args.source, args.target):
            if url.startswith("sqlite:///"):
                stack.enter_context(_store_locked(StoreConfig(url=url).sqlite_path,
                                                  "stop the daemon first"))
        try:
            counts = transfer(args.source, args.target, progress=default_progress(),
                              blob_dir=Path(args.blobs) if args.blobs else None)
        except (TransferError, OmnirelayError) as exc:
            print(f"omnirelay: {exc.message}", file=sys.stderr)
            return 1
    total = sum(counts.values())
    print(f"copied {total:,} rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items() if n))
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    """Rewrite the database file without its free pages, with incremental vacuum on."""
    config = _store_config(args)
    path = config.store.sqlite_path
    if not path.exists():
        print(f"omnirelay: {path} does not exist", file=sys.stderr)
        return 1
    with _store_locked(path, "stop the daemon first (VACUUM rewrites the file)"):
        try:
            before = path.stat().st_size
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                # A database from before migration 0007 turns incremental here: from then
                # on purges and erasures give their pages back without another VACUUM.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            after = path.stat().st_size
        except sqlite3.Error as exc:
            print(f"omnirelay: vacuum failed: {exc}", file=sys.stderr)
            return 1
    print(f"{path}: {before:,} bytes before, {after:,} after; incremental vacuum on")
    return 0


async def _with_store(config: Config, action: str, arg: str) -> object:
    from gateway.store.base import AdminStore
    from gateway.store.select import make_store

    store: AdminStore = make_store(config.store)
    await store.open()
    try:
        if action == "erase":  # PostgreSQL tells the running instances (ERASED_TOPIC)
            result = await store.erase_customer(arg)
            result.pop("_erased_ids", None)
            return result
        if action == "purge":
            return await store.purge_older_than(int(arg))
        raise ValueError(action)
    finally:
        await store.close()


_ONLINE_HINT = {
    "erase": "erase through the running daemon: DELETE /v1/customers/{id} with an admin token",
    "purge": "the running daemon purges by itself when [store] retention_days is set",
}


def _store_command(args: argparse.Namespace, action: str, arg: str) -> int:
    """Run a store write offline; refused while a daemon runs on the same store.

    The daemon numbers events in memory, so a second writer would collide with its next
    event; the running daemon offers the same operations through its API.
    """
    config = _store_config(args)
    configure_logging("warning", "json")
    make_store_private(config.store)
    hint = _ONLINE_HINT.get(action, "stop the service first").format(id=arg)
    with _store_locked(config.store.sqlite_path, hint):
        try:
            with progress("purging" if action == "purge" else "erasing"):
                result = asyncio.run(_with_store(config, action, arg))
        except OmnirelayError as exc:
            print(f"omnirelay: {exc.message}", file=sys.stderr)
            return 1
    import orjson

    print(orjson.dumps(result).decode() if isinstance(result, dict) else result)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Write an online, consistent copy of the SQLite database (safe while the daemon runs).

    The copy is written beside the target and renamed into place only once complete and
    checked, so a half-written file never looks like a backup. Attachment bytes live in
    ``<data_dir>/blobs`` (immutable, content-addressed files): copy that directory after.
    """
    config = _store_config(args)
    if config.store.backend == "postgresql":
        print("omnirelay: backup copies a SQLite store; back a PostgreSQL store up with "
              "pg_dump or pg_basebackup (docs/postgresql.md)", file=sys.stderr)
        return 1
    source = config.store.sqlite_path
    target = Path(args.file)
    if not source.exists():
        print(f"omnirelay: no database at {source}", file=sys.stderr)
        return 1
    if target.exists() and target.resolve() == source.resolve():
        print("omnirelay: the backup target is the live database", file=sys.stderr)
        return 1
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        # Created 0600 before a byte is copied (SQLite would take the umask's mode).
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        summary = _backup(source, partial)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        print(f"omnirelay: backup failed: {exc}", file=sys.stderr)
        return 1
    make_file_private(partial)
    os.replace(partial, target)
    print(f"backup written to {target}: {summary}; attachment bytes are in "
          f"{config.store.data_dir / 'blobs'} (copy that directory too)")
    return 0


def _backup(source: Path, target: Path) -> str:
    """SQLite's online backup from a read-only connection; the copy is checked."""
    uri = f"file:{urllib.parse.quote(str(source.resolve()))}?mode=ro"
    src = sqlite3.connect(uri, uri=True, timeout=30.0)
    dst = sqlite3.connect(target)
    try:
        with progress("copying the database") as update:
            src.backup(dst, pages=4096,
                       progress=lambda _status, left, total: update(total - left, total))
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"the copy failed its check: {check}")
        messages = dst.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        seq = dst.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        version = dst.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
    finally:
        dst.close()
        src.close()
    return f"{messages} messages, events up to seq {seq}, schema version {version}, check ok"


def cmd_erase(args: argparse.Namespace) -> int:
    """Erase a customer and everything of theirs."""
    return _store_command(args, "erase", args.customer_id)


def cmd_purge(args: argparse.Namespace) -> int:
    """Purge raw payloads and attachments older than N days."""
    return _store_command(args, "purge", str(args.days))


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI document."""
    import orjson

    from gateway.api.openapi import openapi_document

    sys.stdout.write(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2).decode()
                     + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the support metrics of a period as a table (total, then per day in
    ``[stats] time_zone``) and write a chart of volume and response times per day.

    Reads the store without the lock (the daemon may run); ``--rebuild`` first recomputes
    the aggregates from the events (a store older than migration 0008), which needs it,
    measuring the business-hours durations with the schedules configured now.
    """
    from gateway.daemon import business_hours_for
    from gateway.stats.query import StatsQuery, compute_stats, period
    from gateway.stats.report import chart, table
    from normalizer.timestamps import parse_iso

    config = _store_config(args)
    hours = business_hours_for(config) if args.rebuild else None
    on_postgres = config.store.backend == "postgresql"  # docs/postgresql.md
    path = config.store.sqlite_path
    if not on_postgres and not path.exists():
        print(f"omnirelay: {path} does not exist", file=sys.stderr)
        return 1
    try:
        start, end = period(parse_iso(args.start) if args.start else None,
                            parse_iso(args.end) if args.end else None)
    except ValueError as exc:
        print(f"omnirelay: --from/--to: {exc} (ISO 8601, e.g. 2026-11-01T00:00:00+09:00)",
              file=sys.stderr)
        return 2
    if args.rebuild and on_postgres:
        from gateway.store.postgres.conn import Connection
        from gateway.store.postgres.stats import rebuild as rebuild_on_postgres

        pg_conn = Connection.connect(config.store.url, application_name="omnirelay-report")
        try:
            with progress("rebuilding the metrics from the events") as update:
                events = rebuild_on_postgres(pg_conn, progress=update, hours=hours)
        finally:
            pg_conn.close()
        print(f"PostgreSQL store: metrics rebuilt from {events:,} events", file=sys.stderr)
    elif args.rebuild:
        from gateway.store.jobs.stats import rebuild

        with _store_locked(path, "stop the daemon first (the rebuild rewrites the "
                                 "aggregates)"):
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                with progress("rebuilding the metrics from the events") as update:
                    events = rebuild(conn, progress=update, hours=hours)
            finally:
                conn.close()
        print(f"{path}: metrics rebuilt from {events:,} events", file=sys.stderr)
    reader: Any  # sqlite3's connection, or the PostgreSQL one speaking its surface
    if on_postgres:
        from gateway.store.postgres.conn import Connection

        reader = Connection.connect(config.store.url, application_name="omnirelay-report")
    else:
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        zone = config.stats.time_zone
        clock = args.clock
        total = compute_stats(reader, StatsQuery(start, end, None, zone,
                                                 clock=clock))["groups"]
        days = compute_stats(reader, StatsQuery(start, end, "day", zone,
                                                clock=clock))["groups"]
    finally:
        reader.close()
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    local = ZoneInfo(zone)
    span = (f"{datetime.fromtimestamp(start, UTC).astimezone(local):%Y-%m-%d %H:%M} to "
            f"{datetime.fromtimestamp(end, UTC).astimezone(local):%Y-%m-%d %H:%M} ({zone})")
    print(f"Support metrics, {span}"
          + (", durations in business hours" if clock == "business" else "") + "\n")
    print(table(total + days, "day"))
    if days and args.chart != "-":
        target = Path(args.chart)
        chart(days, target, f"omnirelay, {span}"
              + (", business hours" if clock == "business" else ""))
        print(f"\nchart: {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="omnirelay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"omnirelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run the daemon (embedded default without --config)")
    p.add_argument("--config", "-c")
    p = add("check-config", cmd_check_config, "validate a config file (--online: and sign "
            "in to every account's provider)")
    p.add_argument("file")
    p.add_argument("--online", action="store_true",
                   help="then check every account against its provider (sign in, read "
                        "who it is; nothing is received, sent or changed)")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",  # probe.py's
                   help="each account's online check may take this long (default 15)")
    p = add("migrate", cmd_migrate, "apply schema migrations, or move a store "
            "(--from sqlite:///… --to postgresql://…, and back)")
    p.add_argument("--config", "-c")
    p.add_argument("--from", dest="source", metavar="URL", help="store to copy from")
    p.add_argument("--to", dest="target", metavar="URL", help="empty store to copy into")
    p.add_argument("--blobs", metavar="DIR", help="the SQLite end's attachment files "
                   "(default: blobs/ beside its database file)")
    p = add("backup", cmd_backup, "online backup of the SQLite store (daemon may run)")
    p.add_argument("file")
    p.add_argument("--config", "-c")
    p = add("erase-customer", cmd_erase, "erase a customer's data (personal-data request)")
    p.add_argument("customer_id")
    p.add_argument("--config", "-c")
    p = add("purge", cmd_purge, "purge raw payloads and attachments older than N days")
    p.add_argument("days", type=int)
    p.add_argument("--config", "-c")
    p = add("vacuum", cmd_vacuum, "rewrite the database without free pages (daemon stopped)")
    p.add_argument("--config", "-c")
    add("openapi", cmd_openapi, "print the OpenAPI document")
    p = add("report", cmd_report, "support metrics of a period: a table and a chart")
    p.add_argument("--from", dest="start", help="ISO 8601 (default: 7 days before --to)")
    p.add_argument("--to", dest="end", help="ISO 8601, exclusive (default: now)")
    p.add_argument("--chart", default="omnirelay-report.svg",
                   help="the chart's file: .svg or .png (- for none)")
    p.add_argument("--rebuild", action="store_true",
                   help="first recompute the metrics from the stored events (daemon stopped)")
    p.add_argument("--clock", choices=("wall", "business"), default="wall",
                   help="the durations' clock: wall (default) or business, only the time "
                        "inside each account's business hours")
    p.add_argument("--config", "-c")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``omnirelay`` command."""
    args = build_parser().parse_args(argv)
    # Before anything is written (the embedded default's data dir and token, the store,
    # a backup): what omnirelay creates is its user's only, whatever umask it was given.
    restrict_umask()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
