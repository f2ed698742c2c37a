"""Settings of a Telegram bot account: one bot token, polling or webhook mode."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapters.base import AdapterConfig
from gateway.configkit import Secret
from gateway.media import InvalidOrigin, parse_origin

if TYPE_CHECKING:
    from gateway.configkit import Section

MODES = ("polling", "webhook")
PARSE_MODES = ("plain", "html", "markdown")
DEFAULT_API_BASE_URL = "https://api.telegram.org"
_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what setWebhook accepts


@dataclass(frozen=True, slots=True)
class TelegramConfig(AdapterConfig):
    """One bot: its token, where the Bot API is, and how updates arrive.

    ``api_base_url`` is the only origin the token is ever sent to (Bot API calls and file
    downloads alike). ``mode = "webhook"`` needs ``webhook_secret``: Telegram sends it in
    ``X-Telegram-Bot-Api-Secret-Token`` and a request without it is refused (403).
    ``parse_mode``: ``plain`` (default) sends agents' text as it is; ``html`` or
    ``markdown`` (MarkdownV2) sends it escaped, so it shows exactly as typed.
    """

    token: Secret
    api_base_url: str = DEFAULT_API_BASE_URL
    mode: str = "polling"
    webhook_secret: Secret | None = None
    webhook_url: str | None = None
    poll_timeout: int = 30
    parse_mode: str = "plain"
    timeout: float = 30.0

    example: ClassVar[Mapping[str, object]] = {"token": "123456789:contract-test-token"}

    @classmethod
    def parse(cls, section: Section) -> TelegramConfig:
        """Read ``token*``, ``api_base_url``, ``mode``, ``webhook_secret*``, ``webhook_url``,
        ``poll_timeout``, ``parse_mode`` and ``timeout``."""
        token = section.secret("token")
        if token is None and not any(
                k in section.data for k in ("token", "token_file", "token_env",
                                            "token_credential")):
            section.error("token", "is required (or token_file / token_env / "
                          "token_credential)",
                          'the bot token from @BotFather, e.g. token_credential = '
                          '"telegram-shop"')
        elif token is not None and token.reveal() and not _TOKEN.match(token.reveal()):
            # Never echo it: it is the secret.
            section.error("token", "is not a bot token (digits, a colon, then letters)",
                          "copy it whole from @BotFather")
        api_base_url = section.get("api_base_url", str, DEFAULT_API_BASE_URL)
        try:
            api_base_url = parse_origin(api_base_url)
        except InvalidOrigin as exc:
            section.error("api_base_url", str(exc),
                          'e.g. "https://api.telegram.org" or a local Bot API server')
        mode = section.get("mode", str, "polling")
        if mode not in MODES:
            section.error("mode", f"must be one of {', '.join(MODES)}", 'e.g. mode = "polling"')
        webhook_secret = section.secret("webhook_secret")
        if webhook_secret is not None and webhook_secret.reveal() and \
                not _WEBHOOK_SECRET.match(webhook_secret.reveal()):
            section.error("webhook_secret", "must be 1-256 characters of A-Z, a-z, 0-9, _ "
                          "and -", "Telegram refuses other characters in secret_token")
        if mode == "webhook" and webhook_secret is None:
            section.error("webhook_secret", 'is required with mode = "webhook"',
                          "Telegram sends it with every update; without it anyone could "
                          "post updates")
        webhook_url = section.get("webhook_url", str, None)
        if webhook_url is not None and not webhook_url.startswith("https://"):
            section.error("webhook_url", "must be an https URL (Telegram calls only https)",
                          "leave it out to use public_url + /hooks/telegram/<name>")
        poll_timeout = section.get("poll_timeout", int, 30)
        if not 0 <= poll_timeout <= 50:
            section.error("poll_timeout", "must be 0-50 seconds", "the long poll's length")
        parse_mode = section.get("parse_mode", str, "plain")
        if parse_mode not in PARSE_MODES:
            section.error("parse_mode", f"must be one of {', '.join(PARSE_MODES)}",
                          'e.g. parse_mode = "plain"')
        timeout = float(section.get("timeout", (int, float), 30.0))
        if timeout <= 0:
            section.error("timeout", "must be positive", "seconds a Bot API call may take")
        return cls(token or Secret(""), api_base_url, mode, webhook_secret, webhook_url,
                   poll_timeout, parse_mode, timeout)

    @property
    def bot_id(self) -> str:
        """The bot's own user id: the token's part before the colon (public, not secret)."""
        return self.token.reveal().partition(":")[0]
