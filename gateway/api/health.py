"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.openapi import openapi_document
from gateway.api.view import gw
from gateway.http import json_response


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store answers and every required adapter runs.

    Unauthenticated (load balancers call it), so it names what is not ready but never
    an error text: those can hold hosts, paths or a provider's answer, and stay behind a
    token on ``/v1/channels``.
    """
    problems = await gw(request).readiness_problems()
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, status=503)
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = generate_latest(gw(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API (any valid token; CONTRACT: all of /v1),
    naming this daemon's channels and accounts."""
    gateway = gw(request)
    routes = tuple(sorted({(route.channel, route.account) for route in gateway.routes()}))
    hosts = tuple(sorted({origin for adapter in gateway.adapters.values()
                          for origin in adapter.media_origins()}))
    templates = tuple((name, tuple(template.variables())) for name, template
                      in sorted(gateway.config.automation.templates.items()))
    return json_response(openapi_document(routes, media_hosts=hosts, templates=templates))
