"""Explicit registration: config ``type`` → adapter class. No directory scanning."""

from __future__ import annotations

from adapters.api import ApiAdapter
from adapters.base import ChannelAdapter
from adapters.email import EmailAdapter

ADAPTERS: dict[str, type[ChannelAdapter]] = {cls.type: cls for cls in (ApiAdapter, EmailAdapter)}
