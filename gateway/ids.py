"""Prefixed, time-sortable identifiers (``msg_…``, ``cnv_…``) and timestamps."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

# Crockford base32 (sorts like the numbers). Digits are looked up two at a time (10 bits)
# from a table: base64.b32encode is pure Python on 3.11 and several times slower.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_last_time_digits = ""
# Randomness for new ids, read from the OS 4 KiB at a time: one getrandom() call per id
# was a system call (and a release of the GIL) per millisecond on the store's writer.
_POOL_BYTES = 4096
_pool = b""
_pool_at = 0


def _random_79() -> int:
    """79 random bits from the OS's CSPRNG (call with ``_lock`` held)."""
    global _pool, _pool_at
    if _pool_at + 10 > len(_pool):
        _pool, _pool_at = os.urandom(_POOL_BYTES), 0
    chunk = _pool[_pool_at:_pool_at + 10]
    _pool_at += 10
    return int.from_bytes(chunk, "big") >> 1


def _base32_80(value: int) -> str:
    """An 80-bit number as 16 Crockford base32 digits."""
    p = _PAIRS
    return (p[value >> 70 & 1023] + p[value >> 60 & 1023] + p[value >> 50 & 1023]
            + p[value >> 40 & 1023] + p[value >> 30 & 1023] + p[value >> 20 & 1023]
            + p[value >> 10 & 1023] + p[value & 1023])


def new_id(prefix: str) -> str:
    """Return ``prefix_`` + a 26-character ULID that sorts by creation time.

    Within one millisecond the random part is incremented, so ids made by one process
    sort in creation order (monotonic ULID).
    """
    global _last_ms, _last_rand, _last_time_digits
    with _lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            _last_rand += 1
        else:
            _last_ms = now
            _last_rand = _random_79()
            # 48-bit time as 10 digits (the first holds 3 bits), once per millisecond.
            _last_time_digits = _base32_80(now)[6:]
        time_digits, rand = _last_time_digits, _last_rand
    return f"{prefix}_{time_digits}{_base32_80(rand)}"


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """Format a datetime as the contract's ``2026-11-22T10:00:00.000Z``."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    # Not strftime: it drops the zero padding of years before 1000 on glibc.
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z")


