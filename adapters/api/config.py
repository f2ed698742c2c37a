"""Settings of an API-channel account."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.base import AdapterConfig
from gateway.configkit import Secret
from gateway.media import InvalidOrigin, parse_origin

if TYPE_CHECKING:
    from gateway.configkit import Section


@dataclass(frozen=True, slots=True)
class ApiConfig(AdapterConfig):
    """``secret`` signs inbound and callbacks; no ``callback_url``: replies stay in the feed."""

    secret: Secret | None = None
    callback_url: str | None = None
    timeout: float = 10.0
    media_hosts: frozenset[str] = frozenset()  # origins attachments may be fetched from

    @classmethod
    def parse(cls, section: Section) -> ApiConfig:
        """Read ``secret*``, ``callback_url``, ``timeout`` and ``media_hosts``."""
        secret = section.secret("secret")
        callback = section.get("callback_url", str, None)
        if callback is not None and not re.match(r"https?://", callback):
            section.error("callback_url", "must be an http(s) URL")
        given = any(k in section.data for k in ("secret", "secret_file", "secret_env",
                                                "secret_credential"))
        if callback and secret is None and not given:  # else its own error says what is wrong
            section.error("secret_file", "is required with callback_url",
                          "the receiver verifies callbacks with it")
        timeout = float(section.get("timeout", (int, float), 10.0))
        return cls(secret, callback, timeout, _media_hosts(section))


def _media_hosts(section: Section) -> frozenset[str]:
    """``media_hosts``: origins (``https://files.crm.example``; a bare host means https)."""
    origins = set()
    for value in section.str_list("media_hosts"):
        try:
            origins.add(parse_origin(value))
        except InvalidOrigin as exc:
            section.error("media_hosts", f"{value!r} {exc}",
                          'e.g. media_hosts = ["https://files.crm.example"]')
    return frozenset(origins)
