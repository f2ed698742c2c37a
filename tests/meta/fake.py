"""A local fake of the Graph API (aiohttp on 127.0.0.1) speaking Meta's documented wire format.

It serves what the Meta adapter calls: the Send API (``POST /{version}/{page-id}/messages``,
``POST /{version}/{phone-number-id}/messages``), the attachment uploads
(``/{page-id}/message_attachments``, ``/{phone-number-id}/media``), the WhatsApp media
lookup (``GET /{version}/{media-id}`` → ``{"url": …}``), the nodes ``probe`` reads
(``GET /{version}/me`` with a Page token, ``GET /{version}/{phone-number-id}``) and the
media download (``GET /media/{id}``, token required, like lookaside.fbsbx.com), and a CDN
(``GET /cdn/{name}``) for Messenger attachment links. It records every call, checks the
bearer token, and answers the next calls with any error class queued by
:meth:`FakeGraph.fail_next` (a Graph error body with code/subcode, a 429 with headers, a
5xx, or a hang past the client's timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

VERSION = "v21.0"
PAGE_ID = "100000000000001"
INSTAGRAM_ID = "17841400000000001"
PHONE_NUMBER_ID = "106540352242922"
PAGE_TOKEN = "page-token-for-tests"
WHATSAPP_TOKEN = "whatsapp-token-for-tests"


@dataclass
class Failure:
    """One queued answer instead of success."""

    status: int = 400
    code: int | None = None
    subcode: int | None = None
    message: str = "An error occurred"
    transient: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    authorization: str | None
    json: dict[str, Any] | None = None
    form: dict[str, Any] | None = None


class FakeGraph:
    """The fake server; ``url`` is its ``graph_base_url`` (without the version)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.failures: list[Failure] = []
        self.media: dict[str, tuple[bytes, str]] = {}  # WhatsApp media id → (bytes, type)
        self.cdn: dict[str, tuple[bytes, str]] = {}  # name → (bytes, type)
        self.media_urls: dict[str, str] = {}  # media id → the URL its lookup answers
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()  # set: hanging answers end (the test is over)
        self.url = ""
        # What the read-only calls (``probe``) find: the Page the Page token belongs to,
        # its linked Instagram account, the WhatsApp number.
        self.page = {"id": PAGE_ID, "name": "Shop Page"}
        self.linked_instagram: str | None = INSTAGRAM_ID
        self.phone = {"display_phone_number": "+1 555-010-0100", "verified_name": "Shop",
                      "quality_rating": "GREEN", "id": PHONE_NUMBER_ID}

    # ------------------------------------------------------------------ test controls

    def fail_next(self, *failures: Failure) -> None:
        """Answer the next Send API / upload / ``me`` / phone number calls with these."""
        self.failures.extend(failures)

    def sends(self, target: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies POSTed to ``…/messages`` (of one page or phone id)."""
        return [c.json for c in self.calls if c.json is not None and c.path.endswith(
            "/messages") and (target is None or f"/{target}/" in c.path)]

    def reset(self) -> None:
        """Forget calls and queued failures, end hanging answers (between tests)."""
        self.calls.clear()
        self.failures.clear()
        self._release.set()
        self._release = asyncio.Event()

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(f"/{VERSION}/{{node}}/messages", self._messages)
        app.router.add_post(f"/{VERSION}/{{node}}/message_attachments", self._attachment)
        app.router.add_post(f"/{VERSION}/{{node}}/media", self._media_upload)
        app.router.add_get(f"/{VERSION}/{{media_id}}", self._node)
        app.router.add_get("/media/{media_id}", self._media_download)
        app.router.add_get("/cdn/{name}", self._cdn)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _token_for(self, node: str) -> str:
        return WHATSAPP_TOKEN if node == PHONE_NUMBER_ID else PAGE_TOKEN

    async def _record(self, request: web.Request) -> Call:
        call = Call(request.method, request.path, request.headers.get("Authorization"))
        if request.content_type == "application/json":
            call.json = orjson.loads(await request.read())
        elif request.content_type.startswith("multipart/"):
            form: dict[str, Any] = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                data = await part.read()
                form[part.name or ""] = (
                    {"filename": part.filename, "bytes": bytes(data),
                     "content_type": part.headers.get("Content-Type")}
                    if part.filename else bytes(data).decode())
            call.form = form
        self.calls.append(call)
        return call

    async def _gate(self, request: web.Request, call: Call, node: str) -> web.Response | None:
        """A queued failure, or the Graph auth error for a wrong token; None: succeed."""
        if self.failures:
            failure = self.failures.pop(0)
            if failure.hang:  # past the client's timeout, until the test is over
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), 30)
            return graph_error(failure)
        if call.authorization != f"Bearer {self._token_for(node)}":
            return graph_error(Failure(401, 190, None, "Invalid OAuth access token."))
        return None

    async def _messages(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        call = await self._record(request)
        refused = await self._gate(request, call, node)
        if refused is not None:
            return refused
        body = call.json or {}
        n = next(self._ids)
        if node == PHONE_NUMBER_ID:
            if body.get("messaging_product") != "whatsapp":
                return graph_error(Failure(400, 100, None, "messaging_product is required"))
            to = body.get("to") or body.get("recipient")
            return web.json_response({"messaging_product": "whatsapp",
                                      "contacts": [{"input": to, "wa_id": to}],
                                      "messages": [{"id": f"wamid.FAKE{n:06d}"}]})
        recipient = (body.get("recipient") or {}).get("id")
        if body.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return graph_error(Failure(400, 100, None, "messaging_type is required"))
        return web.json_response({"recipient_id": recipient, "message_id": f"m_FAKE{n:06d}"})

    async def _attachment(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        refused = await self._gate(request, call, request.match_info["node"])
        if refused is not None:
            return refused
        if not call.form or "filedata" not in call.form or "message" not in call.form:
            return graph_error(Failure(400, 100, None, "filedata and message are required"))
        return web.json_response({"attachment_id": str(1_000_000 + next(self._ids))})

    async def _media_upload(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        refused = await self._gate(request, call, request.match_info["node"])
        if refused is not None:
            return refused
        if not call.form or "file" not in call.form or \
                call.form.get("messaging_product") != "whatsapp":
            return graph_error(Failure(400, 100, None, "file and messaging_product required"))
        return web.json_response({"id": str(2_000_000 + next(self._ids))})

    async def _node(self, request: web.Request) -> web.Response:
        """``GET /{version}/{id}``: ``me`` (the token's Page), the WhatsApp phone number, or
        a WhatsApp media id's lookup; ``fields`` picks what is answered, as Graph does."""
        node = request.match_info["media_id"]
        if node not in ("me", PHONE_NUMBER_ID):
            return await self._media_lookup(request)
        call = Call("GET", request.path_qs, request.headers.get("Authorization"))
        self.calls.append(call)
        refused = await self._gate(request, call, node)
        if refused is not None:
            return refused
        found: dict[str, Any] = dict(self.page) if node == "me" else dict(self.phone)
        if node == "me" and self.linked_instagram:
            found["instagram_business_account"] = {"id": self.linked_instagram}
        wanted = request.query.get("fields", "id").split(",")
        return web.json_response({k: v for k, v in found.items() if k in wanted or k == "id"})

    async def _media_lookup(self, request: web.Request) -> web.Response:
        media_id = request.match_info["media_id"]
        self.calls.append(Call("GET", request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bearer {WHATSAPP_TOKEN}":
            return graph_error(Failure(401, 190, None, "Invalid OAuth access token."))
        if media_id not in self.media:
            return graph_error(Failure(404, 100, 33, "Unsupported get request."))
        data, content_type = self.media[media_id]
        return web.json_response({"messaging_product": "whatsapp", "id": media_id,
                                  "url": self.media_urls.get(media_id,
                                                             f"{self.url}/media/{media_id}"),
                                  "mime_type": content_type, "file_size": len(data)})

    async def _media_download(self, request: web.Request) -> web.Response:
        media_id = request.match_info["media_id"]
        self.calls.append(Call("GET", request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bearer {WHATSAPP_TOKEN}":
            return web.Response(status=401)
        data, content_type = self.media[media_id]
        return web.Response(body=data, content_type=content_type)

    async def _cdn(self, request: web.Request) -> web.Response:
        self.calls.append(Call("GET", request.path, request.headers.get("Authorization")))
        data, content_type = self.cdn[request.match_info["name"]]
        return web.Response(body=data, content_type=content_type)


def graph_error(failure: Failure) -> web.Response:
    """Meta's error body: ``{"error": {"message", "type", "code", "error_subcode",
    "is_transient", "fbtrace_id"}}``."""
    error: dict[str, Any] = {"message": failure.message, "type": "OAuthException",
                             "code": failure.code if failure.code is not None else 1,
                             "is_transient": failure.transient, "fbtrace_id": "AbCdEf"}
    if failure.subcode is not None:
        error["error_subcode"] = failure.subcode
    return web.json_response({"error": error}, status=failure.status, headers=failure.headers)
