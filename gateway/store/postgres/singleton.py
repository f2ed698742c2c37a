"""Singleton work across instances: a named loop (an IMAP mailbox, a polling loop) runs on
the one instance holding its session advisory lock.

Each owned loop has a connection of its own holding ``pg_advisory_lock`` on the loop's
name. The lock lives exactly as long as that connection: when the owning instance dies
(kill -9, a crash, a lost network), PostgreSQL ends the session and frees the lock, and the
next instance polling ``pg_try_advisory_lock`` takes the work over within ``POLL_SECONDS``.
The owner checks its connection every ``CHECK_SECONDS`` and stops the body the moment the
connection (and so the lock) is gone, so two instances never run the same loop for longer
than that check's interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg
import structlog

from gateway.errors import StoreError

log = structlog.get_logger(__name__)

POLL_SECONDS = 1.0  # a waiting instance asks for the lock this often
CHECK_SECONDS = 2.0  # the owner checks its lock's connection this often


class OwnershipLost(StoreError):
    """The connection holding a loop's lock broke: the body stops (and waits its turn)."""


async def run_owned(dsn: str, name: str, body: Callable[[], Awaitable[None]]) -> None:
    """Wait until this instance owns ``name``, run ``body`` while it does."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True,
                                                     application_name=f"omnirelay-own:{name}"[:63])
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        waited = False
        while True:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                        (name,))
            row = await cursor.fetchone()
            if row is not None and row[0]:
                break
            if not waited:
                log.info("singleton.waiting", loop=name, hint="another instance owns it")
                waited = True
            await asyncio.sleep(POLL_SECONDS)
        log.info("singleton.owned", loop=name)
        work = asyncio.create_task(_run(body), name=f"owned:{name}")
        watch = asyncio.create_task(_watch(conn), name=f"own-watch:{name}")
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, watch):
                task.cancel()
            await asyncio.gather(work, watch, return_exceptions=True)
        if work in done:
            work.result()  # the body's failure (the supervisor restarts it) or its end
            return
        raise OwnershipLost(f"lost the lock of {name}: {watch.exception() or 'closed'}")
    except psycopg.Error as exc:
        raise StoreError(f"ownership of {name}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await conn.close()  # frees the lock


async def _run(body: Callable[[], Awaitable[None]]) -> None:
    await body()


async def _watch(conn: psycopg.AsyncConnection[object]) -> None:
    """Return (or raise) when the lock's connection is gone."""
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        await asyncio.wait_for(conn.execute("SELECT 1"), CHECK_SECONDS * 2)
