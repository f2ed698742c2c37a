"""This instance's copies of attachment bytes (``<data_dir>/blobs`` on PostgreSQL) held to a
disk budget: the least recently read files go first (docs/postgresql.md, "Cache size").

Every cached file is a copy of a ``blobs`` row, so a removed one is fetched again on its
next read. The index (digest → size, least recently used first) lives on the event loop;
files are removed on a thread. What keeps a removal from pulling a file from under a reader:

- A file is *held* while the store looks it up, fills or writes it, and *pinned* for
  ``pin_seconds`` after ``blob_file`` handed its path out: the caller opens it within that
  time, and a file once open is read to its end even when removed (POSIX unlink).
- Victims are chosen on the loop and leave the index at once. Looking up a digest whose
  removal is under way waits for it, then fetches the bytes again: a reader never gets a
  path that a removal is about to take, and a late removal never deletes a fresh copy.

Nothing is removed before the start-up sweep has looked the files it found up: only those
with a row (or copied in), and those this instance cached since, are in the index; bytes
that exist only as a file (a shared directory from before migration 0011, not copied in)
are never removed. ``.staging`` is never indexed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PIN_SECONDS = 30.0  # a handed-out path stays for this long (opened within it by any caller)
LOW_WATER = 0.9  # a pass removes files down to this share of the budget


class BlobCache:
    """The cache's size and recency, and the eviction passes that keep it to
    ``max_bytes`` (0: no limit; the size is still counted)."""

    def __init__(self, path_of: Callable[[str], Path], max_bytes: int, *,
                 pin_seconds: float = PIN_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path_of = path_of
        self.max_bytes = max_bytes
        self.pin_seconds = pin_seconds
        self.clock = clock
        self.size_bytes = 0  # of the indexed files (the gauge)
        self.evicted_files = 0  # removed to keep to the budget (the counter)
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._oversize: set[str] = set()  # indexed files larger than the whole budget
        self._held: Counter[str] = Counter()
        self._pinned_until: OrderedDict[str, float] = OrderedDict()  # soonest to end first
        self._removing: dict[str, asyncio.Future[None]] = {}
        self._passes: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False  # no pass before the start-up sweep has seeded the index
        self._strangers: set[str] = set()  # files found at start that are no copies

    def __contains__(self, digest: object) -> bool:
        return digest in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def copies(self) -> list[str]:
        """The digests of the files counted (copies of rows), least recently used first."""
        return list(self._sizes)

    @contextlib.asynccontextmanager
    async def held(self, digests: Iterable[str]) -> AsyncIterator[None]:
        """Hold the files of ``digests`` while the caller looks them up or writes them: a
        removal under way finishes first, and no pass chooses them meanwhile."""
        wanted = list(dict.fromkeys(digests))
        while pending := {self._removing[d] for d in wanted if d in self._removing}:
            await asyncio.wait(pending)
        self._held.update(wanted)  # no await since the check: no pass came between
        try:
            yield
        finally:
            self._held.subtract(wanted)
            for digest in wanted:
                if self._held[digest] <= 0:
                    del self._held[digest]

    def used(self, digest: str, size: int, *, fetched: bool) -> None:
        """A file handed out to a reader (``fetched`` from the table just now, or found):
        the most recently used, pinned for a while."""
        if digest in self._strangers and not fetched:
            return  # its bytes may exist only as this file
        if self.max_bytes > 0:
            now = self.clock()
            self._unpin(now)
            self._pinned_until[digest] = now + self.pin_seconds
            self._pinned_until.move_to_end(digest)
        self.added(digest, size)

    def added(self, digest: str, size: int) -> None:
        """A file is in the cache and its bytes in the table (stored, fetched): counted,
        most recently used; a pass starts when the cache is over its budget."""
        self._strangers.discard(digest)
        self._index(digest, size)
        self._check()

    def forget(self, digests: Iterable[str]) -> None:
        """Files removed because their bytes were deleted (retention, erasure)."""
        for digest in digests:
            self._drop(digest)
            self._pinned_until.pop(digest, None)

    def seed(self, found: list[tuple[str, int]], strangers: Iterable[str] = ()) -> None:
        """Files found at start whose bytes the table holds, least recently used first:
        older than any file used since (those are indexed already). ``strangers``: files
        found that are no copies (or were not looked up): never removed, not counted."""
        self._strangers.update(strangers)
        self.forget(self._strangers)
        self._counted = True
        for digest, size in reversed(found):
            if digest in self._sizes or digest in self._removing or digest in self._strangers:
                continue
            self._index(digest, size)
            self._sizes.move_to_end(digest, last=False)
        self._check()

    async def idle(self) -> None:
        """Wait until the passes under way have removed their files."""
        while self._passes:
            await asyncio.wait(set(self._passes))

    async def close(self) -> None:
        """No more passes; those under way finish (their thread would anyway)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.max_bytes = 0
        await self.idle()

    def _check(self) -> None:
        """Start a pass when over budget; come back when pins held the cache over it."""
        if not self._counted or self.max_bytes <= 0 or self.size_bytes <= self.max_bytes:
            return
        victims = self._victims()
        if victims:
            future = asyncio.get_running_loop().create_future()
            for digest, _size in victims:
                self._removing[digest] = future
            task = asyncio.create_task(self._remove(victims, future), name="blob-cache-evict")
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)
        if self.size_bytes > self.max_bytes and self._timer is None and self._pinned_until:
            delay = max(0.0, next(iter(self._pinned_until.values())) - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        self._check()

    def _index(self, digest: str, size: int) -> None:
        """Count a file as the most recently used."""
        self._drop(digest)
        self._sizes[digest] = size
        self.size_bytes += size
        if size > self.max_bytes > 0:
            self._oversize.add(digest)

    def _drop(self, digest: str) -> None:
        self.size_bytes -= self._sizes.pop(digest, 0)
        self._oversize.discard(digest)

    def _unpin(self, now: float) -> None:
        """Forget the pins that ran out (every pin lasts as long: the oldest end first)."""
        while self._pinned_until:
            digest, until = next(iter(self._pinned_until.items()))
            if until > now and digest in self._sizes:
                break
            del self._pinned_until[digest]

    def _victims(self) -> list[tuple[str, int]]:
        """The files a pass removes (out of the index at once): unpinned files larger than
        the whole budget, then the least recently used down to ``LOW_WATER``. A pinned file
        larger than the budget is not made room for: it goes itself once unpinned."""
        self._unpin(self.clock())
        pinned = self._pinned_until.keys() | self._held.keys()
        victims = [(d, self._sizes[d]) for d in self._oversize if d not in pinned]
        passing = sum(self._sizes[d] for d in self._oversize if d in pinned)
        excess = (self.size_bytes - passing - sum(size for _d, size in victims)
                  - int(self.max_bytes * LOW_WATER))
        if excess > 0:
            for digest, size in self._sizes.items():
                if excess <= 0:
                    break
                if digest in pinned or digest in self._oversize:
                    continue
                victims.append((digest, size))
                excess -= size
        for digest, _size in victims:
            self._drop(digest)
        return victims

    async def _remove(self, victims: list[tuple[str, int]], done: asyncio.Future[None]) -> None:
        """One pass: unlink the victims on a thread, then log what went."""
        try:
            files, freed = await asyncio.to_thread(
                _unlink_all, [(self.path_of(d), size) for d, size in victims])
        finally:
            for digest, _size in victims:
                if self._removing.get(digest) is done:
                    del self._removing[digest]
            done.set_result(None)
        self.evicted_files += files
        log.info("store.blob_cache_evicted", files=files, bytes=freed,
                 cache_bytes=self.size_bytes, max_bytes=self.max_bytes)


def _unlink_all(files: list[tuple[Path, int]]) -> tuple[int, int]:
    """Remove cached files: (files removed, their bytes). One already gone (removed by
    hand) is not counted; one that cannot be removed stays, out of the index, until the
    next start counts it again."""
    removed = freed = 0
    for path, size in files:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("store.blob_cache_evict_failed", path=str(path), error=str(exc))
            continue
        removed += 1
        freed += size
    return removed, freed
