"""API channel adapter: signed JSON in, signed JSON callbacks out."""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import orjson
from aiohttp import web

from adapters.api.config import ApiConfig
from adapters.base import ChannelAdapter, OutboundMessage, SendResult
from gateway import signing
from gateway.errors import (
    MalformedPayload,
    PermanentSendError,
    RetryableSendError,
    SignatureInvalid,
)
from gateway.http import json_response, read_body, retry_after_seconds
from normalizer.api import parse_api_inbound
from normalizer.model import Party


class ApiAdapter(ChannelAdapter):
    """``POST /hooks/api/{account}/messages`` in; ``callback_url`` out."""

    type = "api"
    channels = frozenset({"api"})
    identity_kinds = frozenset({"external", "email", "phone"})
    config_class = ApiConfig
    config: ApiConfig

    def routes(self) -> Sequence[web.RouteDef]:
        """The inbound route."""
        return [web.post("/messages", self.handle_inbound)]

    def sender(self, channel: str) -> Party:
        """Replies come from the account itself."""
        return Party("external", f"omnirelay:{self.name}", None)

    def _authenticate(self, request: web.Request, body: bytes) -> None:
        header = request.headers.get("Omnirelay-Signature")
        if header is not None:
            if self.config.secret is None:
                raise SignatureInvalid("this account has no secret; use a bearer token")
            if not signing.verify(header, self.config.secret.reveal(), body):
                raise SignatureInvalid("Omnirelay-Signature does not match "
                                       "(or its timestamp is more than 5 minutes off)")
            return
        if request.headers.get("Authorization", "").startswith("Bearer "):
            self.ctx.authorize(request, "write")
            return
        raise SignatureInvalid("sign the request (Omnirelay-Signature) or send a bearer token")

    async def handle_inbound(self, request: web.Request) -> web.Response:
        """Store the message, then answer 200 (201 when new) with the normalized message."""
        body = await read_body(request)
        self._authenticate(request, body)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc
        inbound = parse_api_inbound(payload, self.name)
        inbound.raw = body
        inbound.raw_content_type = "application/json"
        result = await self.ingest(inbound)
        message = orjson.Fragment(result.message_json) if result.message_json else result.message
        return json_response({"message": message, "created": result.created},
                             status=201 if result.created else 200)

    async def send(self, message: OutboundMessage) -> SendResult:
        """POST ``{"message": …}`` to the callback URL, signed; without one, done at once."""
        if not self.config.callback_url:
            return SendResult(None, "sent")
        assert self.config.secret is not None
        body = orjson.dumps({"message": message.snapshot})
        headers = {
            "Content-Type": "application/json",
            "Omnirelay-Signature": signing.sign(self.config.secret.reveal(), body),
            "Idempotency-Key": message.id,
            "User-Agent": "omnirelay",
        }
        try:
            async with self.ctx.http.post(
                self.config.callback_url, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                text = (await response.text(errors="replace"))[:500]
                if 200 <= response.status < 300:
                    return SendResult(_provider_id(text) or message.id, "sent")
                if response.status in (408, 409, 425, 429) or response.status >= 500:
                    raise RetryableSendError(
                        f"callback answered {response.status}",
                        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                        provider_code=str(response.status), provider_message=text)
                raise PermanentSendError(f"callback answered {response.status}",
                                         provider_code=str(response.status),
                                         provider_message=text, error_code="callback_rejected")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableSendError(f"callback unreachable: {type(exc).__name__}: {exc}",
                                     error_code="callback_unreachable") from exc


def _provider_id(text: str) -> str | None:
    """A receiver may answer ``{"id": "…"}``; that becomes the provider message id."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None
