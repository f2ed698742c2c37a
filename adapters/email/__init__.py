"""The e-mail channel: SMTP and IMAP in, SMTP submission out."""

from __future__ import annotations

from adapters.email.adapter import EmailAdapter
from adapters.email.config import EmailConfig

__all__ = ["EmailAdapter", "EmailConfig"]
