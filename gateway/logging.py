"""Logging: JSON lines for journald (console on a TTY), secrets masked, written off the loop.

Every JSON line (structlog's, the standard library's such as aiohttp's, and the per-message
fast path :func:`info_event`) is rendered once by orjson on the calling thread and queued for
one writer thread, which writes whatever has queued up with one system call. The loop thus
pays for rendering only, not for a write per line; lines keep the order in which they were
logged (one queue, one writer). The queue is bounded: see :data:`MAX_QUEUED_LINES`.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import re
import select
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.osthread import NamedThread

_SECRET_WORDS = ("secret", "token", "password", "authorization", "api_key")
MASK = "********"

# Lines waiting for the writer thread. At ~250 bytes a line this is about 25 MB, several
# seconds of logs of a busy daemon: enough to ride out a slow journald. Beyond it lines are
# dropped, counted, and reported in a ``log.lines_dropped`` line and a metric once the
# writer catches up: a stalled stdout must not stall the daemon's messages (they are in the
# store and the feed; the log line is the secondary record).
MAX_QUEUED_LINES = 100_000
# At most this many lines go into one write(); the rest wait for the next one.
_BATCH_LINES = 4096
# How long an exiting process waits for the writer to write out what is queued.
_EXIT_FLUSH_SECONDS = 5.0

_JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


# Secrets inside free text: third-party messages (aiohttp quotes a malformed header line
# verbatim), exception text, error strings holding a URL. Each pattern starts at a literal
# and has no two quantifiers over the same characters next to each other, so the scan is
# linear in the text whatever a client sends (the text can come from a hostile request).
_SECRET_TEXT = re.compile(
    # an Authorization header: "Authorization: Bearer x", '"authorization": "Basic x"', an
    # optional scheme word, then the credential, whatever its length
    r"(?P<header>\b(?:proxy-)?authorization\b[\"']?[ \t]{0,4}[:=][ \t]{0,4}[\"']?"
    r"(?:[a-z][\w.-]{0,31}[ \t]{1,8})?)[^\s'\"]+"
    # a garbled header line ("Authorization Bearer x", "...\\x01 Bearer x"): a credential
    # of 8 characters or more (so prose such as "invalid bearer token" stays readable)
    r"|(?P<loose>\b(?:authorization|bearer)[ \t]{1,8}(?:[a-z][\w.-]{0,31}[ \t]{1,8})?)"
    r"[^\s'\"]{8,}"
    # key=value, key: value, "key": "value" with a secret-sounding key
    r"|(?P<pair>(?<![\w-])[\w-]*(?:secret|token|passw(?:or)?d|api[_-]?key)[\"']?"
    r"[ \t]{0,4}[=:][ \t]{0,4}[\"']?)[^\s'\"&]+"
    # the password of a URL's user info: scheme://user:password@host
    r"|(?P<userinfo>://[^/\s:@]{0,256}:)[^/\s@]{1,256}@",
    re.IGNORECASE)


def _mask_match(match: re.Match[str]) -> str:
    kind = match.lastgroup
    assert kind is not None
    return match.group(kind) + MASK + ("@" if kind == "userinfo" else "")


def mask_text(text: str) -> str:
    """``text`` with credentials (headers, bearer tokens, secret pairs, URL passwords) masked."""
    return _SECRET_TEXT.sub(_mask_match, text)


def mask_secrets(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Mask values under secret-sounding keys, and credentials inside any text value."""
    for key, value in event.items():
        if value is None:
            continue
        if _is_secret_key(key):
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = mask_text(value)
    return event


# ------------------------------------------------------------------------ the writer


class LineWriter:
    """Writes queued lines to a file descriptor from its own thread, in order, in batches.

    :meth:`put` is what a logging call pays: a size check and a queue append (no lock, no
    system call). The thread wakes when the queue goes from empty to not empty and takes
    everything queued by then, so a busy daemon writes hundreds of lines per system call.
    """

    def __init__(self, fd: int, max_lines: int = MAX_QUEUED_LINES) -> None:
        self.fd = fd
        self.max_lines = max_lines
        self._queue: queue.SimpleQueue[bytes | threading.Event] = queue.SimpleQueue()
        self._drop_lock = threading.Lock()
        self.dropped = 0  # lines refused because the queue was full, since start
        self._reported = 0  # of those, how many a ``log.lines_dropped`` line has told
        self._direct = False  # set at exit: write at once, the thread may be gone
        self._thread = NamedThread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, line: bytes) -> None:
        """Queue one rendered line (ending in a newline) for writing."""
        if self._direct:
            self._write(line)
        elif self._queue.qsize() < self.max_lines:
            self._queue.put(line)
        else:
            with self._drop_lock:
                self.dropped += 1

    def flush(self, timeout: float) -> bool:
        """Wait until every line queued before this call is written (False on timeout)."""
        if not self._thread.is_alive():
            self._drain_here()
            return True
        if threading.current_thread() is self._thread:
            return False
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float = _EXIT_FLUSH_SECONDS) -> None:
        """At exit: write out what is queued, then write any later line at once."""
        self.flush(timeout)
        self._direct = True

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            items = [get()]
            try:
                while len(items) < _BATCH_LINES:
                    items.append(get_nowait())
            except queue.Empty:
                pass
            self._write_batch(items)

    def _drain_here(self) -> None:
        items: list[bytes | threading.Event] = []
        try:
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        self._write_batch(items)

    def _write_batch(self, items: list[bytes | threading.Event]) -> None:
        lines = [item for item in items if isinstance(item, bytes)]
        if lines:
            self._write(b"".join(lines))
        if self.dropped != self._reported:
            with self._drop_lock:
                count, self._reported = self.dropped - self._reported, self.dropped
            self._write(_render({"dropped": count, "event": "log.lines_dropped",
                                 "level": "warning", "timestamp": datetime.now(UTC),
                                 "hint": "stdout did not keep up; the queue was full"}))
        for item in items:  # flush() returns once what came before its marker is written
            if isinstance(item, threading.Event):
                item.set()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # a non-blocking stdout that is full: wait for room
                select.select([], [self.fd], [], 1.0)
                continue
            except OSError:  # stdout is gone (EPIPE, EBADF): nowhere to write to
                return
            view = view[written:]


