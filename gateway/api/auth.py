"""Who may call what: bearer tokens and their scopes.

``/v1`` requests are authenticated once by the middleware (:mod:`gateway.api.middleware`);
each handler then names the scope it needs with :func:`require`. Provider hooks that also
take a bearer token (the API channel) call :func:`check_token` themselves.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.api.view import gw
from gateway.config import TokenConfig
from gateway.errors import Forbidden, Unauthorized

# Answered without a token: load balancers and Prometheus call them.
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
TOKEN_KEY = web.RequestKey("token", TokenConfig)


def authenticate(tokens: tuple[TokenConfig, ...], header: str | None) -> TokenConfig | None:
    """Return the token config matching an ``Authorization: Bearer`` header."""
    if not header or not header.startswith("Bearer "):
        return None
    try:
        presented = header[7:].strip().encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 (kept as surrogates): no token
        return None
    found = None
    for token in tokens:  # compare against all, in constant time each
        if hmac.compare_digest(presented, token.token.reveal().encode()):
            found = token
    return found


def require(request: web.Request, scope: str) -> TokenConfig:
    """Check that the request's token grants ``scope`` (``admin`` grants all)."""
    token = request[TOKEN_KEY]
    if scope not in token.scopes and "admin" not in token.scopes:
        raise Forbidden(f"the token {token.name!r} lacks the {scope!r} scope")
    return token


def check_token(request: web.Request, scope: str) -> None:
    """For provider hooks that also accept a bearer token (the API channel): 401 or 403."""
    token = authenticate(gw(request).config.tokens, request.headers.get("Authorization"))
    if token is None:
        raise Unauthorized("missing or invalid bearer token")
    request[TOKEN_KEY] = token
    require(request, scope)
