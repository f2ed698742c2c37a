"""Explicit registration: config ``type`` → adapter class. No directory scanning.

What the rest of the daemon needs to know about channels follows from here: which config
types exist, which identity kinds customers can have (:func:`identity_kinds`, the API's
enum and validation), and which route families adapters serve outside ``/hooks``. Which
kinds a channel sends to travels to the store in each account's route
(:meth:`~adapters.base.ChannelAdapter.route`).
"""

from __future__ import annotations

from adapters.api import ApiAdapter
from adapters.base import RESERVED_PREFIXES, ChannelAdapter
from adapters.email import EmailAdapter
from adapters.line import LineAdapter
from adapters.meta import MetaAdapter
from adapters.navertalk import NaverTalkAdapter
from adapters.telegram import TelegramAdapter
from adapters.twilio import TwilioAdapter
from adapters.webchat import WebChatAdapter

ADAPTERS: dict[str, type[ChannelAdapter]] = {cls.type: cls for cls in (
    ApiAdapter,
    EmailAdapter,
    LineAdapter,
    MetaAdapter,
    NaverTalkAdapter,
    TelegramAdapter,
    TwilioAdapter,
    WebChatAdapter,
)}


def identity_kinds(adapters: dict[str, type[ChannelAdapter]] | None = None) -> tuple[str, ...]:
    """Every identity kind a registered adapter's channels carry, sorted."""
    registry = ADAPTERS if adapters is None else adapters
    return tuple(sorted(set().union(*(cls.identity_kinds for cls in registry.values()))))


def route_families(adapters: dict[str, type[ChannelAdapter]] | None = None
                   ) -> dict[str, tuple[str, ...]]:
    """``{"/chat": ("webchat",)}``: the path prefixes adapters serve outside ``/hooks``.

    Raises ValueError for a family that would shadow the daemon's own paths.
    """
    registry = ADAPTERS if adapters is None else adapters
    families: dict[str, list[str]] = {}
    for channel_type, cls in sorted(registry.items()):
        family = cls.route_family
        if family is None:
            continue
        if not family.startswith("/") or family.rstrip("/").count("/") != 1 or \
                family.rstrip("/") in RESERVED_PREFIXES:
            raise ValueError(f"adapter {channel_type!r}: route_family {family!r} must be one path "
                             f"segment such as '/chat', not one of {', '.join(RESERVED_PREFIXES)}")
        families.setdefault(family.rstrip("/"), []).append(channel_type)
    return {family: tuple(types) for family, types in families.items()}
