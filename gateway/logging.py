"""structlog setup: JSON lines for journald, console rendering on a TTY, secrets masked."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import orjson
import structlog

_SECRET_WORDS = ("secret", "token", "password", "authorization", "api_key")


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if _is_secret_key(key) and event[key] is not None:
            event[key] = "********"
    return event


_level = logging.INFO


def info_enabled() -> bool:
    """Whether info events are written: lets a per-message path skip building one."""
    return _level <= logging.INFO


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the standard library to write one JSON event per line."""
    global _level
    numeric = getattr(logging, level.upper(), logging.INFO)
    _level = numeric
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    # JSON lines go out as the bytes orjson makes, not decoded and re-encoded by print().
    renderer: Any = (structlog.dev.ConsoleRenderer() if use_console
                     else structlog.processors.JSONRenderer(serializer=_orjson_dumps))
    factory: Any = (structlog.PrintLoggerFactory(sys.stdout) if use_console
                    else structlog.BytesLoggerFactory(sys.stdout.buffer))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiohttp access logs, aiosmtpd) go through the same JSON lines.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_StdlibJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))


def _orjson_dumps(obj: Any, **_kw: Any) -> bytes:
    return orjson.dumps(obj, default=str)


class _StdlibJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"event": record.getMessage(), "logger": record.name,
                   "level": record.levelname.lower(),
                   "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")}
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload).decode()
