"""The aiohttp application: routes, auth, JSON errors, provider hook dispatch."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.registry import route_families
from gateway.api.openapi import IDENTITY_KINDS, MAX_INT64, openapi_document
from gateway.attachments import content_disposition, sanitize_content_type
from gateway.config import TokenConfig
from gateway.errors import (
    BadRequest,
    Forbidden,
    MalformedPayload,
    NotFound,
    OmnirelayError,
    StoreError,
    Unauthorized,
    ValidationFailed,
)
from gateway.http import (
    MAX_BODY_KEY,
    TRUSTED_PROXIES_KEY,
    client_address,
    json_response,
    read_body,
    redact_urls_in,
)
from gateway.store.base import OutboundRequest, Route
from normalizer.api import decode_attachments, refuse_deep_json
from normalizer.identity import InvalidIdentity, normalize_party
from normalizer.model import Party

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = structlog.get_logger(__name__)
GATEWAY_KEY = web.AppKey("gateway", Any)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
# Open SSE streams per token name: a leaked or buggy client cannot hold every socket.
STREAMS_KEY = web.AppKey("streams_per_token", dict[str, int])
TOKEN_KEY = web.RequestKey("token", TokenConfig)
# A disk that cannot take a write (blob files are written outside SQLite): the store is
# unavailable for now, a 503 the client retries, not a 500.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
STORE_RETRY_AFTER = "5"


def gw(request: web.Request) -> Gateway:
    """The daemon behind this request."""
    return request.app[GATEWAY_KEY]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- middleware


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
    log.exception("api.unhandled", path=request.path, method=request.method,
                  client=client_address(request))
    return json_response({"error": {"code": "internal_error",
                                    "message": "internal error; see the daemon log"}},
                         status=500)


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


# ---------------------------------------------------------------- params


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """Read an integer query parameter within [low, high]; 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def number_param(request: web.Request, name: str, default: float, low: float,
                 high: float) -> float:
    """Read a number (seconds) query parameter within [low, high]; 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}")
    return value


def cursor_param(raw: str | None, name: str = "after") -> int | None:
    """Parse an opaque cursor (ours are decimal seqs)."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name} is not a valid cursor")
    return int(raw)


async def json_body(request: web.Request) -> Any:
    """Read and parse a JSON body, with the size limit."""
    body = await read_body(request)
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------- health


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
    routes = tuple(sorted({(route.channel, route.account) for route in gw(request).routes()}))
    return json_response(openapi_document(routes))


# ---------------------------------------------------------------- feed


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


async def _stream(request: web.Request, gateway: Gateway, cursor: int,
                  heartbeat: float) -> web.StreamResponse:
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


# ---------------------------------------------------------------- conversations


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
    agent = _agent(body.get("agent"))
    conversation = await gw(request).store.set_conversation_status(
        request.match_info["id"], status, agent)
    return json_response(conversation)


async def close_conversation(request: web.Request) -> web.Response:
    """``POST /v1/conversations/{id}/close``."""
    return await set_status(request, "closed")


async def reopen_conversation(request: web.Request) -> web.Response:
    """``POST /v1/conversations/{id}/reopen``."""
    return await set_status(request, "open")


def _agent(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or set(value) - {"id", "name"}
            or not isinstance(value.get("id"), str)
            or not isinstance(value.get("name", ""), str | None)):
        raise ValidationFailed("agent must be {\"id\": \"…\", \"name\": \"…\"}")
    return {"id": value["id"], "name": value.get("name")}


_REPLY_FIELDS = {"text", "attachments", "agent", "channel", "account", "template", "variables",
                 "html", "subject"}


async def _outbound_request(request: web.Request, body: Any, *,
                            proactive: bool) -> OutboundRequest:
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    unknown = set(body) - _REPLY_FIELDS
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key in ("text", "channel", "account", "html", "subject", "template"):
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
    attachments = decode_attachments(body.get("attachments"))
    if not text and not attachments and not template:
        raise ValidationFailed("a message needs text, attachments or a template")
    if not text and not attachments:
        # No channel renders templates yet (CONTRACT: a template a channel cannot render
        # is refused): sent as it is, the customer would get an empty message.
        raise ValidationFailed(f"template {template!r} cannot be rendered on any channel "
                               "yet; send the text instead")
    gateway = gw(request)
    limit = gateway.config.store.max_attachment_bytes
    for att in attachments:
        if len(att.data) > limit:
            raise ValidationFailed(f"attachment {att.filename!r} is over {limit} bytes")
    stored = await gateway.store.put_blobs(
        [(a.filename, a.content_type, a.data, False, None) for a in attachments])
    return OutboundRequest(
        text=text or "", attachments=tuple(stored), agent=_agent(body.get("agent")),
        html=body.get("html"), subject=body.get("subject"), template=template,
        variables=variables, channel=body.get("channel"), account=body.get("account"))


