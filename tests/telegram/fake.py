"""A local fake of the Telegram Bot API (aiohttp on 127.0.0.1), answering in its JSON.

Routes ``/bot<token>/<method>`` (what python-telegram-bot calls with ``base_url``) and
``/file/bot<token>/<file_path>`` (file downloads). Keeps Telegram's semantics where the
gateway depends on them: ``getUpdates`` confirms every update below ``offset`` and holds
the long poll (briefly) when nothing is queued; a set webhook makes ``getUpdates`` a 409;
texts over 4,096 UTF-16 units are refused; ``getFile`` refuses files over 20 MB;
``getWebhookInfo`` tells the webhook set (``last_error_message``: ``webhook_error``). Errors
are injected per method (``fail``): 429 with ``retry_after``, 403 (blocked), 5xx, or a
hang longer than the client's timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456789:AAH-fake-token-for-tests_0123456789"
BOT_ID = 123456789
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "ShopBot", "username": "shop_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False,
            "supports_inline_queries": False}
MAX_HOLD = 0.2  # seconds a long poll is held at most: shutdown stays quick
MAX_DOWNLOAD = 20 * 1024 * 1024


@dataclass
class Call:
    """One Bot API request the fake answered (or failed on purpose)."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    at: float


@dataclass
class Failure:
    """What to answer instead of the real result, once."""

    status: int = 500
    description: str = "Internal Server Error"
    retry_after: int | None = None
    hang: float | None = None  # sleep this long first (a client timeout)


