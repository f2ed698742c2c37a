"""Attachment bytes in PostgreSQL (migration 0011's ``blobs`` table), so that several
instances need no shared directory; each instance's ``<data_dir>/blobs`` is a cache.

- Written before the message naming them commits, once per digest: ``put_blobs`` inserts
  its bytes (``ON CONFLICT DO NOTHING``); a fetched download is streamed in with ``COPY``
  (binary format), never read whole into memory.
- Read through the cache: a missing file is fetched in chunks (``substring()`` of a value
  stored uncompressed), written to a temporary file, checked against its digest and renamed
  into place, so a reader never sees a partial file.
- Deleted with the last attachment that names them (retention, erasure); every instance
  drops its cached file (a NOTIFY, and at start a sweep for what it missed while down).
- The cache is held to a disk budget, least recently read files first (:mod:`.cache`).

Every function here runs on a reader thread with its autocommit connection
(``PgEngine.read``): the bytes commit on their own, without holding up the writer's batch.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg.errors

from gateway.errors import StoreError
from gateway.store.postgres.conn import Connection

GONE_TOPIC = "blobs.gone"  # the broadcast topic of deleted digests (comma-separated)
CHUNK = 1 << 20  # bytes per round trip when the cache is filled or a file is copied in
SWEEP_CHUNK = 500  # digests looked up at once by the start-up sweep
_DIGEST = re.compile(r"[0-9a-f]{64}")
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def is_digest(text: str) -> bool:
    """Whether ``text`` is a SHA-256 in hex (the name of a cached file)."""
    return _DIGEST.fullmatch(text) is not None


def insert(conn: Connection, items: list[tuple[str, bytes]]) -> None:
    """Store (digest, bytes) pairs that are not stored yet (bytes sent as binary)."""
    for digest, data in items:
        conn.raw.execute("INSERT INTO blobs (sha256, size, data) VALUES (%s, %s, %b) "
                         "ON CONFLICT (sha256) DO NOTHING", (digest, len(data), data))


def copy_in(conn: Connection, sha256: str, path: Path) -> None:
    """Stream a file into the table in chunks (one binary ``COPY`` row), unless stored."""
    raw = conn.raw
    if raw.execute("SELECT 1 FROM blobs WHERE sha256 = %s", (sha256,)).fetchone():
        return
    key = sha256.encode()
    try:
        with open(path, "rb") as fh, raw.cursor() as cursor, cursor.copy(
                "COPY blobs (sha256, size, data) FROM STDIN (FORMAT BINARY)") as copy:
            size = os.fstat(fh.fileno()).st_size
            copy.write(_COPY_HEADER + struct.pack("!hi", 3, len(key)) + key
                       + struct.pack("!iqi", 8, size, size))
            left = size
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise StoreError(f"the staged download {path.name} shrank while stored")
                copy.write(chunk)
                left -= len(chunk)
            copy.write(struct.pack("!h", -1))
    except psycopg.errors.UniqueViolation:
        return  # another instance stored the same bytes meanwhile
    except OSError as exc:
        raise StoreError(f"cannot store an attachment: {exc.strerror or exc}") from exc


def fill_cache(conn: Connection, sha256: str, path: Path) -> int | None:
    """Fetch the bytes into ``path`` (temporary file, digest checked, rename) and return
    their size; nothing (None) when no row holds them (purged, or deleted meanwhile)."""
    raw = conn.raw
    row = raw.execute("SELECT size FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
    if row is None:
        return None
    size = int(row[0])
    tmp = path.with_name(f".{sha256}.{threading.get_ident()}.tmp")
    digest = hashlib.sha256()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            for offset in range(0, size, CHUNK):
                part = raw.execute("SELECT substring(data FROM %s FOR %s) FROM blobs "
                                   "WHERE sha256 = %s", (offset + 1, CHUNK, sha256),
                                   binary=True).fetchone()
                if part is None:
                    return None  # deleted while read: the bytes are gone
                data = bytes(part[0])
                fh.write(data)
                digest.update(data)
        if digest.hexdigest() != sha256:
            raise StoreError(f"the stored bytes of {sha256} do not match their digest")
        tmp.replace(path)
    except OSError as exc:
        raise StoreError(f"cannot cache an attachment: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return size


def file_size(path: Path) -> int | None:
    """The size of a cached file; None when there is no such file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def named(conn: Connection, digests: list[str]) -> set[str]:
    """The digests that an attachment names."""
    return {r[0] for r in conn.raw.execute(
        "SELECT DISTINCT sha256 FROM attachments WHERE sha256 = ANY(%s)", (digests,))}


def delete_unreferenced(conn: Connection, digests: list[str]) -> list[str]:
    """Delete the rows of these digests that no attachment names; the digests no attachment
    names (their cached files go too, and so do files of bytes stored before 0011)."""
    gone = sorted(set(digests) - named(conn, digests))
    if gone:
        conn.raw.execute("DELETE FROM blobs WHERE sha256 = ANY(%s) AND NOT EXISTS "
                         "(SELECT 1 FROM attachments a WHERE a.sha256 = blobs.sha256)",
                         (gone,))
    return gone


def present(conn: Connection, digests: list[str]) -> set[str]:
    """The digests the table holds."""
    return {r[0] for r in conn.raw.execute(
        "SELECT sha256 FROM blobs WHERE sha256 = ANY(%s)", (digests,))}


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A file found in the cache directory at start."""

    sha256: str
    size: int
    used: float  # when it was last read or written (atime, or mtime when later)


def cached_files(root: Path) -> list[CachedFile]:
    """The files of a cache directory, least recently used first (its ``.staging`` left
    alone). A file system mounted ``noatime`` gives the order they were written in."""
    found = []
    for folder, dirs, files in os.walk(root):
        if folder == str(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not is_digest(name):
                continue
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue  # removed meanwhile (or unreadable: left alone, not counted)
            found.append(CachedFile(name, st.st_size, max(st.st_atime, st.st_mtime)))
    found.sort(key=lambda f: f.used)
    return found


def gone_payloads(digests: list[str], limit: int) -> Iterator[str]:
    """Deleted digests as notification payloads of at most ``limit`` bytes each."""
    per = max(1, (limit + 1) // 65)
    for start in range(0, len(digests), per):
        yield ",".join(digests[start:start + per])