def _idempotency(request: web.Request, token: TokenConfig,
                 body: Any) -> tuple[str, str, str] | None:
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
    token = require(request, "write")
    body = await json_body(request)
    refuse_deep_json(body)
    idempotency = _idempotency(request, token, body)
    gateway = gw(request)
    routes = gateway.routes()
    _check_account_named(body, routes)
    outbound = await _outbound_request(request, body, proactive=proactive)
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


# ---------------------------------------------------------------- customers


def _identity(value: Any, region: str) -> Party:
    if not isinstance(value, dict) or set(value) - {"kind", "address"}:
        raise ValidationFailed('an identity is {"kind": "…", "address": "…"}')
    kind, address = value.get("kind"), value.get("address")
    if not isinstance(kind, str) or kind not in IDENTITY_KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(IDENTITY_KINDS)}")
    if not isinstance(address, str) or not address.strip():
        raise ValidationFailed("address must be a non-empty string")
    try:
        return normalize_party(Party(kind, address), region)
    except InvalidIdentity as exc:
        raise ValidationFailed(str(exc)) from exc


async def find_customers(request: web.Request) -> web.Response:
    """``GET /v1/customers?identity=kind:address``."""
    require(request, "read")
    raw = request.query.get("identity")
    if not raw or ":" not in raw:
        raise BadRequest("identity=kind:address is required")
    kind, address = raw.split(":", 1)
    party = _identity({"kind": kind, "address": address},
                      gw(request).config.store.default_region)
    try:
        customer = await gw(request).store.find_customer(party.kind, party.address)
    except NotFound:
        return json_response({"customers": []})
    return json_response({"customers": [customer]})


async def get_customer(request: web.Request) -> web.Response:
    """``GET /v1/customers/{id}``; a merged-away id answers with the survivor."""
    require(request, "read")
    return json_response(await gw(request).store.get_customer(request.match_info["id"]))


async def add_identity(request: web.Request) -> web.Response:
    """``POST /v1/customers/{id}/identities``."""
    require(request, "write")
    party = _identity(await json_body(request), gw(request).config.store.default_region)
    customer = await gw(request).store.add_identity(request.match_info["id"], party.kind,
                                                    party.address)
    return json_response(customer)


async def merge_customer(request: web.Request) -> web.Response:
    """``POST /v1/customers/{id}/merge`` with ``{"from": "cus_…"}``."""
    require(request, "write")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"from"} or not isinstance(body["from"], str):
        raise ValidationFailed('the body is {"from": "cus_…"}')
    customer = await gw(request).store.merge_customers(request.match_info["id"], body["from"])
    return json_response(customer)


async def erase_customer(request: web.Request) -> web.Response:
    """``DELETE /v1/customers/{id}``: erase everything of the customer (admin)."""
    require(request, "admin")
    result = await gw(request).store.erase_customer(request.match_info["id"])
    log.info("api.customer_erased", customer_id=result["customer_id"],
             messages=result["messages"])
    return json_response(result)


# ---------------------------------------------------------------- attachments, channels


async def get_attachment(request: web.Request) -> web.StreamResponse:
    """``GET /v1/attachments/{id}``: the stored bytes."""
    require(request, "read")
    attachment, path = await gw(request).store.get_attachment(request.match_info["id"])
    if not await asyncio.to_thread(path.exists):
        raise NotFound("the attachment's bytes were purged by the retention setting")
    # Checked again: rows stored before the metadata checks may hold anything (RFC 6266).
    return web.FileResponse(path, headers={
        "Content-Type": sanitize_content_type(attachment.content_type),
        "Content-Disposition": content_disposition(attachment.filename),
        "X-Content-Type-Options": "nosniff"})


async def list_channels(request: web.Request) -> web.Response:
    """``GET /v1/channels``: every configured account, its state and counters."""
    require(request, "read")
    report = gw(request).channel_report()
    for entry in report:  # an adapter's error may quote a URL with credentials
        if entry.get("last_error"):
            entry["last_error"] = redact_urls_in(entry["last_error"])
    return json_response({"channels": report})


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /v1/webhooks/dead-letters``."""
    require(request, "admin")
    limit = int_param(request, "limit", 100, 1, 1000)
    items = await gw(request).store.list_dead_letters(request.query.get("subscription"), limit)
    return json_response({"dead_letters": items})


async def replay_dead_letters(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/dead-letters/replay`` with ``{"ids": [...]}`` or ``{}`` for all."""
    require(request, "admin")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"ids", "subscription"}:
        raise ValidationFailed('the body is {"ids": [1, 2]} and/or {"subscription": "…"}')
    if "subscription" in body and not isinstance(body["subscription"], str):
        raise ValidationFailed("subscription must be a string")
    ids = body.get("ids")
    if "ids" in body:
        ids = _delivery_ids(ids)
    count = await gw(request).store.replay_dead_letters(ids, body.get("subscription"))
    for dispatcher in gw(request).webhooks.values():
        dispatcher.wake()
    return json_response({"replayed": count})


