"""The store ``store.url`` selects: ``sqlite:///…`` (embedded default) or ``postgresql://…``."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import StoreConfig
from gateway.store.base import Store


def make_store(config: StoreConfig, *, on_commit: Callable[[int], None] | None = None,
               on_batch: Callable[[int], None] | None = None,
               on_fatal: Callable[[str], None] | None = None) -> Store:
    """A new, unopened store of the configured backend."""
    if config.backend == "postgresql":
        from gateway.store.postgres import PostgresStore  # psycopg only when used
        return PostgresStore(config, on_commit=on_commit, on_batch=on_batch, on_fatal=on_fatal)
    from gateway.store.sqlite import SQLiteStore
    return SQLiteStore(config, on_commit=on_commit, on_batch=on_batch, on_fatal=on_fatal)
