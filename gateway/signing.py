"""Omnirelay's webhook signature: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

Used for outbound webhooks, API-channel callbacks and signed API-channel inbound. The
timestamp is part of the signed text so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hmac
import time

TOLERANCE_SECONDS = 300


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """Return the ``Omnirelay-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), b"%d." % t + body, "sha256").hexdigest()
    return f"t={t},v1={mac}"


def verify(header: str | None, secret: str, body: bytes, *,
           tolerance: int = TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """Check a signature header; any ``v1`` entry may match (secret rotation)."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    # Not hmac.digest(): it always releases the GIL, and on a busy daemon getting it back
    # costs far more than the hash (hmac.new releases it only for bodies over 2 KiB).
    expected = hmac.new(secret.encode(), b"%d." % timestamp + body, "sha256").hexdigest()
    return any(hmac.compare_digest(expected, c) for c in candidates)
