"""Settings of a web chat account."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapters.base import AdapterConfig
from gateway.configkit import Secret
from gateway.media import InvalidOrigin, parse_origin

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.configkit import Section

MIB = 1024 * 1024
# The title where one must be text of ours (the demo page, the sender of replies); the
# widget shows its own in the visitor's language when the account has none.
DEFAULT_TITLE = "Chat with us"
LANGUAGES = ("auto", "en", "ko", "ja")  # the widget's string tables; auto: the browser's


@dataclass(frozen=True, slots=True)
class WebChatConfig(AdapterConfig):
    """Who may embed the widget, how much a visitor may send, what the widget offers.

    ``allowed_origins`` are the shop's page origins a browser may open the WebSocket from
    (the ``Origin`` header is checked; anything else is 403). ``secret`` signs visitor
    tokens; without one the account generates its own and keeps it in the store, so
    visitors stay who they are across restarts.

    ``title`` None lets the widget show its own title in the visitor's language;
    ``language`` "auto" lets the browser choose among the widget's languages.
    """

    allowed_origins: frozenset[str] = frozenset()
    secret: Secret | None = None
    demo_page: bool = False
    pre_chat_form: bool = False
    title: str | None = None
    language: str = "auto"
    max_text_chars: int = 4000
    max_file_bytes: int = 5 * MIB
    visitor_messages_per_minute: int = 30
    ip_messages_per_minute: int = 300
    max_connections_per_ip: int = 50
    history_messages: int = 200

    example: ClassVar[Mapping[str, object]] = {"allowed_origins": ["https://shop.example"]}

    @classmethod
    def parse(cls, section: Section) -> WebChatConfig:
        """Read the account's keys; ``allowed_origins`` is required unless ``demo_page``."""
        demo_page = section.get("demo_page", bool, False)
        origins = _origins(section, required=not demo_page)
        secret = section.secret("secret")
        title = section.get("title", str)
        if title is not None and (not title.strip() or len(title) > 100):
            section.error("title", "must be 1 to 100 characters")
        return cls(
            allowed_origins=origins, secret=secret, demo_page=demo_page,
            pre_chat_form=section.get("pre_chat_form", bool, False), title=title,
            language=_language(section),
            max_text_chars=_positive(section, "max_text_chars", 4000, 100_000),
            max_file_bytes=_positive(section, "max_file_bytes", 5 * MIB, 50 * MIB),
            visitor_messages_per_minute=_positive(section, "visitor_messages_per_minute", 30,
                                                  1_000_000),
            ip_messages_per_minute=_positive(section, "ip_messages_per_minute", 300,
                                             1_000_000),
            max_connections_per_ip=_positive(section, "max_connections_per_ip", 50,
                                             1_000_000),
            history_messages=_positive(section, "history_messages", 200, 1000),
        )


def _positive(section: Section, key: str, default: int, limit: int) -> int:
    value = section.get(key, int, default)
    if not 1 <= value <= limit:
        section.error(key, f"must be between 1 and {limit:,}")
        return default
    return value


def _language(section: Section) -> str:
    """``language``: one the widget speaks, or ``auto`` (the visitor's browser decides)."""
    value = section.get("language", str, "auto")
    if value not in LANGUAGES:
        choices = ", ".join(f'"{lang}"' for lang in LANGUAGES)
        section.error("language", f"must be one of {choices}, got {value!r}",
                      'e.g. language = "ko" (every visitor gets Korean) or "auto" (each '
                      "visitor's browser chooses; English when it asks for none of them)")
        return "auto"
    return value


def _origins(section: Section, *, required: bool) -> frozenset[str]:
    """``allowed_origins``: ``https://shop.example`` (a bare host means https)."""
    hint = 'e.g. allowed_origins = ["https://shop.example"] (the pages embedding the widget)'
    if required and "allowed_origins" not in section.data:
        section.error("allowed_origins", "is required (unless demo_page = true)", hint)
    origins = set()
    for value in section.str_list("allowed_origins"):
        try:
            origins.add(parse_origin(value))
        except InvalidOrigin as exc:
            section.error("allowed_origins", f"{value!r} {exc}", hint)
    return frozenset(origins)
