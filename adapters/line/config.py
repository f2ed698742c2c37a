"""Settings of a LINE Official Account (Messaging API channel)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapters.base import AdapterConfig
from gateway.configkit import Secret

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.configkit import Section

DEFAULT_API = "https://api.line.me"
DEFAULT_DATA_API = "https://api-data.line.me"


@dataclass(frozen=True, slots=True)
class LineConfig(AdapterConfig):
    """The channel secret checks webhooks; the channel access token sends and downloads."""

    channel_secret: Secret
    channel_access_token: Secret
    api_base_url: str = DEFAULT_API
    data_api_base_url: str = DEFAULT_DATA_API
    timeout: float = 10.0
    profile_timeout: float = 1.5
    profile_cache_seconds: float = 86400.0
    keep_unsent_text: bool = False

    example: ClassVar[Mapping[str, object]] = {
        "channel_secret": "0123456789abcdef0123456789abcdef",
        "channel_access_token": "example-long-lived-channel-access-token"}

    @classmethod
    def parse(cls, section: Section) -> LineConfig:
        """Read the two secrets, the API base URLs, timeouts and the unsend policy."""
        secret = required_secret(section, "channel_secret",
                                 "the Basic settings tab of the channel in the LINE "
                                 "Developers Console")
        token = required_secret(section, "channel_access_token",
                                "a long-lived channel access token (Messaging API tab)")
        api = base_url(section, "api_base_url", DEFAULT_API)
        data_api = base_url(section, "data_api_base_url", DEFAULT_DATA_API)
        timeout = float(section.get("timeout", (int, float), 10.0))
        profile_timeout = float(section.get("profile_timeout", (int, float), 1.5))
        cache = float(section.get("profile_cache_seconds", (int, float), 86400.0))
        keep = section.get("keep_unsent_text", bool, False)
        for key, value in (("timeout", timeout), ("profile_timeout", profile_timeout)):
            if not 0 < value <= 120:
                section.error(key, "must be between 0 and 120 seconds")
        return cls(secret or Secret(""), token or Secret(""), api, data_api, timeout,
                   profile_timeout, max(cache, 0.0), keep)


def required_secret(section: Section, name: str, where: str) -> Secret | None:
    """A secret that must be given, its error named by the key itself."""
    value = section.secret(name)
    if value is None and not any(k in section.data for k in
                                 (name, f"{name}_file", f"{name}_env", f"{name}_credential")):
        section.error(name, f"is required: give {name}_file, {name}_env or {name}_credential",
                      f"{where}; e.g. {name}_credential = \"{name.replace('_', '-')}\"")
    return value


def base_url(section: Section, key: str, default: str) -> str:
    """An http(s) base URL without a trailing slash."""
    value = section.get(key, str, default)
    if not re.match(r"https?://[^/\s]+", value):
        section.error(key, "must be an http(s) URL", f'e.g. {key} = "{default}"')
        return default
    return value.rstrip("/")
