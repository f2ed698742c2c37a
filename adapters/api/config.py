"""Settings of an API-channel account."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.base import AdapterConfig
from gateway.configkit import Secret

if TYPE_CHECKING:
    from gateway.configkit import Section


@dataclass(frozen=True, slots=True)
class ApiConfig(AdapterConfig):
    """``secret`` signs inbound and callbacks; no ``callback_url``: replies stay in the feed."""

    secret: Secret | None = None
    callback_url: str | None = None
    timeout: float = 10.0

    @classmethod
    def parse(cls, section: Section) -> ApiConfig:
        """Read ``secret*``, ``callback_url`` and ``timeout``."""
        secret = section.secret("secret")
        callback = section.get("callback_url", str, None)
        if callback is not None and not re.match(r"https?://", callback):
            section.error("callback_url", "must be an http(s) URL")
        if callback and secret is None:
            section.error("secret_file", "is required with callback_url",
                          "the receiver verifies callbacks with it")
        timeout = float(section.get("timeout", (int, float), 10.0))
        return cls(secret, callback, timeout)
