"""A real PostgreSQL for the tests: initdb into a temporary directory, 127.0.0.1 on a free
port, stopped by its pid's pg_ctl. ``fresh_database`` clones a migrated template, so each
test starts on an empty store in a few tens of milliseconds."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def available() -> bool:
    """Whether Debian's postgresql package is installed (scripts/setup installs it)."""
    return bool(BINS) and os.access(f"{BINS[-1]}/initdb", os.X_OK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """One running server; ``dsn(name)`` names a database on it."""

    port: int
    root: Path
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _shared: str | None = None

    def dsn(self, database: str = "postgres") -> str:
        """The URL of a database (user ``test``, trust authentication, loopback only)."""
        return f"postgresql://test@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement on the maintenance database (CREATE/DROP DATABASE)."""
        import psycopg
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def new_database(self, template: str | None = "omnirelay_template") -> str:
        """A new database (a copy of the migrated template, or empty): its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}"
                   + (f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""))
        return self.dsn(name)

    def fresh_database(self) -> str:
        """The shared test database, emptied (TRUNCATE is far cheaper than a new database
        on a busy machine): the URL of an empty, migrated store."""
        import psycopg
        if self._shared is None:
            self._shared = self.new_database()
        with psycopg.connect(self._shared, autocommit=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename "
                "NOT IN ('schema_migrations', 'codec_dictionaries', 'feed_head')")]
            conn.execute(("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY").encode())
            conn.execute(b"UPDATE feed_head SET seq = 0")
        return self._shared


def _as_postgres() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@contextlib.contextmanager
def running_server(*, durable: bool = False) -> Iterator[PgServer]:
    """Start a throwaway server and stop it by pid. Tests run it with fsync off (tests, not
    durability); ``durable`` (benchmarks) keeps PostgreSQL's defaults."""
    root = Path(tempfile.mkdtemp(prefix="omnirelay-pg-"))
    as_user = _as_postgres()
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port, bin_dir = root / "data", _free_port(), BINS[-1]
    subprocess.run([f"{bin_dir}/initdb", "-D", str(data), "-U", "test", "-A", "trust",
                    "-E", "UTF8", "--no-sync", "--locale=C.UTF-8"], check=True,
                   stdout=subprocess.DEVNULL, **as_user)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run([f"{bin_dir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-o", opts,
                    "-w", "start"], check=True, stdout=subprocess.DEVNULL, **as_user)
    server = PgServer(port, root)
    try:
        server.admin("CREATE DATABASE omnirelay_template")
        _migrate(server.dsn("omnirelay_template"))
        yield server
    finally:
        pid_file = data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        subprocess.run([f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, **as_user)
        if pid is not None:  # pg_ctl failed: end the postmaster we started, by its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)


def _migrate(dsn: str) -> None:
    from gateway.store.postgres.conn import Connection
    from gateway.store.postgres.migrate import apply_migrations
    conn = Connection.connect(dsn)
    try:
        apply_migrations(conn)
    finally:
        conn.close()
