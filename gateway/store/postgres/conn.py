"""A psycopg connection that the store's jobs and reads use as they use sqlite3's.

Why: the write jobs (``gateway/store/jobs/``) and the reads (``queries.py``) are plain
functions of a DB-API connection with SQLite's ``?`` placeholders and ``sqlite3.Row``
rows. Running the same functions on PostgreSQL keeps one implementation of every rule
(the issue's "same behaviour in every test"); this adapter translates the few SQLite
spellings they use (``?``, ``INSERT OR IGNORE``, ``json_extract``, ``json_object``, the
metrics' blob concatenation and upserts, a subquery without an alias) and returns rows
readable by index and by name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import RowMaker

_ERASED_BODY_SQLITE = ("CAST(json_object('id', id, 'seq', CAST(seq AS TEXT), 'type', type, "
                       "'created_at', created_at, 'data', json_object('erased', json('true'))) "
                       "AS BLOB)")
_ERASED_BODY_PG = ("convert_to(json_build_object('id', id, 'seq', CAST(seq AS TEXT), 'type', "
                   "type, 'created_at', created_at, 'data', json_build_object('erased', true)"
                   ")::text, 'UTF8')")
_JSON_EXTRACT = re.compile(r"json_extract\((\w+), '\$\.(\w+)'\)")
# The metrics' duration samples (gateway/stats/query.py): SQLite joins blobs as text and
# casts them back; PostgreSQL joins bytea itself (the order of samples does not matter).
_GROUP_CONCAT_BLOB = re.compile(r"CAST\(group_concat\((\w+), ''\) AS BLOB\)")
_INSERT_TARGET = re.compile(r"INSERT INTO (\w+)")
_ASSIGNED = re.compile(r"(?:^|,)\s*(\w+) = ")
_FROM_SUBQUERY = re.compile(r"\bFROM \(SELECT\b")
_ALIAS_FOLLOWS = re.compile(r"\s*(?:AS\b|(?!(?:WHERE|GROUP|ORDER|LIMIT|UNION|JOIN|LEFT|INNER|"
                            r"CROSS|ON|HAVING)\b)[A-Za-z_])")


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """SQLite's spelling of a statement → PostgreSQL's (psycopg's ``%s`` placeholders), and
    for numbered placeholders (``?1``) which parameter each ``%s`` takes."""
    sql = sql.replace(_ERASED_BODY_SQLITE, _ERASED_BODY_PG)
    sql = _JSON_EXTRACT.sub(r"(\1::jsonb ->> '\2')", sql)
    sql = _GROUP_CONCAT_BLOB.sub(r"string_agg(\1, ''::bytea)", sql)
    sql = sql.replace(" AS BLOB)", " AS BYTEA)")
    if " DO UPDATE SET " in sql:
        sql = _qualify_upsert(sql)
    if "FROM (SELECT" in sql:
        sql = _alias_subqueries(sql)
    ignore = "INSERT OR IGNORE INTO" in sql
    if ignore:
        sql = sql.replace("INSERT OR IGNORE INTO", "INSERT INTO")
    out: list[str] = []
    order: list[int] = []
    numbered = False
    quoted = False
    i = 0
    while i < len(sql):
        char = sql[i]
        if char == "'":
            quoted = not quoted
            out.append(char)
        elif char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
            j = i + 1
            while j < len(sql) and sql[j].isdigit():
                j += 1
            if j > i + 1:
                numbered = True
                order.append(int(sql[i + 1:j]) - 1)
                i = j
                continue
            order.append(len(order))
        else:
            out.append(char)
        i += 1
    result = "".join(out)
    if ignore:
        result += " ON CONFLICT DO NOTHING"
    return result, tuple(order) if numbered else None


def _qualify_upsert(sql: str) -> str:
    """``ON CONFLICT … DO UPDATE SET n = n + excluded.n``: SQLite reads the bare ``n`` as
    the stored row's, PostgreSQL finds it ambiguous; name its table."""
    target = _INSERT_TARGET.search(sql)
    head, _, tail = sql.partition(" DO UPDATE SET ")
    names = set(_ASSIGNED.findall(tail))
    if target is None or not names:
        return sql
    bare = re.compile(r"(?<![.\w])(" + "|".join(sorted(names)) + r")\b(?! =)")
    return f"{head} DO UPDATE SET " + bare.sub(rf"{target.group(1)}.\1", tail)


def _alias_subqueries(sql: str) -> str:
    """PostgreSQL before 16 wants an alias on every subquery in FROM; SQLite does not."""
    ends: list[int] = []
    for found in _FROM_SUBQUERY.finditer(sql):
        depth = 0
        for i in range(found.start() + 5, len(sql)):
            if sql[i] == "(":
                depth += 1
            elif sql[i] == ")":
                depth -= 1
                if depth == 0:
                    if not _ALIAS_FOLLOWS.match(sql, i + 1):
                        ends.append(i + 1)
                    break
    for number, at in enumerate(sorted(ends, reverse=True)):  # from the end: offsets hold
        sql = f"{sql[:at]} AS subquery_{number}{sql[at:]}"
    return sql


class Row(tuple[Any, ...]):
    """A row read by index or by column name, like ``sqlite3.Row``."""

    __slots__ = ()
    _names: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """Column names, in order (``dict(row)`` works as with sqlite3.Row)."""
        return list(self._names)


@functools.lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"__slots__": (), "_names": {n: i for i, n in
                                                            enumerate(names)}})


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    description = cursor.description
    if description is None:
        return lambda values: Row(values)
    cls = _row_class(tuple(col.name for col in description))
    return lambda values: cls(values)


class Cursor:
    """The result of :meth:`Connection.execute`: sqlite3's cursor surface."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Row | None:
        """The next row, or None."""
        if self._cursor.description is None:
            return None
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        """Every remaining row."""
        if self._cursor.description is None:
            return []
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        return self._cursor.rowcount


class Connection:
    """sqlite3.Connection's ``execute``/``executemany`` on a psycopg connection."""

    def __init__(self, raw: psycopg.Connection[Row]) -> None:
        self.raw = raw

    @classmethod
    def connect(cls, dsn: str, *, application_name: str = "omnirelay") -> Connection:
        """Open an autocommit connection (transactions are the engine's BEGIN/COMMIT).
        Server-side parameters: psycopg prepares a statement run five times, so the hot
        path's statements are parsed and planned once (a round trip is most of a job's
        cost: docs/benchmarks.md)."""
        raw: psycopg.Connection[Row] = psycopg.Connection.connect(
            dsn, autocommit=True, row_factory=_row_factory,
            application_name=application_name)
        return cls(raw)

    def execute(self, sql: str, params: Sequence[Any] | Iterable[Any] = ()) -> Cursor:
        """Run one statement in SQLite's spelling."""
        cursor = self.raw.cursor()
        query, order = translate(sql)
        values = _params(params)
        if order is not None:
            values = tuple(values[i] for i in order)
        cursor.execute(query, values)
        return Cursor(cursor)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        """Run one statement per row."""
        cursor = self.raw.cursor()
        query, order = translate(sql)
        assert order is None, "numbered placeholders in executemany"
        cursor.executemany(query, [_params(r) for r in rows])
        return Cursor(cursor)

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return bool(self.raw.closed)


def _params(params: Sequence[Any] | Iterable[Any]) -> tuple[Any, ...]:
    """Parameters as psycopg takes them (memoryview → bytes: sqlite3 accepts both)."""
    return tuple(bytes(p) if isinstance(p, memoryview) else p for p in params)