def _delivery_ids(value: Any) -> list[int]:
    """Dead-letter ids: integers (``3.0`` is one in JSON) within SQLite's 64 bits."""
    message = f"ids must be a list of integers from 1 to {MAX_INT64}"
    if not isinstance(value, list):
        raise ValidationFailed(message)
    ids = []
    for item in value:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item <= MAX_INT64:
            raise ValidationFailed(message)
        ids.append(item)
    return ids


# ---------------------------------------------------------------- provider hooks


async def provider_hook(request: web.Request) -> web.StreamResponse:
    """Dispatch ``/hooks/{type}/{account}[/…]`` to the running adapter's handler."""
    match = request.match_info
    return await _dispatch(request, match["type"], match["account"], match.get("tail", ""))


def provider_hook_for(type_: str, account: str, tail: str) -> Handler:
    """The hook of one account known at start, for a plain (exact-path) route."""
    async def hook(request: web.Request) -> web.StreamResponse:
        return await _dispatch(request, type_, account, tail)
    return hook


async def _dispatch(request: web.Request, type_: str, account: str,
                    tail: str) -> web.StreamResponse:
    gateway = gw(request)
    adapter = gateway.adapter_for_hook(type_, account)
    if adapter is None:
        raise NotFound(f"no {type_} account {account!r}")
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
        return await handler(request)  # type: ignore[no-any-return]
    except OmnirelayError as exc:
        if exc.status < 500:
            gateway.metrics.rejected.labels(adapter.type, exc.code).inc()
            log.warning("hook.rejected", channel_type=adapter.type,
                        account=adapter.name, code=exc.code, error=exc.message,
                        client=client_address(request))
        raise
    raise NotFound(f"no route for {request.path}")


async def family_route(request: web.Request) -> web.StreamResponse:
    """An adapter's route outside ``/hooks`` (web chat's ``/chat/{account}/ws``)."""
    return await gw(request).family_hook(request.path, request.method)(request)


# ---------------------------------------------------------------- app


def create_app(gateway: Gateway) -> web.Application:
    """Build the application; ``gateway`` supplies store, adapters and config."""
    app = web.Application(middlewares=[api_middleware],
                          client_max_size=gateway.config.server.max_body_bytes)
    app[GATEWAY_KEY] = gateway
    app[MAX_BODY_KEY] = gateway.config.server.max_body_bytes
    app[TRUSTED_PROXIES_KEY] = gateway.config.server.trusted_proxies
    app[STREAMS_KEY] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/events/stream", stream_events)
    app.router.add_get("/v1/conversations", list_conversations)
    app.router.add_get("/v1/conversations/{id}", get_conversation)
    app.router.add_get("/v1/conversations/{id}/messages", list_messages)
    app.router.add_post("/v1/conversations/{id}/messages", post_reply)
    app.router.add_post("/v1/conversations/{id}/close", close_conversation)
    app.router.add_post("/v1/conversations/{id}/reopen", reopen_conversation)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_get("/v1/messages/{id}/raw", get_message_raw)
    app.router.add_get("/v1/customers", find_customers)
    app.router.add_get("/v1/customers/{id}", get_customer)
    app.router.add_delete("/v1/customers/{id}", erase_customer)
    app.router.add_post("/v1/customers/{id}/identities", add_identity)
    app.router.add_post("/v1/customers/{id}/merge", merge_customer)
    app.router.add_post("/v1/customers/{id}/messages", post_proactive)
    app.router.add_get("/v1/attachments/{id}", get_attachment)
    app.router.add_get("/v1/channels", list_channels)
    app.router.add_get("/v1/webhooks/dead-letters", list_dead_letters)
    app.router.add_post("/v1/webhooks/dead-letters/replay", replay_dead_letters)
    # Accounts configured at start get exact-path routes (a dict lookup, not two patterns
    # tried in turn); the patterns still serve accounts that a reload adds.
    for (type_, account), adapter in sorted(gateway.adapters.items()):
        for path in adapter.route_table():
            app.router.add_route("*", f"/hooks/{type_}/{account}{path}",
                                 provider_hook_for(type_, account, path.lstrip("/")))
    for family in route_families():
        app.router.add_route("*", f"{family}/{{tail:.+}}", family_route)
    app.router.add_route("*", "/hooks/{type}/{account}", provider_hook)
    app.router.add_route("*", "/hooks/{type}/{account}/{tail:.+}", provider_hook)
    return app


def routes_of(adapters: dict[Any, Any]) -> list[Route]:
    """Which account sends on which channel, as the store needs it for replies."""
    return [Route(channel, adapter.name, adapter.sender(channel))
            for adapter in adapters.values() for channel in sorted(adapter.channels)]
