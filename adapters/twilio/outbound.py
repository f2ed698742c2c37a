"""Sending through the twilio SDK's async client: the client, error mapping and pacing.

Every failure is translated once, here, into the outbox's two kinds: 429 and 5xx (and
timeouts, unreachable hosts, credentials Twilio refuses) retry with backoff, honouring
``Retry-After``; Twilio's codes for a recipient that cannot get the message (21610
unsubscribed, 21211 invalid number, 63016 outside WhatsApp's 24-hour window, …) fail for
good with a code of their own.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response

from gateway.errors import PermanentSendError, RetryableSendError, SendError
from gateway.http import retry_after_seconds
from normalizer.twilio import describe_error

# The Retry-After of the latest answer in this task: the SDK's exception drops headers.
_RETRY_AFTER: ContextVar[str | None] = ContextVar("twilio_retry_after", default=None)

RATE_LIMITED_CODES = frozenset({20429, 14107})
AUTH_CODES = frozenset({20003, 20005, 20006})


class TwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """The SDK's aiohttp client, remembering each answer's ``Retry-After`` for the caller."""

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        """Make the request as the SDK does; note ``Retry-After`` (429/503)."""
        response: Response = await super().request(method, url, *args, **kwargs)
        headers = response.headers
        _RETRY_AFTER.set(headers.get("Retry-After") if headers is not None else None)
        return response


def last_retry_after() -> float | None:
    """Seconds the latest answer in this task asked to wait, if it said."""
    return retry_after_seconds(_RETRY_AFTER.get())


def send_error(exc: TwilioRestException) -> SendError:
    """The outbox's error for a Twilio REST error (status, Twilio code, message)."""
    status: int = exc.status
    code: int | None = exc.code
    text = str(exc.msg or "")[:500]
    provider_code = str(code) if code is not None else str(status)
    if status == 429 or code in RATE_LIMITED_CODES:
        return RetryableSendError(f"Twilio rate limit ({provider_code})",
                                  retry_after=last_retry_after(), provider_code=provider_code,
                                  provider_message=text, error_code="rate_limited")
    if status >= 500:
        return RetryableSendError(f"Twilio answered {status}", retry_after=last_retry_after(),
                                  provider_code=provider_code, provider_message=text)
    if status in (401, 403) or code in AUTH_CODES:
        # Retried, not failed: once the operator fixes the credentials the replies go out.
        return RetryableSendError("Twilio refused the account's credentials (check "
                                  "account_sid and auth_token)", provider_code=provider_code,
                                  provider_message=text, error_code="auth_failed")
    if code is not None:  # any other 4xx: this message will not go as it is
        ours, message = describe_error(code, text)
        return PermanentSendError(message, provider_code=provider_code, provider_message=text,
                                  error_code="provider_rejected" if ours.isdigit() else ours)
    return PermanentSendError(f"Twilio answered {status}", provider_code=provider_code,
                              provider_message=text, error_code="provider_rejected")


class SenderPacer:
    """Spaces sends from one sender ``1 / rate`` seconds apart, so a burst of replies is
    paced instead of meeting Twilio's per-sender limits (and 429s or carrier queuing)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next: dict[str, float] = {}

    def delay(self, sender: str, now: float | None = None) -> float:
        """Reserve the sender's next slot; return how long until it."""
        current = time.monotonic() if now is None else now
        slot = max(current, self._next.get(sender, current))
        self._next[sender] = slot + self.interval
        if len(self._next) > 10_000:  # senders come from config: only a safety net
            self._next = {k: v for k, v in self._next.items() if v > current}
        return slot - current

    async def wait(self, sender: str) -> None:
        """Wait for the sender's next slot."""
        delay = self.delay(sender)
        if delay > 0:
            await asyncio.sleep(delay)
