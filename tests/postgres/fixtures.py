"""Store fixtures for both backends (a pytest plugin: tests/conftest.py loads it).

``backend`` runs a test once on SQLite and once on a real PostgreSQL (skipped where
Debian's postgresql is not installed); a test that depends on the SQLite engine itself
is marked ``sqlite_only``. ``pg_server`` is one server for the whole session; every store
gets a fresh database cloned from the migrated template.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import StoreConfig
from gateway.store.sqlite import SQLiteStore
from tests.postgres.server import PgServer, available, running_server

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.skipif(
        not available(), reason="PostgreSQL is not installed (scripts/setup installs it)")),
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: the test depends on the SQLite engine "
                            "(its files, WAL, group-commit internals), not on the interface")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL for the session (initdb into a temp dir, stopped by pid)."""
    if not available():
        pytest.skip("PostgreSQL is not installed (scripts/setup installs it)")
    with running_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``; ``sqlite_only`` tests skip the second."""
    name: str = request.param
    if name == "postgresql" and request.node.get_closest_marker("sqlite_only"):
        pytest.skip("depends on the SQLite engine")
    return name


def store_config(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                 **options: Any) -> StoreConfig:
    """A config for a new, empty store of ``backend`` (its blobs under ``tmp_path``)."""
    if backend == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        options.pop("synchronous", None)
        return StoreConfig(url=server.fresh_database(), data_dir=tmp_path, **options)
    return StoreConfig(url=f"sqlite:///{tmp_path}/s.db", data_dir=tmp_path, **options)


def new_store(config: StoreConfig, **kwargs: Any) -> SQLiteStore:
    """The store its URL selects (PostgresStore keeps SQLiteStore's facade)."""
    if config.url.startswith("postgresql://"):
        from gateway.store.postgres import PostgresStore
        return PostgresStore(config, **kwargs)
    return SQLiteStore(config, **kwargs)
