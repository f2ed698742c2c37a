"""Outbound messages: an agent's reply to a conversation, a message the shop starts.

The request is checked here (fields, attachments, which account sends); the store decides
the route and commits the message, its outbox row and its event in one transaction
(``gateway/store/jobs/outbound.py``), then the outbox worker is woken.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.api.auth import require
from gateway.api.params import agent_param, json_body
from gateway.api.templates import render_for
from gateway.api.view import gw
from gateway.config import TokenConfig
from gateway.errors import BadRequest, ValidationFailed, from_invalid_input
from gateway.http import json_response
from gateway.store.base import OutboundRequest, Route
from normalizer.api import decode_attachments, refuse_deep_json
from normalizer.errors import InvalidInput

log = structlog.get_logger(__name__)


_REPLY_FIELDS = {"text", "attachments", "agent", "channel", "account", "template", "variables",
                 "html", "subject", "language"}


async def _outbound_request(request: web.Request, body: Any, *, proactive: bool,
                            conversation_id: str | None = None,
                            customer_id: str | None = None) -> OutboundRequest:
    """Check the body field by field (422 naming the field) and store its attachments."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    unknown = set(body) - _REPLY_FIELDS
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key in ("text", "channel", "account", "html", "subject", "template", "language"):
        if key in body and not isinstance(body[key], str):
            raise ValidationFailed(f"{key} must be a string")
    if "variables" in body and not isinstance(body["variables"], dict):
        raise ValidationFailed("variables must be an object")
    if "attachments" in body and not isinstance(body["attachments"], list):
        raise ValidationFailed("attachments must be a list")
    text, template, variables = body.get("text"), body.get("template"), body.get("variables")
    if template == "":
        raise ValidationFailed("template must be a non-empty string")
    if proactive and not body.get("channel"):
        raise ValidationFailed("a proactive message needs a channel")
    try:
        attachments = decode_attachments(body.get("attachments"))
    except InvalidInput as exc:
        raise from_invalid_input(exc) from exc
    if not text and not attachments and not template:
        raise ValidationFailed("a message needs text, attachments or a template")
    html, subject = body.get("html"), body.get("subject")
    approved: str | None = None  # what a provider may send where only approved ones may go
    if template:
        if "text" in body:
            raise ValidationFailed("give text or a template, not both", field="template")
        # Rendered for its channel now (gateway/api/templates.py): 422 naming an unknown
        # template or a missing variable, never an empty send.
        rendered = await render_for(request, body, conversation_id=conversation_id,
                                    customer_id=customer_id)
        text, html, subject = rendered.text, html or rendered.html, subject or rendered.subject
        approved = rendered.approved
    gateway = gw(request)
    limit = gateway.config.store.max_attachment_bytes
    for att in attachments:
        if len(att.data) > limit:
            raise ValidationFailed(f"attachment {att.filename!r} is over {limit} bytes")
    stored = await gateway.store.put_blobs(
        [(a.filename, a.content_type, a.data, False, None) for a in attachments])
    return OutboundRequest(
        text=text or "", attachments=tuple(stored), agent=agent_param(body.get("agent")),
        html=html, subject=subject, template=approved,
        variables=variables, channel=body.get("channel"), account=body.get("account"))


def _idempotency(request: web.Request, token: TokenConfig,
                 body: Any) -> tuple[str, str, str] | None:
    """``(token, key, digest of path and body)``: the same key with another body is 409."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters")
    digest = hashlib.sha256(request.path.encode() + b"\n"
                            + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return token.name, key, digest


async def _queue(request: web.Request, *, conversation_id: str | None,
                 customer_id: str | None, proactive: bool) -> web.Response:
    """A reply and a proactive message differ only in what names the conversation."""
    token = require(request, "write")
    body = await json_body(request)
    try:
        refuse_deep_json(body)
    except InvalidInput as exc:
        raise from_invalid_input(exc) from exc
    idempotency = _idempotency(request, token, body)
    gateway = gw(request)
    routes = gateway.routes()
    _check_account_named(body, routes)
    outbound = await _outbound_request(request, body, proactive=proactive,
                                       conversation_id=conversation_id,
                                       customer_id=customer_id)
    status, message = await gateway.store.enqueue_outbound(
        conversation_id=conversation_id, customer_id=customer_id, request=outbound,
        routes=routes, idempotency=idempotency)
    gateway.outbox.wake()
    log.info("api.reply_queued", message_id=message["id"],
             conversation_id=message["conversation_id"], channel=message["channel"])
    return json_response(message, status=status)


def _check_account_named(body: Any, routes: list[Route]) -> None:
    """A named channel served by several accounts needs ``account`` (CONTRACT): taking
    the first would send from an account the agent did not choose."""
    if not isinstance(body, dict) or body.get("account") is not None:
        return
    channel = body.get("channel")
    if not isinstance(channel, str) or not channel:
        return
    accounts = sorted({route.account for route in routes if route.channel == channel})
    if len(accounts) > 1:
        raise ValidationFailed(f"channel {channel!r} is served by the accounts "
                               f"{', '.join(accounts)}; name one in \"account\"",
                               accounts=accounts)


async def post_reply(request: web.Request) -> web.Response:
    """``POST /v1/conversations/{id}/messages``: queue an agent's reply (202)."""
    return await _queue(request, conversation_id=request.match_info["id"], customer_id=None,
                        proactive=False)


async def post_proactive(request: web.Request) -> web.Response:
    """``POST /v1/customers/{id}/messages``: a message the shop starts (202)."""
    return await _queue(request, conversation_id=None, customer_id=request.match_info["id"],
                        proactive=True)
