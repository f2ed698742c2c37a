"""Twilio: SMS, MMS and WhatsApp through one Twilio account (signed hooks, the twilio SDK)."""

from __future__ import annotations

from adapters.twilio.adapter import TwilioAdapter
from adapters.twilio.config import TwilioConfig

__all__ = ["TwilioAdapter", "TwilioConfig"]
