"""The store ``store.url`` selects: ``sqlite:///…`` (embedded default) or ``postgresql://…``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import StoreConfig

if TYPE_CHECKING:
    from gateway.store.jobs.stats import Sample
    from gateway.store.sqlite import SQLiteStore


def make_store(config: StoreConfig, *, on_commit: Callable[[int], None] | None = None,
               on_batch: Callable[[int], None] | None = None,
               on_fatal: Callable[[str], None] | None = None,
               on_samples: Callable[[list[Sample]], None] | None = None) -> SQLiteStore:
    """A new, unopened store of the configured backend. The PostgreSQL store keeps the SQLite
    store's facade (it runs the same jobs), so both are a :class:`SQLiteStore` to the daemon."""
    if config.backend == "postgresql":
        from gateway.store.postgres import PostgresStore  # psycopg only when used
        return PostgresStore(config, on_commit=on_commit, on_batch=on_batch, on_fatal=on_fatal,
                             on_samples=on_samples)
    from gateway.store.sqlite import SQLiteStore
    return SQLiteStore(config, on_commit=on_commit, on_batch=on_batch, on_fatal=on_fatal,
                       on_samples=on_samples)
