"""The Graph API calls the Meta adapter makes, and its errors mapped to send outcomes.

Every library and HTTP failure is translated here, once: a Graph error answer becomes a
:class:`RetryableSendError` (rate limits, temporary errors: the outbox tries again, after
``retry_after`` when Meta says how long) or a :class:`PermanentSendError` with a code an
agent understands (``window_closed``, ``recipient_unavailable``, ``auth_failed`` …).
Tokens travel in the ``Authorization`` header, never in a URL (URLs end up in logs), and
only to the configured ``graph_base_url``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.errors import PermanentSendError, RetryableSendError, SendError
from gateway.http import retry_after_seconds

JSON = dict[str, Any]
DEFAULT_RATE_LIMIT_PAUSE = 60.0  # seconds, when Meta says "rate limited" but not how long

# Graph error codes (developers.facebook.com/docs/graph-api/guides/error-handling,
# the Messenger Send API and WhatsApp Cloud API error code tables).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80001, 80002, 80003, 80004, 80005, 80006,
                              80008, 80009, 80014, 130429, 131048})
PAIR_RATE_LIMIT_CODES = frozenset({131056})  # one recipient too fast: not the whole account
TEMPORARY_CODES = frozenset({1, 2, 341, 131000, 131016, 133004})
AUTH_CODES = frozenset({102, 190, 463, 467})
WINDOW_CODES = frozenset({131047, 2018278})  # also code 10 with subcode 2018278
RECIPIENT_CODES = frozenset({551, 131026, 131021, 1545041, 2018001, 2018108})
PERMISSION_CODES = frozenset({3, 10, 200, 230, 294, 131005, 131031})


@dataclass(frozen=True, slots=True)
class GraphError:
    """A Graph ``{"error": …}`` answer, the parts that decide what to do."""

    status: int
    code: int | None
    subcode: int | None
    message: str
    transient: bool
    retry_after: float | None

    @property
    def codes(self) -> set[int]:
        """The code and subcode, either of which may name the case."""
        return {c for c in (self.code, self.subcode) if c is not None}


class GraphClient:
    """POSTs to ``graph_url`` (base URL with the API version) for one account."""

    def __init__(self, http: aiohttp.ClientSession, graph_url: str, timeout: float) -> None:
        self.http = http
        self.graph_url = graph_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.paused_until = 0.0  # monotonic: the account is rate limited until then

    def pause_left(self) -> float:
        """Seconds the account must still wait after a rate limit (0: may send)."""
        return max(0.0, self.paused_until - time.monotonic())

    async def post_json(self, path: str, token: str, body: Mapping[str, object]) -> JSON:
        """POST a JSON body; the answer's JSON, or the mapped send error."""
        return await self._post(path, token, data=orjson.dumps(body),
                                content_type="application/json")

    async def post_form(self, path: str, token: str, form: aiohttp.FormData) -> JSON:
        """POST a multipart form (an upload); the answer's JSON, or the mapped send error."""
        return await self._post(path, token, data=form, content_type=None)

    async def get_json(self, path_or_url: str, token: str) -> tuple[int, JSON, str | None]:
        """GET (a media id's lookup): status, JSON answer and ``Retry-After``."""
        url = path_or_url if "://" in path_or_url else f"{self.graph_url}/{path_or_url}"
        async with self.http.get(url, headers={"Authorization": f"Bearer {token}"},
                                 allow_redirects=False, timeout=self.timeout) as response:
            data = await _json(response)
            return response.status, data, response.headers.get("Retry-After")

    async def _post(self, path: str, token: str, *, data: Any,
                    content_type: str | None) -> JSON:
        headers = {"Authorization": f"Bearer {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self.http.post(f"{self.graph_url}/{path}", data=data, headers=headers,
                                      allow_redirects=False, timeout=self.timeout) as response:
                answer = await _json(response)
                if 200 <= response.status < 300 and "error" not in answer:
                    return answer
                error = graph_error(response.status, answer, response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableSendError(f"Graph API unreachable: {type(exc).__name__}",
                                     error_code="provider_unreachable") from exc
        if error.codes & RATE_LIMIT_CODES or (error.status == 429 and not
                                               error.codes & PAIR_RATE_LIMIT_CODES):
            pause = error.retry_after or DEFAULT_RATE_LIMIT_PAUSE
            self.paused_until = max(self.paused_until, time.monotonic() + pause)
        raise send_error(error)


def graph_error(status: int, answer: JSON, headers: Mapping[str, str]) -> GraphError:
    """The error of a non-2xx (or ``{"error": …}``) Graph answer."""
    body = answer.get("error") if isinstance(answer.get("error"), dict) else {}
    assert isinstance(body, dict)
    code = body.get("code")
    subcode = body.get("error_subcode")
    data = body.get("error_data") if isinstance(body.get("error_data"), dict) else {}
    assert isinstance(data, dict)
    details = data.get("details") if isinstance(data.get("details"), str) else None
    message = str(body.get("message") or f"Graph API answered {status}")
    if details and details not in message:
        message = f"{message}: {details}"
    return GraphError(status, code if isinstance(code, int) else None,
                      subcode if isinstance(subcode, int) else None, message[:500],
                      body.get("is_transient") is True, _retry_after(headers))


def send_error(error: GraphError) -> SendError:
    """Retryable for rate limits and temporary failures, else permanent with a clear code."""
    provider = dict(provider_code=str(error.code if error.code is not None else error.status),
                    provider_message=error.message)
    codes = error.codes
    if codes & RATE_LIMIT_CODES or codes & PAIR_RATE_LIMIT_CODES or error.status == 429:
        return RetryableSendError(f"rate limited by Meta: {error.message}",
                                  retry_after=error.retry_after or DEFAULT_RATE_LIMIT_PAUSE,
                                  error_code="rate_limited", **provider)
    if codes & TEMPORARY_CODES or error.transient or error.status >= 500:
        return RetryableSendError(f"Graph API temporarily failed: {error.message}",
                                  retry_after=error.retry_after, **provider)
    if codes & WINDOW_CODES:
        return PermanentSendError(f"outside the messaging window: {error.message}",
                                  error_code="window_closed", **provider)
    if codes & AUTH_CODES:
        return PermanentSendError(f"the access token was refused: {error.message}",
                                  error_code="auth_failed", **provider)
    if codes & RECIPIENT_CODES:
        return PermanentSendError(f"the recipient cannot be reached: {error.message}",
                                  error_code="recipient_unavailable", **provider)
    if 132000 <= (error.code or 0) < 133000:
        return PermanentSendError(f"the template was refused: {error.message}",
                                  error_code="template_rejected", **provider)
    if codes & PERMISSION_CODES:
        return PermanentSendError(f"the app lacks a permission: {error.message}",
                                  error_code="permission_denied", **provider)
    if 368 in codes:
        return PermanentSendError(f"blocked by Meta's policy enforcement: {error.message}",
                                  error_code="policy_blocked", **provider)
    return PermanentSendError(f"Graph API refused the message: {error.message}",
                              error_code="provider_rejected", **provider)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """How long Meta asks to wait: ``Retry-After``, else the business use case header's
    ``estimated_time_to_regain_access`` (minutes)."""
    seconds = retry_after_seconds(headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    usage = headers.get("X-Business-Use-Case-Usage")
    if not usage:
        return None
    try:
        parsed = orjson.loads(usage)
    except orjson.JSONDecodeError:
        return None
    minutes = [item.get("estimated_time_to_regain_access")
               for items in (parsed.values() if isinstance(parsed, dict) else [])
               for item in (items if isinstance(items, list) else [])
               if isinstance(item, dict)]
    waits = [m for m in minutes if isinstance(m, int | float) and m > 0]
    return max(waits) * 60.0 if waits else None


async def _json(response: aiohttp.ClientResponse) -> JSON:
    """The answer as a JSON object ({} for anything else), read to at most 64 KiB."""
    raw = await response.content.read(65536)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
