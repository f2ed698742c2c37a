"""Settings of an API-channel account."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.base import AdapterConfig
from gateway.config import Secret

if TYPE_CHECKING:
    from gateway.config import Section


@dataclass(frozen=True, slots=True)
class ApiConfig(AdapterConfig):
    """``secret`` signs inbound and callbacks; no ``callback_url``: replies stay in the feed."""

    secret: Secret | None = None
    callback_url: str | None = None
    timeout: float = 10.0
    send_concurrency: int = 4
    send_rate: float | None = None

    @classmethod
    def parse(cls, section: Section) -> ApiConfig:
        """Read ``secret*``, ``callback_url``, ``timeout`` and the send limits."""
        secret = section.secret("secret")
        callback = section.get("callback_url", str, None)
        if callback is not None and not re.match(r"https?://", callback):
            section.error("callback_url", "must be an http(s) URL")
        if callback and secret is None:
            section.error("secret_file", "is required with callback_url",
                          "the receiver verifies callbacks with it")
        timeout = float(section.get("timeout", (int, float), 10.0))
        concurrency = section.get("send_concurrency", int, 4)
        rate = section.get("send_rate", (int, float), None)
        return cls(secret, callback, timeout, concurrency,
                   None if rate is None else float(rate))
