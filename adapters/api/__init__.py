"""The generic API channel: any system posts messages in, replies go to its callback URL."""

from __future__ import annotations

from adapters.api.adapter import ApiAdapter
from adapters.api.config import ApiConfig

__all__ = ["ApiAdapter", "ApiConfig"]
