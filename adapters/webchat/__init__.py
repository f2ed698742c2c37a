"""Web chat: an embeddable widget over a WebSocket, served by omnirelay itself."""

from __future__ import annotations

from adapters.webchat.adapter import WebChatAdapter
from adapters.webchat.config import WebChatConfig

__all__ = ["WebChatAdapter", "WebChatConfig"]
