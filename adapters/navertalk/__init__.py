"""Naver TalkTalk chatbot API channel (``type = "navertalk"``)."""

from __future__ import annotations

from adapters.navertalk.adapter import NaverTalkAdapter
from adapters.navertalk.config import NaverTalkConfig

__all__ = ["NaverTalkAdapter", "NaverTalkConfig"]
