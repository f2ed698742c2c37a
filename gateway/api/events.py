"""The event feed: ``GET /v1/events`` (long-poll) and ``/v1/events/stream`` (SSE)."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from gateway.api.auth import require
from gateway.api.params import cursor_param, int_param, number_param
from gateway.api.view import GatewayView, gw
from gateway.errors import BadRequest
from gateway.http import client_address, json_response

log = structlog.get_logger(__name__)
# Open SSE streams per token name: a leaked or buggy client cannot hold every socket.
STREAMS_KEY = web.AppKey("streams_per_token", dict[str, int])


async def list_events(request: web.Request) -> web.Response:
    """``GET /v1/events?after=&limit=&wait=``: the feed, long-polling when asked."""
    require(request, "read")
    allowed = {"after", "limit", "wait"}
    unknown = set(request.query) - allowed
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    after = cursor_param(request.query.get("after")) or 0
    limit = int_param(request, "limit", 100, 1, 1000)
    wait = int_param(request, "wait", 0, 0, 60)
    gateway = gw(request)
    page = await gateway.store.events_after(after, limit)
    if not page.bodies and wait > 0:
        waiter = asyncio.ensure_future(gateway.feed.wait_beyond(after, wait))
        stop = asyncio.ensure_future(gateway.stopping.wait())
        try:
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stop):
                task.cancel()
            await asyncio.gather(waiter, stop, return_exceptions=True)
        page = await gateway.store.events_after(after, limit)
    body = b'{"events":[' + b",".join(page.bodies) + b'],"next":"' + str(page.next).encode() \
        + b'"}'
    return web.Response(body=body, content_type="application/json")


STREAM_PARAMS = frozenset({"after", "heartbeat"})
HEARTBEAT_MIN, HEARTBEAT_MAX, HEARTBEAT_DEFAULT = 1.0, 60.0, 15.0


async def stream_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events/stream``: Server-Sent Events; ``id:`` is the cursor."""
    token = require(request, "read")
    gateway = gw(request)
    unknown = set(request.query) - STREAM_PARAMS
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    resume = request.headers.get("Last-Event-ID") or request.query.get("after")
    cursor = cursor_param(resume, "Last-Event-ID")
    heartbeat = number_param(request, "heartbeat", HEARTBEAT_DEFAULT, HEARTBEAT_MIN,
                             HEARTBEAT_MAX)
    open_streams = request.app[STREAMS_KEY]
    cap = gateway.config.server.max_streams_per_token
    if open_streams.get(token.name, 0) >= cap:
        log.warning("api.stream_refused", token=token.name, open=cap,
                    client=client_address(request))
        return json_response(
            {"error": {"code": "too_many_streams",
                       "message": f"the token {token.name!r} already has {cap} open streams "
                                  "([server] max_streams_per_token)"}},
            status=429, headers={"Retry-After": "10"})
    if cursor is None:
        cursor = await gateway.store.head_seq()
    open_streams[token.name] = open_streams.get(token.name, 0) + 1
    gateway.streams += 1
    try:
        return await _stream(request, gateway, cursor, heartbeat)
    finally:
        gateway.streams -= 1
        open_streams[token.name] -= 1
        if not open_streams[token.name]:
            del open_streams[token.name]


async def _stream(request: web.Request, gateway: GatewayView, cursor: int,
                  heartbeat: float) -> web.StreamResponse:
    """Write pages of events, then wait for the next commit or a heartbeat, until the
    client goes or the daemon drains."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    try:
        while not gateway.stopping.is_set():
            page = await gateway.store.events_after(cursor, 500)
            if page.bodies:
                chunks = [b"id: %d\ndata: %s\n\n" % (seq, body)
                          for seq, body in zip(page.seqs, page.bodies, strict=True)]
                await response.write(b"".join(chunks))
                cursor = page.next
                continue
            waiter = asyncio.ensure_future(gateway.feed.wait_beyond(cursor, heartbeat))
            stop = asyncio.ensure_future(gateway.stopping.wait())
            try:
                done, _ = await asyncio.wait({waiter, stop},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, stop):
                    task.cancel()
                await asyncio.gather(waiter, stop, return_exceptions=True)
            if waiter in done and not waiter.cancelled() and waiter.result() is False:
                await response.write(b": heartbeat\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response
