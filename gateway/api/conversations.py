"""Conversations and their messages: list (filtered), read, set fields, raw payload,
close and reopen.

Replies (``POST /v1/conversations/{id}/messages``) are in :mod:`gateway.api.replies`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import require
from gateway.api.params import agent_param, int_param, json_body
from gateway.api.view import gw
from gateway.errors import BadRequest, NotFound, ValidationFailed
from gateway.http import json_response
from gateway.ids import iso
from normalizer.timestamps import parse_iso

PRIORITIES = ("normal", "high", "urgent")
MAX_TAGS = 50
MAX_LABEL = 100  # characters of a tag or a queue name
_TEXT_FILTERS = ("customer_id", "channel", "account", "tag", "queue", "assignee")


async def list_conversations(request: web.Request) -> web.Response:
    """``GET /v1/conversations``: every filter given must hold; paged by id (``after``)."""
    require(request, "read")
    status = request.query.get("status")
    if status not in (None, "open", "closed"):
        raise BadRequest("status must be open or closed")
    limit = int_param(request, "limit", 100, 1, 1000)
    filters: dict[str, str | None] = {}
    for name in _TEXT_FILTERS:
        value = request.query.get(name)
        if value is not None and not value.strip():
            if name == "customer_id":  # as before the other filters came: no filter
                value = None
            else:
                raise BadRequest(f"{name} must not be empty")
        filters[name] = value
    since = request.query.get("updated_since")
    if since is not None:
        try:
            since = iso(parse_iso(since))
        except ValueError:
            raise BadRequest("updated_since must be an ISO 8601 time with its offset, "
                             "e.g. 2026-11-01T00:00:00+09:00") from None
    customer_id = filters.pop("customer_id")
    items = await gw(request).store.list_conversations(
        status=status, customer_id=customer_id, after=request.query.get("after"),
        limit=limit, updated_since=since, **filters)
    return json_response({"conversations": items,
                          "next": items[-1]["id"] if len(items) == limit else None})


async def patch_conversation(request: web.Request) -> web.Response:
    """``PATCH /v1/conversations/{id}``: tags, priority, queue, assignee (and the agent
    who made the change); one ``conversation.updated`` when anything moved."""
    require(request, "write")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    unknown = sorted(set(body) - {"tags", "priority", "queue", "assignee", "agent"})
    if unknown:
        raise ValidationFailed(f"unknown field(s) {', '.join(unknown)}; a conversation's "
                               "tags, priority, queue and assignee can be set")
    fields = conversation_fields(body)
    if not fields:
        raise ValidationFailed("nothing to set: give tags, priority, queue or assignee")
    conversation = await gw(request).store.patch_conversation(
        request.match_info["id"], fields, agent_param(body.get("agent")))
    return json_response(conversation)


def conversation_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The settable fields of a PATCH body, checked (422 naming the field)."""
    fields: dict[str, Any] = {}
    if "tags" in body:
        tags = body["tags"]
        if (not isinstance(tags, list) or len(tags) > MAX_TAGS
                or not all(isinstance(t, str) and t.strip() and len(t) <= MAX_LABEL
                           for t in tags)):
            raise ValidationFailed(f"tags must be a list of up to {MAX_TAGS} non-empty "
                                   f"strings of up to {MAX_LABEL} characters")
        fields["tags"] = list(dict.fromkeys(t.strip() for t in tags))
    if "priority" in body:
        if body["priority"] not in PRIORITIES:
            raise ValidationFailed(f"priority must be one of {', '.join(PRIORITIES)}")
        fields["priority"] = body["priority"]
    if "queue" in body:
        queue = body["queue"]
        if queue is not None and (not isinstance(queue, str) or not queue.strip()
                                  or len(queue) > MAX_LABEL):
            raise ValidationFailed(f"queue must be null or a non-empty string of up to "
                                   f"{MAX_LABEL} characters")
        fields["queue"] = queue.strip() if isinstance(queue, str) else None
    if "assignee" in body:
        try:
            fields["assignee"] = agent_param(body["assignee"])
        except ValidationFailed:
            raise ValidationFailed('assignee must be null or {"id": "…", "name": "…"}') \
                from None
    return fields


async def get_conversation(request: web.Request) -> web.Response:
    """``GET /v1/conversations/{id}``."""
    require(request, "read")
    return json_response(await gw(request).store.get_conversation(request.match_info["id"]))


async def list_messages(request: web.Request) -> web.Response:
    """``GET /v1/conversations/{id}/messages``."""
    require(request, "read")
    limit = int_param(request, "limit", 100, 1, 1000)
    items = await gw(request).store.list_messages(request.match_info["id"],
                                                  request.query.get("after"), limit)
    return json_response({"messages": items,
                          "next": items[-1]["id"] if len(items) == limit else None})


async def get_message(request: web.Request) -> web.Response:
    """``GET /v1/messages/{id}``."""
    require(request, "read")
    return json_response(await gw(request).store.get_message(request.match_info["id"]))


async def get_message_raw(request: web.Request) -> web.Response:
    """``GET /v1/messages/{id}/raw``: the provider payload as received."""
    require(request, "read")
    raw = await gw(request).store.get_raw(request.match_info["id"])
    if raw is None:
        raise NotFound("no raw payload is kept for this message")
    content_type, body = raw
    return web.Response(body=body, headers={"Content-Type": content_type})


async def set_status(request: web.Request, status: str) -> web.Response:
    """Close or reopen; the optional body names the agent."""
    require(request, "write")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"agent"}:
        raise ValidationFailed("the body may only hold an agent")
    agent = agent_param(body.get("agent"))
    conversation = await gw(request).store.set_conversation_status(
        request.match_info["id"], status, agent)
    return json_response(conversation)


async def close_conversation(request: web.Request) -> web.Response:
    """``POST /v1/conversations/{id}/close``."""
    return await set_status(request, "closed")


async def reopen_conversation(request: web.Request) -> web.Response:
    """``POST /v1/conversations/{id}/reopen``."""
    return await set_status(request, "open")
