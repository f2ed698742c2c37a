"""Canned replies over the API: ``GET /v1/templates``, and templates in replies.

A reply or proactive message naming ``template`` is rendered here, before anything is
queued, for the channel it will go out on (the named one, else the conversation's), in the
language asked for (``language``), else the customer's (the script of their latest
message), else the account's. An unknown template, a missing variable or a text over the
channel's limit is a 422 naming it: a template is never sent empty.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import require
from gateway.api.view import GatewayView, gw
from gateway.automation.rules import detect_language
from gateway.automation.templates import Rendered, TemplateError, render
from gateway.errors import ValidationFailed
from gateway.http import json_response


async def list_templates(request: web.Request) -> web.Response:
    """``GET /v1/templates``: every template, its languages, channels and variables."""
    require(request, "read")
    templates = gw(request).config.automation.templates
    return json_response({"templates": [templates[name].to_json()
                                        for name in sorted(templates)]})


async def render_for(request: web.Request, body: dict[str, Any], *,
                     conversation_id: str | None, customer_id: str | None = None) -> Rendered:
    """Render ``body["template"]`` with ``body["variables"]`` (422 naming what is wrong)."""
    gateway = gw(request)
    automation = gateway.config.automation
    name = body["template"]
    template = automation.templates.get(name)
    if template is None:
        known = ", ".join(sorted(automation.templates)) or "none"
        raise ValidationFailed(f"unknown template {name!r} (known: {known})", field="template")
    language = body.get("language")
    channel = body.get("channel")
    account = body.get("account")
    if conversation_id is not None and (channel is None or language is None):
        # The reply goes where the customer last wrote (the store's routing rule).
        conversation = await gateway.store.get_conversation(conversation_id)
        last = await _last_customer_message(request, conversation_id)
        if channel is None:
            channel = last["channel"] if last else conversation["channel"]
            account = account or (last["account"] if last else conversation["account"])
        if language is None and last is not None and last.get("text"):
            language = detect_language(last["text"], "") or None
    elif customer_id is not None and language is None:
        # A proactive message: the language of the customer's latest conversation.
        customer = await gateway.store.get_customer(customer_id)
        conversations = sorted(customer.get("conversations") or [],
                               key=lambda c: c["last_message_at"])
        if conversations:
            last = await _last_customer_message(request, conversations[-1]["id"])
            if last is not None and last.get("text"):
                language = detect_language(last["text"], "") or None
    if channel is None:  # a proactive message names its channel (checked before)
        raise ValidationFailed("a template needs the channel it goes out on", field="channel")
    default = automation.language
    account_type: str | None = None
    for route in gateway.routes():
        if route.channel == channel and (account is None or route.account == account):
            account_type = _account_type(gateway, channel, route.account)
            settings = automation.for_account(account_type, route.account)
            if settings is not None and settings.language:
                default = settings.language
            break
    try:
        return render(template, body.get("variables") or {}, channel=channel,
                      language=language, default_language=default, account_type=account_type)
    except TemplateError as exc:
        raise ValidationFailed(str(exc), field=exc.field) from exc


async def _last_customer_message(request: web.Request,
                                 conversation_id: str) -> dict[str, Any] | None:
    """The customer's latest message in the conversation (its channel and language)."""
    messages = await gw(request).store.list_messages(conversation_id, None, 1000)
    for message in reversed(messages):
        if message["direction"] == "inbound" and message.get("automatic") is None:
            return message
    return None


def _account_type(gateway: GatewayView, channel: str, account: str) -> str:
    """The ``type`` of the account sending on ``channel`` (its settings are keyed by it)."""
    for (channel_type, name), adapter in gateway.adapters.items():
        if name == account and channel in adapter.channels:
            return channel_type
    return channel
