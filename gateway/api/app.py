"""The aiohttp application: which path is served by which handler.

The pieces live beside this file: :mod:`~gateway.api.middleware` (tokens, errors),
:mod:`~gateway.api.auth` (scopes), :mod:`~gateway.api.params` (query and body checks), one
module of handlers per resource, and :mod:`~gateway.api.hooks` for provider hooks. They
reach the daemon only through :class:`~gateway.api.view.GatewayView`.
"""

from __future__ import annotations

from aiohttp import web

from adapters.registry import route_families
from gateway.api import (
    attachments,
    conversations,
    customers,
    events,
    health,
    hooks,
    ops,
    replies,
    stats,
    templates,
)
from gateway.api.events import STREAMS_KEY
from gateway.api.middleware import api_middleware
from gateway.api.view import GATEWAY_KEY, GatewayView
from gateway.http import MAX_BODY_KEY, TRUSTED_PROXIES_KEY


def create_app(gateway: GatewayView) -> web.Application:
    """Build the application; ``gateway`` supplies store, adapters and config."""
    app = web.Application(middlewares=[api_middleware],
                          client_max_size=gateway.config.server.max_body_bytes)
    app[GATEWAY_KEY] = gateway
    app[MAX_BODY_KEY] = gateway.config.server.max_body_bytes
    app[TRUSTED_PROXIES_KEY] = gateway.config.server.trusted_proxies
    app[STREAMS_KEY] = {}
    router = app.router
    router.add_get("/healthz", health.healthz)
    router.add_get("/readyz", health.readyz)
    router.add_get("/metrics", health.metrics)
    router.add_get("/v1/openapi.json", health.openapi)
    router.add_get("/v1/events", events.list_events)
    router.add_get("/v1/events/stream", events.stream_events)
    router.add_get("/v1/conversations", conversations.list_conversations)
    router.add_get("/v1/conversations/{id}", conversations.get_conversation)
    router.add_patch("/v1/conversations/{id}", conversations.patch_conversation)
    router.add_get("/v1/stats", stats.get_stats)
    router.add_get("/v1/conversations/{id}/messages", conversations.list_messages)
    router.add_post("/v1/conversations/{id}/messages", replies.post_reply)
    router.add_post("/v1/conversations/{id}/close", conversations.close_conversation)
    router.add_post("/v1/conversations/{id}/reopen", conversations.reopen_conversation)
    router.add_get("/v1/messages/{id}", conversations.get_message)
    router.add_get("/v1/messages/{id}/raw", conversations.get_message_raw)
    router.add_get("/v1/customers", customers.find_customers)
    router.add_get("/v1/customers/{id}", customers.get_customer)
    router.add_delete("/v1/customers/{id}", customers.erase_customer)
    router.add_post("/v1/customers/{id}/identities", customers.add_identity)
    router.add_post("/v1/customers/{id}/merge", customers.merge_customer)
    router.add_post("/v1/customers/{id}/messages", replies.post_proactive)
    router.add_get("/v1/attachments/{id}", attachments.get_attachment)
    router.add_get("/v1/channels", ops.list_channels)
    router.add_get("/v1/templates", templates.list_templates)
    router.add_get("/v1/webhooks/dead-letters", ops.list_dead_letters)
    router.add_post("/v1/webhooks/dead-letters/replay", ops.replay_dead_letters)
    # Accounts configured at start get exact-path routes (a dict lookup, not two patterns
    # tried in turn); the patterns still serve accounts that a reload adds.
    for (channel_type, account), adapter in sorted(gateway.adapters.items()):
        for path in adapter.route_table():
            router.add_route("*", f"/hooks/{channel_type}/{account}{path}",
                             hooks.provider_hook_for(channel_type, account, path.lstrip("/")))
    for family in route_families():
        router.add_route("*", f"{family}/{{tail:.+}}", hooks.family_route)
    router.add_route("*", "/hooks/{type}/{account}", hooks.provider_hook)
    router.add_route("*", "/hooks/{type}/{account}/{tail:.+}", hooks.provider_hook)
    return app