@dataclass
class FakeBotApi:
    """The fake's state; ``url`` is the ``api_base_url`` to configure."""

    port: int = 0
    token: str = TOKEN
    updates: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # file_id → (path, bytes)
    downloads: list[str] = field(default_factory=list)
    fail: dict[str, list[Failure]] = field(default_factory=lambda: defaultdict(list))
    blocked_chats: set[str] = field(default_factory=set)
    webhook: dict[str, Any] | None = None
    webhook_error: str | None = None  # getWebhookInfo's last_error_message
    batch: int = 100  # most updates one getUpdates answers (the client's limit also applies)
    max_hold: float = MAX_HOLD  # longest a long poll is held (Telegram: the whole timeout)
    next_update_id: int = 1000
    next_message_id: int = 5000
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False  # stop() ends long polls still held
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The Bot API origin (``api_base_url``)."""
        return f"http://127.0.0.1:{self.port}"

    # -------------------------------------------------------------- server

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self.handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self.download)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening (long polls still held end at once)."""
        self.closing = True
        self._notify()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -------------------------------------------------------------- test side

    def queue(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update (its ``update_id`` assigned when missing) for ``getUpdates``."""
        if "update_id" not in update:
            self.next_update_id += 1
            update = {"update_id": self.next_update_id, **update}
        self.updates.append(update)
        self._notify()
        return update

    def add_file(self, file_id: str, data: bytes, path: str) -> None:
        """A file ``getFile`` knows, downloadable at ``/file/bot<token>/<path>``."""
        self.files[file_id] = (path, data)

    def calls_of(self, method: str) -> list[Call]:
        """The calls of one method, oldest first."""
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every request)."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("fake Bot API: condition not met in time")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass
        return value

    def _notify(self) -> None:
        self.changed.set()

    # -------------------------------------------------------------- Bot API

    async def handle(self, request: web.Request) -> web.Response:
        """One Bot API method call."""
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _params(request)
        self.calls.append(Call(method, params, files, time.monotonic()))
        self._notify()
        failures = self.fail.get(method)
        if failures:
            failure = failures.pop(0)
            if failure.hang:
                await asyncio.sleep(failure.hang)
            extra = ({"parameters": {"retry_after": failure.retry_after}}
                     if failure.retry_after is not None else {})
            return _error(failure.status, failure.description, **extra)
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        result: web.Response = await handler(params, files)
        return result

    async def _getMe(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        return _ok(BOT_USER)

    async def _getUpdates(self, params: dict[str, Any],
                          files: dict[str, bytes]) -> web.Response:
        if self.webhook is not None:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active;"
                               " use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        if offset:  # everything below the offset is confirmed: Telegram forgets it
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        if not self.updates:
            self.changed.clear()
            hold = min(float(params.get("timeout") or 0), self.max_hold)
            if hold:
                try:
                    await asyncio.wait_for(self._next_update(), hold)
                except TimeoutError:
                    pass
        limit = min(int(params.get("limit") or 100), self.batch)
        return _ok(self.updates[:limit])

    async def _next_update(self) -> None:
        while not self.updates and not self.closing:
            self.changed.clear()
            await self.changed.wait()

    async def _setWebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        self.webhook = params
        return _ok(True)

    async def _getWebhookInfo(self, params: dict[str, Any],
                              files: dict[str, bytes]) -> web.Response:
        info: dict[str, Any] = {"url": "", "has_custom_certificate": False,
                                "pending_update_count": len(self.updates)}
        if self.webhook is not None:
            info["url"] = self.webhook.get("url", "")
            info["allowed_updates"] = self.webhook.get("allowed_updates", [])
            info["max_connections"] = 40
            if self.webhook_error:
                info["last_error_date"] = int(time.time()) - 60
                info["last_error_message"] = self.webhook_error
        return _ok(info)

    async def _deleteWebhook(self, params: dict[str, Any],
                             files: dict[str, bytes]) -> web.Response:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self.updates.clear()
        return _ok(True)

    async def _sendMessage(self, params: dict[str, Any],
                           files: dict[str, bytes]) -> web.Response:
        text = str(params.get("text", ""))
        if not text:
            return _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return _error(400, "Bad Request: message is too long")
        problem = _markup_problem(text, params.get("parse_mode"))
        if problem:
            return _error(400, f"Bad Request: can't parse entities: {problem}")
        return self._sent(params, {"text": text})

    async def _sendPhoto(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        if "photo" not in files:
            return _error(400, "Bad Request: there is no photo in the request")
        return self._sent(params, {"photo": [{"file_id": f"sent-photo-{len(self.calls)}",
                                              "file_unique_id": "u", "width": 1, "height": 1}],
                                   **({"caption": params["caption"]}
                                      if params.get("caption") else {})})

    async def _sendDocument(self, params: dict[str, Any],
                            files: dict[str, bytes]) -> web.Response:
        if "document" not in files:
            return _error(400, "Bad Request: there is no document in the request")
        return self._sent(params, {"document": {"file_id": f"sent-doc-{len(self.calls)}",
                                                "file_unique_id": "d"},
                                   **({"caption": params["caption"]}
                                      if params.get("caption") else {})})

    def _sent(self, params: dict[str, Any], content: dict[str, Any]) -> web.Response:
        chat_id = str(params.get("chat_id"))
        if chat_id in self.blocked_chats:
            return _error(403, "Forbidden: bot was blocked by the user")
        self.next_message_id += 1
        return _ok({"message_id": self.next_message_id, "from": BOT_USER,
                    "date": int(time.time()),
                    "chat": {"id": int(chat_id), "type": "private"}, **content})

    async def _getFile(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        file_id = str(params.get("file_id"))
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        path, data = self.files[file_id]
        if len(data) > MAX_DOWNLOAD:
            return _error(400, "Bad Request: file is too big")
        return _ok({"file_id": file_id, "file_unique_id": f"u-{file_id}",
                    "file_size": len(data), "file_path": path})

    async def _answerCallbackQuery(self, params: dict[str, Any],
                                   files: dict[str, bytes]) -> web.Response:
        return _ok(True)

    async def download(self, request: web.Request) -> web.StreamResponse:
        """``/file/bot<token>/<file_path>``: the file's bytes."""
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.match_info["path"]
        self.downloads.append(path)
        self._notify()
        for stored_path, data in self.files.values():
            if stored_path == path:
                return web.Response(body=data, content_type="application/octet-stream")
        return _error(404, "Not Found")


async def _params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """PTB posts form fields (JSON-encoded values) or multipart with files."""
    if request.content_type == "application/json":
        return dict(await request.json()), {}
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if part.name is None or not hasattr(part, "read"):
                continue
            data = await part.read()  # type: ignore[union-attr]
            if part.filename:  # type: ignore[union-attr]
                files[part.name] = bytes(data)
            else:
                params[part.name] = _value(bytes(data).decode())
        return params, files
    form = await request.post()
    return {key: _value(str(value)) for key, value in form.items()}, {}


def _value(text: str) -> Any:
    """PTB JSON-encodes non-string values (``true``, lists, objects)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


_MARKDOWN_V2_RESERVED = set("_*[]()~`>#+-=|{}.!")


def _markup_problem(text: str, parse_mode: object) -> str | None:
    """What Telegram would refuse in text meant to show literally (no entities): an
    unescaped MarkdownV2 character, or a raw ``<`` / ``&`` in HTML."""
    if parse_mode == "MarkdownV2":
        escaped = False
        for index, char in enumerate(text):
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in _MARKDOWN_V2_RESERVED:
                return f"character '{char}' is reserved and must be escaped (at {index})"
    elif parse_mode == "HTML":
        if "<" in text:
            return "unsupported start tag"
        if re.search(r"&(?!lt;|gt;|amp;|quot;)", text):
            return "unescaped '&'"
    return None


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, **extra: Any) -> web.Response:
    return web.json_response({"ok": False, "error_code": status, "description": description,
                              **extra}, status=status)