def _render(fields: Mapping[str, object]) -> bytes:
    return orjson.dumps(fields, default=str, option=_JSON_OPTIONS)


_writer: LineWriter | None = None


def _line_writer() -> LineWriter:
    """The process's one writer, on stdout's descriptor (started on first use)."""
    global _writer
    if _writer is None:
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # replaced (captured) or closed stdout
            fd = 1
        _writer = LineWriter(fd)
        atexit.register(_writer.close)
    return _writer


def flush_logs(timeout: float = _EXIT_FLUSH_SECONDS) -> bool:
    """Write out every queued line (before an exit the caller makes without ``atexit``)."""
    return _writer.flush(timeout) if _writer is not None else True


def lines_dropped() -> int:
    """Lines dropped because the queue was full (stdout did not keep up), since start."""
    return _writer.dropped if _writer is not None else 0


class _QueuedLogger:
    """structlog's logger for JSON lines: hands the rendered bytes to the writer."""

    def __init__(self, writer: LineWriter) -> None:
        self._put = writer.put

    def msg(self, message: bytes) -> None:
        self._put(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _QueuedHandler(logging.Handler):
    """Standard-library records (aiohttp, aiosmtpd) as the same JSON lines, masked."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._put = writer.put

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._put(_render(_stdlib_fields(record)))
        except Exception:
            self.handleError(record)


class _ConsoleHandler(logging.StreamHandler[TextIO]):
    """Standard-library records on a terminal: the JSON fields, one line, masked."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_stdlib_fields(record), default=str, option=orjson.OPT_UTC_Z
                            ).decode()


def _stdlib_fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "event": mask_text(record.getMessage()), "logger": record.name,
        "level": record.levelname.lower(),
        "timestamp": datetime.fromtimestamp(record.created, UTC)}
    if record.exc_info:
        fields["exception"] = mask_text(logging.Formatter().formatException(record.exc_info))
    return fields


# ------------------------------------------------------------------------ configuration

_level = logging.INFO
_console = False


def info_enabled() -> bool:
    """Whether info events are written: lets a per-message path skip building one."""
    return _level <= logging.INFO


def info_event(event: str, **fields: str | int | None) -> None:
    """Log one info event cheaply: the per-message lines (``ingest.stored``).

    The line is the one structlog writes for ``log.info(event, **fields)`` (fields, then
    ``event``, ``level``, ``timestamp``; secret keys masked), rendered with one orjson call
    and queued; structlog's processor chain costs about ten times as much. For ids and names
    only: free text goes through structlog, whose masking also scans text values.
    """
    if _level > logging.INFO:
        return
    if _console:
        structlog.get_logger("gateway").info(event, **fields)
        return
    for key in fields:
        if _is_secret_key(key) and fields[key] is not None:
            fields[key] = MASK
    line = {**fields, "event": event, "level": "info", "timestamp": datetime.now(UTC)}
    _line_writer().put(orjson.dumps(line, default=str, option=_JSON_OPTIONS))


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the standard library to write one JSON event per line."""
    global _level, _console
    numeric = getattr(logging, level.upper(), logging.INFO)
    _level = numeric
    _console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer: Processor
    factory: Callable[..., WrappedLogger]
    handler: logging.Handler
    if _console:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(sys.stdout)
        handler = _ConsoleHandler(sys.stdout)
    else:
        writer = _line_writer()
        # JSON lines go out as the bytes orjson makes, not decoded and re-encoded.
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        factory = functools.partial(_QueuedLogger, writer)
        handler = _QueuedHandler(writer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_secrets,  # after the exception is text, so that text is masked too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: factory(),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiohttp's parser errors, aiosmtpd) go through the same lines.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))


def _orjson_dumps(obj: EventDict, **_kw: object) -> bytes:
    return orjson.dumps(obj, default=str, option=_JSON_OPTIONS)
