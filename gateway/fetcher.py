"""The daemon's attachment fetcher: files given by URL, fetched after their message commits.

Run as one supervised loop of the daemon. It claims due fetches (``pending_fetches``,
written with their message), GETs each with the shared HTTP session under its media
source's rules (gateway/media.py) and stores the bytes in the blob store; the store job
that adds the attachment also emits ``message.updated``. Why each rule:

- redirects are never followed automatically: only to a host the source declares, and
  credentials go only to the source's origins and never after a redirect to another host
  (a provider's token must not reach whoever a URL in a payload points at);
- the body is streamed to a staging file and the fetch aborted past ``max_bytes``, so a
  huge or endless answer never costs more than the limit in memory or on disk;
- 408, 429, 5xx, timeouts and connection errors are retried with backoff and jitter
  (``Retry-After`` honoured) for up to ``MAX_ATTEMPTS`` attempts or ``MAX_AGE`` seconds;
  any other answer (a 4xx, a refused redirect, a file too large) fails the fetch for
  good, and the message shows the attachment with ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
import structlog
from prometheus_client import Counter, Gauge

from gateway.backoff import Backoff
from gateway.errors import StoreError
from gateway.http import redact_url, remote_error_excerpt, retry_after_seconds
from gateway.ids import new_id
from gateway.logging import info_event
from gateway.media import MediaSource, MediaSources, ResolveFailed
from gateway.metrics import Metrics
from gateway.store.base import FetchBacklog, MediaStore, PendingFetch, StoredAttachment
from gateway.supervisor import LoopGroup, SupervisedLoop
from normalizer.attachments import DEFAULT_CONTENT_TYPE, sanitize_content_type, sanitize_filename
from normalizer.urls import origin_of

log = structlog.get_logger(__name__)

CONCURRENCY = 4  # fetches in flight at once
MAX_ATTEMPTS = 12
MAX_AGE = 24 * 3600.0  # seconds after which a fetch that still fails is given up
MAX_REDIRECTS = 3
IDLE_WAIT = 30.0  # longest sleep without a wake-up (new fetches wake the loop at once)
BACKOFF = Backoff(base=1.0, cap=900.0)
TIMEOUT = aiohttp.ClientTimeout(total=600, connect=10, sock_connect=10, sock_read=60)
CHUNK = 64 * 1024


class FetchFailed(Exception):
    """A fetch that did not produce the file; ``retry`` says whether to try again."""

    def __init__(self, code: str, message: str, *, retry: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry = retry
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A file staged on disk, its digest, size and the answer's content type."""

    path: Path
    sha256: str
    size: int
    content_type: str | None


