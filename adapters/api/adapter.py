"""API channel adapter: signed JSON in, signed JSON callbacks out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters.api.config import ApiConfig
from adapters.base import ChannelAdapter, SendResult
from gateway import signing
from gateway.errors import (
    MalformedPayload,
    NotFound,
    PermanentSendError,
    RetryableSendError,
    SignatureInvalid,
)
from gateway.http import json_response, read_body, retry_after_seconds
from gateway.receipts import DeliveryError, Receipt
from gateway.store.base import JSON, OutboxItem
from normalizer.api import parse_api_change, parse_api_inbound, parse_api_status
from normalizer.model import Party


class ApiAdapter(ChannelAdapter):
    """``POST /hooks/api/{account}/messages`` in; ``callback_url`` out."""

    type = "api"
    channels = frozenset({"api"})
    config_class = ApiConfig
    config: ApiConfig

    def routes(self) -> Sequence[web.RouteDef]:
        """Messages in; changes, receipts and withdrawn users (the core paths, H8)."""
        return [web.post("/messages", self.handle_inbound),
                web.patch("/messages/{message_id}", self.handle_change),
                web.post("/status", self.handle_status),
                web.delete("/users/{user_id}", self.handle_withdrawal)]

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
        if result.ignored is not None:  # H8: a group post where groups are off
            return json_response({"message": None, "created": False, "ignored": result.ignored},
                                 status=202)
        message = orjson.Fragment(result.message_json) if result.message_json else result.message
        return json_response({"message": message, "created": result.created},
                             status=201 if result.created else 200)

    # ------------------------------------------------------------ H8: the core paths

    async def _authenticated_json(self, request: web.Request) -> Any:
        """The body of a signed or bearer-authenticated request, parsed (as for messages)."""
        body = await read_body(request)
        self._authenticate(request, body)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc

    async def handle_change(self, request: web.Request) -> web.Response:
        """``PATCH /messages/{message_id}``: an edit, reactions or a withdrawal of a message
        this account delivered → ``message.updated`` (nothing when it changes nothing)."""
        change = parse_api_change(await self._authenticated_json(request))
        result = await self.ctx.store.change_message(
            "api", self.name, request.match_info["message_id"], change)
        return json_response({"message": result.message, "changed": list(result.changed)})

    async def handle_status(self, request: web.Request) -> web.Response:
        """``POST /status``: a delivery or read receipt (or a failure) for one of the
        account's replies, named by the provider id the callback answered."""
        message_id, status, error, at = parse_api_status(await self._authenticated_json(request))
        if self.ctx.receipts is None:
            raise RuntimeError("the daemon gave this adapter no receipt sink")
        result = await self.ctx.receipts(Receipt(
            "api", self.name, message_id, status,
            None if error is None else DeliveryError(error["code"], error["message"]), at))
        if result is None:
            raise NotFound(f"no reply of account {self.name!r} has message_id {message_id!r}")
        return json_response({"message": result.message, "changed": bool(result.changed)})

    async def handle_withdrawal(self, request: web.Request) -> web.Response:
        """``DELETE /users/{user_id}``: the user left the other system; their ``external``
        identity (and the name it gave) leaves the customer → ``customer.updated``."""
        self._authenticate(request, await read_body(request))
        user_id = request.match_info["user_id"].strip()
        customer = await self.ctx.store.remove_identity("external", user_id)
        return json_response({"customer": customer})

    async def send(self, item: OutboxItem) -> SendResult:
        """POST ``{"message": …}`` to the callback URL, signed; without one, done at once."""
        if not self.config.callback_url:
            return SendResult(None, "sent")
        assert self.config.secret is not None
        payload: JSON = {"message": item.message}
        if item.conversation.get("group"):  # H8: a reply into a group chat goes to the group
            payload["group"] = item.conversation["group"]
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "Omnirelay-Signature": signing.sign(self.config.secret.reveal(), body),
            "Idempotency-Key": item.message["id"],
            "User-Agent": "omnirelay",
        }
        try:
            async with self.ctx.http.post(
                self.config.callback_url, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                text = (await response.text(errors="replace"))[:500]
                if 200 <= response.status < 300:
                    return SendResult(_provider_id(text) or item.message["id"], "sent")
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
    """A receiver may answer ``{"message_id": "…"}`` (or ``{"id": "…"}``, as before); that
    becomes the provider message id, which echoes and receipts name."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("message_id", data.get("id"))
    return value if isinstance(value, str) and value and len(value) <= 255 else None
