"""``omnirelay`` command line: run, migrate, check-config, backup, erase-customer, purge."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from pathlib import Path

from gateway import __version__
from gateway.config import Config, embedded_default, load_config
from gateway.errors import ConfigErrors, OmnirelayError
from gateway.logging import configure_logging

EX_CONFIG = 78


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("OMNIRELAY_CONFIG")
    return load_config(path) if path else embedded_default()


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
        _print_config_errors(exc, str(path))
        return EX_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    loader = (lambda: load_config(path)) if path else None
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    return runner(run(config, config_loader=loader))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Report every error of a config file with its key, line and a hint."""
    try:
        config = load_config(args.file)
    except ConfigErrors as exc:
        _print_config_errors(exc, args.file)
        print(f"{args.file}: {len(exc.errors)} error(s)", file=sys.stderr)
        return EX_CONFIG
    for warning in config.warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK — {len(config.channels)} channel(s): "
          + ", ".join(f"{c.name} ({c.type})" for c in config.channels))
    for channel in config.channels:
        describe = getattr(channel.options, "describe", None)
        if describe:
            for line in describe():
                print(f"  {channel.name}: {line}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending schema migrations."""
    from gateway.store.sqlite import apply_migrations

    try:
        config = _config(args)
    except ConfigErrors as exc:
        _print_config_errors(exc, str(args.config))
        return EX_CONFIG
    path = config.store.sqlite_path
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    try:
        applied = apply_migrations(conn)
    finally:
        conn.close()
    print(f"{path}: applied {applied or 'nothing'}; schema is current")
    return 0


async def _with_store(config: Config, action: str, arg: str) -> object:
    from gateway.store.sqlite import SQLiteStore

    store = SQLiteStore(config.store)
    await store.open()
    try:
        if action == "backup":
            await store.backup(Path(arg))
            return f"backup written to {arg}"
        if action == "erase":
            return await store.erase_customer(arg)
        if action == "purge":
            return await store.purge_older_than(int(arg))
        raise ValueError(action)
    finally:
        await store.close()


def _store_command(args: argparse.Namespace, action: str, arg: str) -> int:
    try:
        config = _config(args)
    except ConfigErrors as exc:
        _print_config_errors(exc, str(args.config))
        return EX_CONFIG
    configure_logging("warning", "json")
    try:
        result = asyncio.run(_with_store(config, action, arg))
    except OmnirelayError as exc:
        print(f"omnirelay: {exc.message}", file=sys.stderr)
        return 1
    print(result)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Write an online, consistent copy of the SQLite database."""
    return _store_command(args, "backup", args.file)


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
    p = add("check-config", cmd_check_config, "validate a config file")
    p.add_argument("file")
    p = add("migrate", cmd_migrate, "apply schema migrations")
    p.add_argument("--config", "-c")
    p = add("backup", cmd_backup, "online backup of the SQLite store")
    p.add_argument("file")
    p.add_argument("--config", "-c")
    p = add("erase-customer", cmd_erase, "erase a customer's data (personal-data request)")
    p.add_argument("customer_id")
    p.add_argument("--config", "-c")
    p = add("purge", cmd_purge, "purge raw payloads and attachments older than N days")
    p.add_argument("days", type=int)
    p.add_argument("--config", "-c")
    add("openapi", cmd_openapi, "print the OpenAPI document")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``omnirelay`` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
