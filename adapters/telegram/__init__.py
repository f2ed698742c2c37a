"""Telegram: one bot per account, updates by long polling or webhook, Bot API sends."""

from __future__ import annotations

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.config import TelegramConfig

__all__ = ["TelegramAdapter", "TelegramConfig"]
