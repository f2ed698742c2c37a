"""Pushes between the instances that share one store, for what lives in one process only.

A web chat visitor's WebSocket is held by the one instance the browser connected to, while
an agent's reply is sent by whichever instance claimed it from the outbox. The sending
instance pushes to the sockets it holds itself and publishes the push; every other instance
hands it to the sockets it holds. The daemon gives each adapter a :class:`Broadcast` of its
own (one topic per account) when its store is shared by several instances (PostgreSQL:
NOTIFY, ``gateway/store/postgres/broadcast.py``); on SQLite there is one instance and none.

Delivery is at most once and not durable: an instance that is not listening at that moment
(reconnecting to the database) misses the push, which is why a pushed thing must also be
readable from the store (the web chat's history). A subscriber learns when that may have
happened (``missed``, called once the instance listens again) and catches up from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

# Customers erased (their ids, merged ones included), for every instance to drop what it
# holds of them in memory (a web chat visitor's remembered messages): published by the
# PostgreSQL store after each erasure, whoever ran it (an instance's API, the command line).
ERASED_TOPIC = "customers.erased"  # comma-separated customer ids


class Broadcast(Protocol):
    """One topic's pushes to the other instances (see the module docstring)."""

    @property
    def limit(self) -> int:
        """The largest payload :meth:`publish` takes, in UTF-8 bytes: send bigger things
        by reference (an id the other instances read from the store)."""
        ...

    async def publish(self, payload: str) -> None:
        """Hand ``payload`` to this topic's subscribers on every other instance (never back
        to this one's: the publisher serves its own). Returns once the database took it;
        raises StoreError otherwise."""
        ...

    def subscribe(self, handler: Callable[[str], None],
                  missed: Callable[[], None] | None = None) -> Callable[[], None]:
        """Call ``handler`` on the event loop with each payload another instance publishes
        on this topic, in the order they arrive; returns what unsubscribes it.

        ``missed`` is called on the event loop when pushes may have been lost: this
        instance stopped listening for a while (its connection to the database broke) and
        listens again. Whatever was published meanwhile is in the store; read it there.
        """
        ...


@runtime_checkable
class Broadcasting(Protocol):
    """A store shared by several instances, which can carry pushes between them."""

    def broadcast(self, topic: str) -> Broadcast:
        """The pushes of ``topic`` (an adapter account: ``webchat:site``)."""
        ...


def erased_payloads(customer_ids: list[str], limit: int) -> Iterator[str]:
    """Erased customer ids as :data:`ERASED_TOPIC` payloads of at most ``limit`` bytes."""
    per = max(1, limit // 64)  # an id is far shorter than 64 bytes
    for start in range(0, len(customer_ids), per):
        yield ",".join(customer_ids[start:start + per])


def erased_ids(payload: str) -> list[str]:
    """The customer ids of an :data:`ERASED_TOPIC` payload."""
    return [part for part in payload.split(",") if part]
