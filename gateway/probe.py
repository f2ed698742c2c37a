"""``omnirelay check-config --online``: every account checked against its provider.

Each account's adapter is made as the daemon makes it (its type's class, its options, a
context) but never started: :meth:`~adapters.base.ChannelAdapter.probe` signs in and reads
who the account is, receiving, sending and changing nothing. The probes run concurrently,
each within a deadline, and each gives one line for the operator.

What a probe may need of the daemon's context: an HTTP session, and checkpoints. An OAuth2
refresh token rotated by the provider (Microsoft) is kept as a store checkpoint
(gateway/oauth2.py): the probe must sign in with the newest kept one and keep the one it
is given, or the daemon would next present a token the provider no longer takes. So the
configured store is opened, but only when a probe asks for a checkpoint, and only for
checkpoints (:class:`ProbeCheckpoints`); the daemon may be running on it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiohttp

from adapters.base import AdapterContext, SendLimits
from adapters.registry import ADAPTERS
from gateway.api.auth import check_token
from gateway.errors import AdapterAuthError, OmnirelayError, StoreError
from gateway.ids import iso, utcnow

if TYPE_CHECKING:
    from adapters.base import ChannelAdapter
    from gateway.config import ChannelConfig, Config, StoreConfig
    from gateway.store.base import AdapterStore, IngestResult
    from gateway.store.postgres.conn import Connection
    from normalizer.model import InboundMessage

DEFAULT_TIMEOUT = 15.0
"""Seconds each account's probe may take (``--timeout``)."""

_SET = ("INSERT INTO checkpoints (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
        "updated_at = excluded.updated_at")
_INIT = "INSERT OR IGNORE INTO checkpoints (key, value, updated_at) VALUES (?, ?, ?)"
_GET = "SELECT value FROM checkpoints WHERE key = ?"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One account's outcome: ``ok`` (what was checked), ``FAIL`` (why) or ``--``."""

    channel_type: str
    account: str
    status: str  # "ok", "FAIL", "--"
    text: str

    def line(self, width: int = 0) -> str:
        """``ok  email/support  IMAP signed in to …`` (the name padded to ``width``)."""
        return f"{self.status:<4} {f'{self.channel_type}/{self.account}':<{width}}  {self.text}"


