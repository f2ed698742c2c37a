"""Messenger, Instagram DMs and the WhatsApp Cloud API through one Meta app."""
from __future__ import annotations

from adapters.meta.adapter import MetaAdapter
from adapters.meta.config import MetaConfig

__all__ = ["MetaAdapter", "MetaConfig"]
