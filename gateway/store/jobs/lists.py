"""``IN (…)`` lists for the write jobs' batch look-ups (a neutral module: the metrics and the
ingest jobs both use it, and tx.py imports the metrics)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

CHUNK = 64  # values per IN list


def in_chunks(values: Iterable[Any], size: int = CHUNK) -> Iterator[tuple[str, list[Any]]]:
    """``(placeholders, values)`` for ``IN (…)`` lists of at most ``size`` distinct values,
    each padded to a power of two by repeating its last value: few distinct statements,
    so each stays prepared (SQLite's statement cache, PostgreSQL's prepared statements)."""
    unique = sorted(set(values))
    for start in range(0, len(unique), size):
        chunk = unique[start:start + size]
        width = 1 << (len(chunk) - 1).bit_length()
        chunk += [chunk[-1]] * (width - len(chunk))
        yield ", ".join("?" * width), chunk
