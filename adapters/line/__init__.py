"""LINE Messaging API channel (``type = "line"``)."""

from __future__ import annotations

from adapters.line.adapter import LineAdapter
from adapters.line.config import LineConfig

__all__ = ["LineAdapter", "LineConfig"]
