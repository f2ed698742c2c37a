"""Pushes between instances on PostgreSQL (:mod:`gateway.broadcast`): ``NOTIFY`` on
``omnirelay_push``, heard by every instance's feed listener (one connection, no new one).

A notification is ``<origin>\\n<topic>\\n<payload>``: the origin is a random id of the
publishing instance, which drops its own notifications (it served its own sockets already);
the topic picks the subscribers (an adapter account). After the listener connection broke
and listens again (:meth:`PgBroadcasts.resumed`), every subscriber's ``missed`` is called:
what was published meanwhile was heard by nobody here. PostgreSQL limits a payload to fewer
than 8000 bytes, and the header is counted in it: :attr:`Topic.limit` is what is left.
Published through a reader connection (autocommit: sent at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from gateway.store.postgres.conn import Connection

log = structlog.get_logger(__name__)

CHANNEL = "omnirelay_push"
MAX_NOTIFY_BYTES = 7999  # PostgreSQL: "the payload must be shorter than 8000 bytes"

Read = Callable[..., Awaitable[Any]]
Handler = Callable[[str], None]


class PgBroadcasts:
    """Every topic's subscribers on this instance, and publishing for them."""

    def __init__(self, read: Read) -> None:
        self.read = read  # the engine's reader pool: PgEngine.read
        self.origin = secrets.token_hex(8)
        # Replaced whole on (un)subscribe: the listener thread reads it without a lock.
        self.handlers: dict[str, tuple[Handler, ...]] = {}
        self.missed: tuple[Callable[[], None], ...] = ()
        self.loop: asyncio.AbstractEventLoop | None = None

    def topic(self, name: str) -> Topic:
        """One topic's :class:`~gateway.broadcast.Broadcast`."""
        if "\n" in name:
            raise ValueError(f"a broadcast topic has no line break: {name!r}")
        return Topic(self, name)

    async def publish(self, topic: str, payload: str) -> None:
        """NOTIFY every instance (StoreError when the database did not take it)."""
        await self.read(_notify, f"{self.origin}\n{topic}\n{payload}")

    def subscribe(self, topic: str, handler: Handler,
                  missed: Callable[[], None] | None = None) -> Callable[[], None]:
        """Add ``handler`` to ``topic`` (called on this event loop), and ``missed`` to what
        :meth:`resumed` calls."""
        self.loop = asyncio.get_running_loop()
        handlers = dict(self.handlers)
        handlers[topic] = (*handlers.get(topic, ()), handler)
        self.handlers = handlers
        if missed is not None:
            self.missed = (*self.missed, missed)

        def unsubscribe() -> None:
            left = tuple(h for h in self.handlers.get(topic, ()) if h is not handler)
            handlers = dict(self.handlers)
            if left:
                handlers[topic] = left
            else:
                handlers.pop(topic, None)
            self.handlers = handlers
            self.missed = tuple(m for m in self.missed if m is not missed)
        return unsubscribe

    def resumed(self) -> None:
        """From the listener thread: it listens again after its connection broke, so
        notifications of the time between were lost; tell every subscriber."""
        loop = self.loop
        if not self.missed or loop is None or loop.is_closed():
            return
        log.info("store.broadcast_resumed", subscribers=len(self.missed))
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._catch_up)

    def _catch_up(self) -> None:
        for missed in self.missed:
            try:
                missed()
            except Exception:
                log.exception("store.broadcast_handler_failed", topic=None)

    def received(self, notification: str) -> None:
        """From the listener thread: hand another instance's push to the loop."""
        origin, _, rest = notification.partition("\n")
        if origin == self.origin:
            return
        topic, _, payload = rest.partition("\n")
        loop = self.loop
        if topic not in self.handlers or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._dispatch, topic, payload)

    def _dispatch(self, topic: str, payload: str) -> None:
        for handler in self.handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("store.broadcast_handler_failed", topic=topic)


class Topic:
    """A :class:`~gateway.broadcast.Broadcast` of one topic."""

    def __init__(self, broadcasts: PgBroadcasts, name: str) -> None:
        self.broadcasts = broadcasts
        self.name = name
        header = f"{broadcasts.origin}\n{name}\n".encode()
        self._limit = MAX_NOTIFY_BYTES - len(header)

    @property
    def limit(self) -> int:
        """The payload's largest size in UTF-8 bytes."""
        return self._limit

    async def publish(self, payload: str) -> None:
        """To this topic's subscribers on the other instances."""
        await self.broadcasts.publish(self.name, payload)

    def subscribe(self, handler: Handler,
                  missed: Callable[[], None] | None = None) -> Callable[[], None]:
        """``handler`` gets the other instances' payloads of this topic; ``missed`` is
        called when some may have been lost (see :meth:`PgBroadcasts.resumed`)."""
        return self.broadcasts.subscribe(self.name, handler, missed)


def _notify(conn: Connection, notification: str) -> None:
    conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, notification))
