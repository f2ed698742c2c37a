"""The parts of line-bot-sdk the adapter uses, imported only when a LINE account starts.

Importing the SDK builds hundreds of pydantic models (seconds of CPU on a busy machine):
a daemon without a LINE account must not pay that at every start, so the adapter imports
this module in ``on_start``.
"""

from __future__ import annotations

from linebot.v3.messaging import (
    ApiException,
    AsyncApiClient,
    AsyncMessagingApi,
    Configuration,
    ImageMessage,
    PushMessageRequest,
    StickerMessage,
    TextMessage,
)
from linebot.v3.webhook import SignatureValidator

__all__ = ["ApiException", "AsyncApiClient", "AsyncMessagingApi", "Configuration",
           "ImageMessage", "PushMessageRequest", "SignatureValidator", "StickerMessage",
           "TextMessage"]
