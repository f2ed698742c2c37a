"""Provider hooks: ``/hooks/{type}/{account}[/…]`` and the adapters' route families.

The path names the account's channel type (the adapter type, ``[[channels]] type``) and
the account; the running adapter's route table has the handler. Accounts configured at
start also get exact-path routes (see :func:`gateway.api.app.create_app`); both kinds of
route end in :func:`_dispatch`.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.api.middleware import Handler
from gateway.api.view import gw
from gateway.errors import NotFound, OmnirelayError
from gateway.http import client_address

log = structlog.get_logger(__name__)


async def provider_hook(request: web.Request) -> web.StreamResponse:
    """Dispatch ``/hooks/{type}/{account}[/…]`` to the running adapter's handler."""
    match = request.match_info
    return await _dispatch(request, match["type"], match["account"], match.get("tail", ""))


def provider_hook_for(channel_type: str, account: str, tail: str) -> Handler:
    """The hook of one account known at start, for a plain (exact-path) route."""
    async def hook(request: web.Request) -> web.StreamResponse:
        return await _dispatch(request, channel_type, account, tail)
    return hook


async def _dispatch(request: web.Request, channel_type: str, account: str,
                    tail: str) -> web.StreamResponse:
    gateway = gw(request)
    adapter = gateway.adapter_for_hook(channel_type, account)
    if adapter is None:
        raise NotFound(f"no {channel_type} account {account!r}")
    methods = adapter.route_table().get(f"/{tail}" if tail else "")
    if methods is None:
        # A path with parameters (``/messages/{message_id}``) of an account a reload
        # added: the accounts configured at start have exact routes for it.
        segments = request.rel_url.raw_path.split("/", 4)  # "", hooks, type, account, tail
        found = adapter.match_route(f"/{segments[4]}") if len(segments) == 5 else None
        if found is None:
            raise NotFound(f"no route for {request.path}")
        methods, params = found
        request.match_info.update(params)
    handler = methods.get(request.method) or methods.get("*")
    if handler is None:
        raise web.HTTPMethodNotAllowed(request.method, sorted(methods))
    try:
        return await handler(request)
    except OmnirelayError as exc:
        if exc.status < 500:
            gateway.metrics.rejected.labels(adapter.type, exc.code).inc()
            log.warning("hook.rejected", channel_type=adapter.type,
                        account=adapter.name, code=exc.code, error=exc.message,
                        client=client_address(request))
        raise


async def family_route(request: web.Request) -> web.StreamResponse:
    """An adapter's route outside ``/hooks`` (web chat's ``/chat/{account}/ws``)."""
    return await gw(request).family_hook(request.path, request.method)(request)