class MediaFetcher:
    """Claims, fetches and stores pending attachment fetches; see the module docstring."""

    def __init__(self, store: MediaStore, sources: MediaSources, metrics: Metrics, *,
                 max_bytes: int, backoff: Backoff = BACKOFF) -> None:
        self.store = store
        self.sources = sources
        self.max_bytes = max_bytes
        self.backoff = backoff
        self.http: aiohttp.ClientSession | None = None
        self.loops = LoopGroup()
        self.backlog: dict[str, FetchBacklog] = {}
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self.outcomes = Counter("omnirelay_media_fetches_total",
                                "Attachment fetch attempts by outcome (stored, retried, failed)",
                                ["outcome"], registry=metrics.registry)
        self.pending = Gauge("omnirelay_media_fetches_pending",
                             "Attachments given by URL and not yet fetched",
                             registry=metrics.registry)

    def start(self, http: aiohttp.ClientSession) -> None:
        """Start the supervised fetch loop (after the adapters registered their sources)."""
        self.http = http
        self.loops.supervise("media-fetch", self.run)

    async def stop(self) -> None:
        """Cancel the loop; fetches in flight go back to pending at the next start."""
        await self.loops.stop()

    def wake(self) -> None:
        """New fetches were committed: look now instead of at the next due time."""
        self._wake.set()

    def health(self, prefix: str) -> dict[str, object]:
        """``/v1/channels``' ``media`` of one account: fetches not yet done, latest error."""
        pending = 0
        last_error = None
        for name, backlog in self.backlog.items():
            if name == prefix or name.startswith(prefix + "/"):
                pending += backlog.pending
                last_error = backlog.last_error or last_error
        return {"pending": pending, "last_error": last_error}

    async def run(self, loop: SupervisedLoop) -> None:
        """The loop body: recover, then claim and fetch until cancelled."""
        await self.store.recover_fetches()
        await asyncio.to_thread(_clear_staging, self.store.staging_path(""))
        tasks: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self._wake.set()  # room for another fetch

        try:
            while True:
                self._wake.clear()
                room = CONCURRENCY - len(tasks)
                claimed = await self.store.claim_fetches(room) if room > 0 else []
                for item in claimed:
                    task = asyncio.create_task(self._attempt(item),
                                               name=f"media-fetch:{item.id}")
                    tasks.add(task)
                    task.add_done_callback(finished)
                await self._refresh_backlog()
                loop.ok()
                if len(tasks) >= CONCURRENCY:
                    await self._wake.wait()
                    continue
                if claimed:
                    continue  # more may be due
                due = await self.store.next_fetch_due()
                wait = IDLE_WAIT if due is None else min(IDLE_WAIT, due - time.time())
                if wait > 0:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a
                    # cancellation that arrives as the wake-up does, and stop() would hang.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh_backlog(self) -> None:
        self.backlog = await self.store.fetch_backlog()
        self.pending.set(sum(b.pending for b in self.backlog.values()))

    async def _attempt(self, item: PendingFetch) -> None:
        """One attempt at one fetch, ending in done, retry or failed (never raising)."""
        filename = _filename(item)
        try:
            source = self.sources.get(item.source)
            if source is None:
                raise FetchFailed("media_source_unavailable",
                                  f"media source {item.source!r} is not running", retry=True)
            downloaded = await self._download(item, source)
            try:
                await self.store.put_blob_file(downloaded.path, downloaded.sha256)
            finally:
                await asyncio.to_thread(downloaded.path.unlink, missing_ok=True)
            content_type = sanitize_content_type(
                item.content_type or downloaded.content_type or DEFAULT_CONTENT_TYPE)
            attachment = StoredAttachment(new_id("att"), filename, content_type,
                                          downloaded.size, downloaded.sha256)
            message = await self.store.fetch_done(item.id, attachment)
            self.outcomes.labels("stored").inc()
            if message is not None:
                info_event("media.stored", message_id=item.message_id, attachment_id=attachment.id,
                           size=downloaded.size, source=item.source)
        except FetchFailed as exc:
            await self._failed(item, filename, exc)
        except StoreError as exc:  # a full disk: the fetch stays and is tried again
            await self._failed(item, filename, FetchFailed("store_unavailable", exc.message,
                                                           retry=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not stop the other fetches
            log.exception("media.fetch_crashed", fetch_id=item.id)
            await self._failed(item, filename, FetchFailed(
                "fetch_error", f"{type(exc).__name__}: {exc}"[:300], retry=True))

    async def _failed(self, item: PendingFetch, filename: str, exc: FetchFailed) -> None:
        age = time.time() - item.created_at
        if exc.retry and item.attempts < MAX_ATTEMPTS and age < MAX_AGE:
            delay = self.backoff.delay(item.attempts, exc.retry_after)
            self.outcomes.labels("retried").inc()
            log.warning("media.fetch_retry", fetch_id=item.id, message_id=item.message_id,
                        url=redact_url(item.url), attempt=item.attempts, error=exc.message,
                        retry_in=round(delay, 2))
            with contextlib.suppress(StoreError):  # else: pending again at the next start
                await self.store.fetch_retry(item.id, delay, exc.message)
            return
        self.outcomes.labels("failed").inc()
        log.warning("media.fetch_failed", fetch_id=item.id, message_id=item.message_id,
                    url=redact_url(item.url), attempts=item.attempts, error=exc.message)
        content_type = sanitize_content_type(item.content_type or DEFAULT_CONTENT_TYPE)
        with contextlib.suppress(StoreError):
            await self.store.fetch_failed(item.id, filename, content_type,
                                          {"code": exc.code, "message": exc.message})

    async def _download(self, item: PendingFetch, source: MediaSource) -> Downloaded:
        """GET the file under the source's rules, streamed to a staging file."""
        assert self.http is not None
        url = item.url
        first_origin = origin_of(url)
        if first_origin is None or not source.allows(url):
            raise FetchFailed("media_host_refused", "the URL is not on the source's hosts",
                              retry=False)
        credentials: Mapping[str, str] = (await source.credentials()
                                          if source.credentials is not None else {})
        resolved = None
        if source.resolve is not None:  # the real URL may carry a credential: never shown
            url = resolved = await _resolved(url, source)
            first_origin = origin_of(url)
            if first_origin is None or not source.allows(url):
                raise FetchFailed("media_host_refused", "the resolved URL is not on the "
                                  "source's hosts", retry=False)
        for _hop in range(MAX_REDIRECTS + 1):
            origin = origin_of(url)
            # Credentials only to the provider's own hosts, and never once a redirect left
            # the first origin (even for a CDN the source declares).
            headers = dict(credentials) if origin == first_origin else {}
            # The file as stored, not a compressed copy; were it compressed anyway, the
            # limit counts the decompressed bytes, so a small bomb cannot fill the disk.
            headers["Accept-Encoding"] = "identity"
            try:
                async with self.http.get(url, headers=headers, allow_redirects=False,
                                         timeout=TIMEOUT) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        url = _redirect_target(url, response, source)
                        continue
                    if response.status != 200:
                        raise _status_error(response.status,
                                            response.headers.get("Retry-After"),
                                            await _excerpt(response))
                    return await self._stream(item, response)
            except (TimeoutError, aiohttp.ClientError) as exc:
                shown = item.url if url == resolved else url
                raise FetchFailed("media_unreachable",
                                  f"{type(exc).__name__}: {redact_url(shown)}", retry=True
                                  ) from exc
        raise FetchFailed("media_redirected", f"more than {MAX_REDIRECTS} redirects",
                          retry=False)

    async def _stream(self, item: PendingFetch,
                      response: aiohttp.ClientResponse) -> Downloaded:
        declared = response.content_length
        if declared is not None and declared > self.max_bytes:
            raise FetchFailed("attachment_too_large",
                              f"the file is {declared} bytes; the limit is {self.max_bytes}",
                              retry=False)
        path = self.store.staging_path(f"{item.id}-{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        handle: BinaryIO = await asyncio.to_thread(_open_staging, path)
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > self.max_bytes:  # aborted: the rest is never read
                    raise FetchFailed("attachment_too_large",
                                      f"the file is over the limit of {self.max_bytes} bytes",
                                      retry=False)
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
        except BaseException:
            await asyncio.to_thread(_discard, handle, path)
            raise
        content_type = response.headers.get("Content-Type")
        return Downloaded(path, digest.hexdigest(), size, content_type)


async def _resolved(url: str, source: MediaSource) -> str:
    """The download URL the source's lookup gives for ``url`` (see MediaSource.resolve)."""
    assert source.resolve is not None
    try:
        return await source.resolve(url)
    except ResolveFailed as exc:
        code = exc.code or ("media_unavailable" if exc.retry else "media_refused")
        raise FetchFailed(code, exc.message[:300], retry=exc.retry,
                          retry_after=exc.retry_after) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise FetchFailed("media_unreachable", f"{type(exc).__name__}: {redact_url(url)}",
                          retry=True) from exc


def _redirect_target(url: str, response: aiohttp.ClientResponse, source: MediaSource) -> str:
    """The redirect's absolute target when the source declares its host, else a failure."""
    location = response.headers.get("Location")
    target = urljoin(url, location) if location else ""
    origin = origin_of(target) if target else None
    if origin is None or origin not in source.redirect_origins:
        raise FetchFailed("media_redirected",
                          f"answered {response.status}, a redirect to a host the provider "
                          f"does not declare ({origin or 'none'}); not followed",
                          retry=False)
    return target


def _status_error(status: int, retry_after: str | None, excerpt: str) -> FetchFailed:
    if status in (408, 425, 429) or status >= 500:
        return FetchFailed("media_unavailable", remote_error_excerpt(status, excerpt),
                           retry=True, retry_after=retry_after_seconds(retry_after))
    return FetchFailed("media_refused", remote_error_excerpt(status, excerpt), retry=False)


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    """The start of an error answer: enough to diagnose, never the whole page."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        return (await response.content.read(800)).decode("utf-8", errors="replace")
    return ""


def _filename(item: PendingFetch) -> str:
    """The hint, else the URL's last path segment, cleaned (normalizer/attachments.py)."""
    if item.filename:
        return sanitize_filename(item.filename)
    try:
        segment = unquote(urlsplit(item.url).path.rsplit("/", 1)[-1])
    except ValueError:
        segment = ""
    return sanitize_filename(segment)


def _open_staging(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")


def _discard(handle: BinaryIO, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def _clear_staging(folder: Path) -> None:
    """Partial downloads of a process that died: their fetches start over."""
    if folder.is_dir():
        for leftover in folder.glob("*.part"):
            leftover.unlink(missing_ok=True)
