"""API channel adapter: signed JSON in, signed JSON callbacks out."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp
import orjson
from aiohttp import web

from adapters.api.config import ApiConfig
from adapters.base import ChannelAdapter, OutboundMessage, SendResult
from gateway import signing
from gateway.errors import (
    MalformedPayload,
    NotFound,
    PermanentSendError,
    RetryableSendError,
    SendError,
    SignatureInvalid,
    from_invalid_input,
)
from gateway.http import json_response, read_body, retry_after_seconds
from gateway.media import MediaSource
from gateway.receipts import DeliveryError, Receipt
from normalizer.api import parse_api_change, parse_api_inbound, parse_api_status
from normalizer.errors import InvalidInput
from normalizer.model import Party

EXCERPT_CHARS = 300  # of a callback's answer, kept in the outbox error


class ApiAdapter(ChannelAdapter):
    """``POST /hooks/api/{account}/messages`` in; ``callback_url`` out."""

    type = "api"
    channels = frozenset({"api"})
    identity_kinds = frozenset({"external", "email", "phone"})
    # The callback's receiver knows its users by their own ids: a reply goes to the
    # customer's external id, never to an e-mail address or number the message linked.
    channel_identity_kinds = {"api": ("external",)}
    config_class = ApiConfig
    config: ApiConfig

    async def on_start(self) -> None:
        """Register the account's ``media_hosts`` as its media source (no credentials:
        the integrator's file URLs carry their own access, e.g. signed URLs)."""
        if self.config.media_hosts:
            self.ctx.media.register(self.media_source, MediaSource(self.config.media_hosts))

    async def on_stop(self) -> None:
        """Its pending fetches wait until the account runs again."""
        self.ctx.media.unregister(self.media_source)

    def routes(self) -> Sequence[web.RouteDef]:
        """Messages in; changes, receipts and withdrawn users (the core paths)."""
        return [web.post("/messages", self.handle_inbound),
                web.patch("/messages/{message_id}", self.handle_change),
                web.post("/status", self.handle_status),
                web.delete("/users/{user_id}", self.handle_withdrawal)]

    def media_origins(self) -> frozenset[str]:
        """The account's ``media_hosts``."""
        return self.config.media_hosts

    def sender(self, channel: str) -> Party:
        """Replies come from the account itself."""
        return Party("external", f"omnirelay:{self.name}", None)

    def _authenticate_before_body(self, request: web.Request) -> str | None:
        """Everything that can be checked before the body is read; the signature header
        to verify against the body afterwards, or None when a bearer token was accepted.

        An unauthenticated client must not make us read (up to ``max_body_bytes``) a body
        we are going to refuse, so a missing or bad token, a signature for an account
        without a secret and a signature whose timestamp is already out of tolerance are
        refused first.
        """
        header = request.headers.get("Omnirelay-Signature")
        if header is not None:
            if self.config.secret is None:
                raise SignatureInvalid("this account has no secret; use a bearer token")
            if not _timestamp_in_tolerance(header):
                raise SignatureInvalid("Omnirelay-Signature has no timestamp within 5 "
                                       "minutes of now")
            return header
        if request.headers.get("Authorization", "").startswith("Bearer "):
            self.ctx.authorize(request, "write")
            return None
        raise SignatureInvalid("sign the request (Omnirelay-Signature) or send a bearer token")

    def _verify_signature(self, header: str, body: bytes) -> None:
        assert self.config.secret is not None  # checked before the body was read
        if not signing.verify(header, self.config.secret.reveal(), body):
            raise SignatureInvalid("Omnirelay-Signature does not match "
                                   "(or its timestamp is more than 5 minutes off)")

    async def handle_inbound(self, request: web.Request) -> web.Response:
        """Store the message, then answer 200 (201 when new) with the normalized message."""
        signature = self._authenticate_before_body(request)
        body = await read_body(request)
        if signature is not None:
            self._verify_signature(signature, body)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc
        try:
            inbound = parse_api_inbound(payload, self.name, media_hosts=self.config.media_hosts,
                                        media_source=self.media_source)
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
        inbound.raw = body
        inbound.raw_content_type = "application/json"
        result = await self.ingest(inbound)
        if result.ignored is not None:  # a group post where groups are off
            return json_response({"message": None, "created": False, "ignored": result.ignored},
                                 status=202)
        message = orjson.Fragment(result.message_json) if result.message_json else result.message
        return json_response({"message": message, "created": result.created},
                             status=201 if result.created else 200)

    # ------------------------------------------------------------ the core paths

    async def _authenticated_body(self, request: web.Request) -> bytes:
        """The body of a signed or bearer-authenticated request; as for messages, nothing
        is read before the checks that need no body pass."""
        signature = self._authenticate_before_body(request)
        body = await read_body(request)
        if signature is not None:
            self._verify_signature(signature, body)
        return body

    async def _authenticated_json(self, request: web.Request) -> object:
        """The body of a signed or bearer-authenticated request, parsed."""
        body = await self._authenticated_body(request)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc

    async def handle_change(self, request: web.Request) -> web.Response:
        """``PATCH /messages/{message_id}``: an edit, reactions or a withdrawal of a message
        this account delivered → ``message.updated`` (nothing when it changes nothing)."""
        payload = await self._authenticated_json(request)
        try:
            change = parse_api_change(payload)
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
        result = await self.ctx.store.change_message(
            "api", self.name, request.match_info["message_id"], change)
        return json_response({"message": result.message, "changed": list(result.changed)})

    async def handle_status(self, request: web.Request) -> web.Response:
        """``POST /status``: a delivery or read receipt (or a failure) for one of the
        account's replies, named by the provider id the callback answered."""
        payload = await self._authenticated_json(request)
        try:
            message_id, status, error, at = parse_api_status(payload)
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
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
        await self._authenticated_body(request)
        user_id = request.match_info["user_id"].strip()
        customer = await self.ctx.store.remove_identity("external", user_id)
        return json_response({"customer": customer})

    async def send(self, message: OutboundMessage) -> SendResult:
        """POST ``{"message": …}`` to the callback URL, signed; without one, done at once."""
        if not self.config.callback_url:
            return SendResult(None, "sent")
        assert self.config.secret is not None
        payload: dict[str, object] = {"message": message.snapshot}
        if message.group is not None:  # a reply into a group chat goes to the group
            payload["group"] = message.group.to_json()
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "Omnirelay-Signature": signing.sign(self.config.secret.reveal(), body),
            "Idempotency-Key": message.id,
            "User-Agent": "omnirelay",
        }
        try:
            # Never follow a redirect: a 307 would re-POST the signed body to wherever the
            # callback host points (an internal address), a 302 would GET it and put its
            # answer into the outbox error that read tokens can see.
            async with self.ctx.http.post(
                self.config.callback_url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                text = await _answer_excerpt(response)
                if 200 <= response.status < 300:
                    return SendResult(_provider_id(text) or message.id, "sent")
                raise _callback_error(response.status, response.headers.get("Retry-After"),
                                      text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableSendError(
                f"callback unreachable: {type(exc).__name__}: {str(exc)[:200]}",
                error_code="callback_unreachable") from exc


def _callback_error(status: int, retry_after: str | None, excerpt: str) -> SendError:
    """The send error for a callback's non-2xx answer (``excerpt`` is already bounded)."""
    if 300 <= status < 400:
        return PermanentSendError(
            f"callback answered {status} (a redirect); redirects are not followed: set "
            "callback_url to the final URL", provider_code=str(status),
            error_code="callback_redirected")
    if status in (408, 409, 425, 429) or status >= 500:
        return RetryableSendError(f"callback answered {status}",
                                  retry_after=retry_after_seconds(retry_after),
                                  provider_code=str(status), provider_message=excerpt)
    return PermanentSendError(f"callback answered {status}", provider_code=str(status),
                              provider_message=excerpt, error_code="callback_rejected")


async def _answer_excerpt(response: aiohttp.ClientResponse,
                          limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of a remote answer, read no further than needed.

    What a remote host answers ends up in the outbox error that any read token sees; a
    short excerpt is enough to diagnose and never a whole (internal) page.
    """
    cap = limit * 4  # a UTF-8 character is at most 4 bytes
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = await response.content.read(cap - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"


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


def _timestamp_in_tolerance(header: str) -> bool:
    """Whether the header's ``t=`` is within :data:`signing.TOLERANCE_SECONDS` of now (the
    cheap part of the check, done before the body is read)."""
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            return abs(time.time() - int(value)) <= signing.TOLERANCE_SECONDS
    return False
