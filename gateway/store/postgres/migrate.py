"""PostgreSQL migrations: numbered scripts in ``gateway/store/migrations_pg/`` mirroring the
SQLite ones, each applied once in its own transaction, under an advisory lock so that
instances started at the same moment on an empty database migrate it once."""

from __future__ import annotations

from importlib import resources

from gateway.ids import iso, utcnow
from gateway.store.postgres.conn import Connection

# pg_advisory_lock key of the migration ("omnirelay" in ASCII, truncated to 63 bits).
MIGRATION_LOCK = 0x6F6D6E6972656C


def migration_scripts() -> list[tuple[int, str]]:
    """Return (version, SQL) of every packaged PostgreSQL migration, in order."""
    folder = resources.files("gateway.store") / "migrations_pg"
    scripts = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            scripts.append((int(entry.name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(scripts)


def applied_versions(conn: Connection) -> set[int]:
    """Versions already applied (empty on a new database)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    if exists is None or exists[0] is None:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}


def apply_migrations(conn: Connection) -> list[int]:
    """Apply pending migrations, each in its own transaction; return the versions applied.

    The session advisory lock is held from the first look to the last script: a second
    instance waits, then finds nothing left to do."""
    conn.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                     "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = applied_versions(conn)
        applied = []
        for version, sql in migration_scripts():
            if version in done:
                continue
            conn.execute("BEGIN")
            try:
                conn.raw.execute(sql.encode())  # the whole script: simple query protocol
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                             (version, iso(utcnow())))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            applied.append(version)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))