class ProbeCheckpoints:
    """The store's checkpoints, and nothing else of it, for probes.

    Opened at the first use. SQLite: a connection of its own beside a running daemon's (WAL
    lets both read and write; a write waits for the daemon's commit); a database that does
    not exist yet reads as empty and is made, as ``omnirelay migrate`` makes it, only when a
    checkpoint must be kept. PostgreSQL: a connection of its own; the schema is brought to
    date first, as every instance does at start (under its advisory lock).
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Connection | None = None
        self._lock = threading.Lock()  # one statement at a time on the connection

    async def get_checkpoint(self, key: str) -> str | None:
        """The kept value, or None (also when there is no store yet)."""
        row = await asyncio.to_thread(self._run, _GET, (key,), False)
        return None if row is None else str(row[0])

    async def set_checkpoint(self, key: str, value: str) -> None:
        """Keep ``value`` (committed before this returns)."""
        await asyncio.to_thread(self._run, _SET, (key, value, iso(utcnow())), True)

    async def init_checkpoint(self, key: str, value: str) -> str:
        """Keep ``value`` unless ``key`` has one; the one kept."""
        await asyncio.to_thread(self._run, _INIT, (key, value, iso(utcnow())), True)
        kept = await self.get_checkpoint(key)
        return value if kept is None else kept

    def close(self) -> None:
        """Close whichever connection was opened."""
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None
                self._give_back()
            if self._pg is not None:
                self._pg.close()
                self._pg = None

    def _run(self, sql: str, params: tuple[str | None, ...], write: bool) -> Any:
        with self._lock:
            try:
                if self.config.backend == "postgresql":
                    return self._postgres().execute(sql, params).fetchone()
                conn = self._sqlite_conn(write)
                if conn is None:
                    return None
                return conn.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"the store's checkpoints: {exc}") from exc
            except OmnirelayError:
                raise
            except Exception as exc:  # psycopg's errors, imported only with PostgreSQL
                raise StoreError(f"the store's checkpoints: {exc}") from exc

    def _sqlite_conn(self, write: bool) -> sqlite3.Connection | None:
        if self._sqlite is not None:
            return self._sqlite
        path = self.config.sqlite_path
        if not path.exists():
            if not write:
                return None
            self._migrate_sqlite()
        conn = self._connect_sqlite()
        made = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'checkpoints'").fetchone()
        if made is None:
            conn.close()
            if not write:
                return None
            self._migrate_sqlite()
            conn = self._connect_sqlite()
        self._sqlite = conn
        return conn

    def _give_back(self) -> None:
        """Run as root (to read the unit's credentials), the command may have made the
        database, its lock or its WAL: they go to the data directory's owner, the service
        user, who could not open root's files."""
        if os.geteuid() != 0:
            return
        owner = self.config.data_dir.stat()
        if owner.st_uid == 0:
            return
        database = self.config.sqlite_path
        for path in (database, *(database.with_name(database.name + suffix)
                                 for suffix in ("-wal", "-shm", ".lock"))):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_uid == 0:
                    os.chown(path, owner.st_uid, owner.st_gid)

    def _connect_sqlite(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.config.sqlite_path, isolation_level=None,
                               check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")  # the daemon's commit, a moment
        return conn

    def _migrate_sqlite(self) -> None:
        """Make the database as ``omnirelay migrate`` (and the daemon at start) makes it."""
        from gateway.daemon import StoreLock
        from gateway.permissions import make_store_private
        from gateway.store.migrate import migrate_file

        make_store_private(self.config)  # creates the directories, private
        lock = StoreLock(self.config.sqlite_path)
        lock.acquire()  # a daemon holding it has made the schema: StoreError says whose
        try:
            migrate_file(self.config.sqlite_path)
        finally:
            lock.release()

    def _postgres(self) -> Connection:
        if self._pg is None:
            from gateway.store.postgres.conn import Connection
            from gateway.store.postgres.migrate import apply_migrations

            conn = Connection.connect(self.config.url, application_name="omnirelay-check")
            try:
                apply_migrations(conn)
            except BaseException:
                conn.close()
                raise
            self._pg = conn
        return self._pg


async def _no_ingest(inbound: InboundMessage) -> IngestResult:
    raise RuntimeError("a probe receives nothing")  # the contract: probes do not ingest


def make_adapter(account: ChannelConfig, config: Config, http: aiohttp.ClientSession,
                 store: ProbeCheckpoints) -> ChannelAdapter:
    """The account's adapter as the daemon makes it (``Gateway._make_adapter``), with a
    context that can sign in (HTTP, checkpoints) but not ingest."""
    ctx = AdapterContext(
        ingest=_no_ingest, http=http, public_url=config.server.public_url,
        authorize=check_token,
        # Checkpoints only: a probe reads no message and applies no change.
        store=cast("AdapterStore", store), groups=account.groups)
    cls = ADAPTERS[account.type]
    return cls(account.name, account.options, ctx,
               limits=SendLimits(account.send_concurrency, account.send_rate))


async def probe_one(adapter: ChannelAdapter, timeout: float) -> ProbeResult:
    """Run one probe within ``timeout``; every outcome is a line, never an exception."""
    def result(status: str, text: str) -> ProbeResult:
        return ProbeResult(adapter.type, adapter.name, status, " ".join(text.split()))

    try:
        async with asyncio.timeout(timeout):
            summary = await adapter.probe()
    except TimeoutError:
        return result("FAIL", f"no answer within {timeout:g} s (a host unreachable, "
                              "a firewall dropping the connection?)")
    except AdapterAuthError as exc:
        return result("FAIL", f"credentials refused: {exc.message}")
    except OmnirelayError as exc:
        return result("FAIL", exc.message)
    except Exception as exc:  # a probe's bug must not hide the other accounts' lines
        return result("FAIL", f"the check itself failed: {type(exc).__name__}: {exc}")
    if summary is None:
        return result("--", "nothing to check")
    return result("ok", summary)


async def probe_accounts(config: Config, *, timeout: float = DEFAULT_TIMEOUT
                         ) -> list[ProbeResult]:
    """Probe every configured account concurrently; results in the config's order."""
    store = ProbeCheckpoints(config.store)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                 headers={"User-Agent": "omnirelay"})

    async def check(account: ChannelConfig) -> ProbeResult:
        try:
            adapter = make_adapter(account, config, http, store)
        except Exception as exc:
            text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            return ProbeResult(account.type, account.name, "FAIL",
                               f"the adapter could not be made: {text}")
        return await probe_one(adapter, timeout)

    try:
        return list(await asyncio.gather(*(check(account) for account in config.channels)))
    finally:
        await http.close()
        await asyncio.to_thread(store.close)
