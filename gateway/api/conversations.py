"""Conversations and their messages: list, read, raw payload, close and reopen.

Replies (``POST /v1/conversations/{id}/messages``) are in :mod:`gateway.api.replies`.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import require
from gateway.api.params import agent_param, int_param, json_body
from gateway.api.view import gw
from gateway.errors import BadRequest, NotFound, ValidationFailed
from gateway.http import json_response


async def list_conversations(request: web.Request) -> web.Response:
    """``GET /v1/conversations``."""
    require(request, "read")
    status = request.query.get("status")
    if status not in (None, "open", "closed"):
        raise BadRequest("status must be open or closed")
    limit = int_param(request, "limit", 100, 1, 1000)
    items = await gw(request).store.list_conversations(
        status=status, customer_id=request.query.get("customer_id"),
        after=request.query.get("after"), limit=limit)
    return json_response({"conversations": items,
                          "next": items[-1]["id"] if len(items) == limit else None})


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
