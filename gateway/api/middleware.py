"""The one middleware every request passes: authentication and the mapping of errors.

One middleware, not two: each layer costs every request a wrapper and a coroutine. It
checks the bearer token of ``/v1`` requests (scopes are checked per route, see
:mod:`gateway.api.auth`) and answers every failure as ``{"error": {"code", "message"}}``
with the right status: the store being unavailable (a full disk included) is 503 with
``Retry-After``, never a 500. Log lines name the client address as
:func:`gateway.http.client_address` derives it (trusted proxies only).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.api.auth import PUBLIC_PATHS, TOKEN_KEY, authenticate
from gateway.api.view import gw
from gateway.errors import OmnirelayError, StoreError, Unauthorized
from gateway.http import client_address, json_response

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A disk that cannot take a write (blob files are written outside SQLite): the store is
# unavailable for now, a 503 the client retries, not a 500.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
STORE_RETRY_AFTER = "5"


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens for ``/v1`` (scopes are checked per route); every failure as
    ``{"error": {"code", "message"}}`` with the right status. One middleware, not two:
    each layer costs every request a wrapper and a coroutine."""
    try:
        if request.path.startswith("/v1/") and request.path not in PUBLIC_PATHS:
            if "access_token" in request.query or "token" in request.query:
                raise Unauthorized("tokens are accepted only in the Authorization header")
            token = authenticate(gw(request).config.tokens, request.headers.get("Authorization"))
            if token is None:
                raise Unauthorized("missing or invalid bearer token")
            request[TOKEN_KEY] = token
        return await handler(request)
    except StoreError as exc:
        log.error("api.store_unavailable", path=request.path, error=exc.message,
                  client=client_address(request))
        return json_response(exc.to_json(), status=503,
                             headers={"Retry-After": STORE_RETRY_AFTER})
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            return _internal_error(request)
        log.error("api.store_unavailable", path=request.path, error=exc.strerror,
                  client=client_address(request))
        error = StoreError(f"the store cannot write right now ({exc.strerror})")
        return json_response(error.to_json(), status=503,
                             headers={"Retry-After": STORE_RETRY_AFTER})
    except OmnirelayError as exc:
        if exc.status >= 500:
            log.error("api.error", path=request.path, code=exc.code, error=exc.message,
                      client=client_address(request))
        elif not request.path.startswith("/hooks/"):  # hooks log their own hook.rejected
            log.info("http.refused", method=request.method, path=request.path,
                     status=exc.status, code=exc.code, client=client_address(request))
        return json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no route for {request.path}"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_response({"error": {"code": code, "message": message}}, status=exc.status,
                             headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """A bug: the traceback goes to the log, the client gets no detail it could use."""
    log.exception("api.unhandled", path=request.path, method=request.method,
                  client=client_address(request))
    return json_response({"error": {"code": "internal_error",
                                    "message": "internal error; see the daemon log"}},
                         status=500)
