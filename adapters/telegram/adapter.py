"""Telegram bot adapter: updates by long polling (or webhook) in, Bot API sends out.

Built on python-telegram-bot: its ``ExtBot`` makes every Bot API call and its
``Application`` dispatches each update to the handler that normalizes and stores it. PTB's
``Updater`` is not used: it confirms a batch to Telegram (the next ``getUpdates`` offset)
as soon as the batch is queued, before any handler stored it. Here the offset is a
checkpoint in the store, advanced past an update only after that update is committed, so
a crash loses nothing and a restart repeats nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web
from telegram import Message, ReplyParameters, Update
from telegram import error as tg_error
from telegram.ext import Application, ApplicationBuilder, CallbackContext, ExtBot, TypeHandler
from telegram.request import HTTPXRequest

from adapters.base import AdapterHealth, ChannelAdapter, OutboundMessage, SendResult
from adapters.telegram.config import TelegramConfig
from adapters.telegram.outbound import (
    MAX_CAPTION_UNITS,
    formatted,
    redact,
    retry_after_of,
    send_error,
    split_text,
    utf16_units,
)
from gateway.errors import (
    AdapterAuthError,
    AdapterConfigError,
    AdapterNotReady,
    Forbidden,
    MalformedPayload,
    NotFound,
    PermanentSendError,
    RetryableSendError,
)
from gateway.http import json_response, read_body
from gateway.media import MediaSource, ResolveFailed
from gateway.store.base import StoredAttachment
from gateway.supervisor import SupervisedLoop
from normalizer.errors import InvalidInput
from normalizer.model import Party
from normalizer.telegram import ParsedUpdate, file_id_of, parse_update

ALLOWED_UPDATES = ["message", "edited_message", "channel_post", "edited_channel_post",
                   "callback_query"]
PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_PHOTO_BYTES = 10 * 1024 * 1024  # larger images go as documents
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_PARTIAL_SENDS = 1000  # messages whose sent parts are remembered for their retry

Part = Callable[[], Coroutine[Any, Any, Message]]
T = TypeVar("T")


class _Bot(ExtBot[None]):
    """PTB's bot with one addition: ``getUpdates`` answered as the raw JSON, so what is
    stored as the message's raw payload is what Telegram sent, byte for byte equivalent."""

    async def raw_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        """``getUpdates`` → the list of update objects as Telegram sent them."""
        data: dict[str, Any] = {"timeout": timeout, "allowed_updates": ALLOWED_UPDATES}
        if offset:
            data["offset"] = offset
        result = await self._post("getUpdates", data, read_timeout=timeout + 10.0)
        return [item for item in result if isinstance(item, dict)]


class TelegramAdapter(ChannelAdapter):
    """One bot account: ``getUpdates`` (or ``POST /hooks/telegram/{account}``) in, sends out."""

    type = "telegram"
    channels = frozenset({"telegram"})
    # A shared contact links the sender's own phone number (never someone else's card).
    identity_kinds = frozenset({"telegram", "phone"})
    channel_identity_kinds = {"telegram": ("telegram",)}  # replies go to the user id
    config_class = TelegramConfig
    config: TelegramConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters.update({"updates": 0, "updates_ignored": 0, "updates_unreadable": 0,
                              "edits": 0, "callback_queries": 0, "last_update_at": 0})
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._ready = asyncio.Event()  # the bot answered getMe
        self._pending: dict[int, tuple[dict[str, Any], bytes]] = {}
        self._failures: dict[int, BaseException] = {}
        self._handled: set[int] = set()  # updates the Application's handler took
        self._sent_parts: dict[str, list[str]] = {}  # message id → provider ids already sent
        self._token = self.config.token.reveal()

    @property
    def checkpoint_key(self) -> str:
        """Where the next ``getUpdates`` offset is kept: per bot, so an account given
        another bot's token does not start from the old bot's offset (update ids are per
        bot, and an offset too high would confirm the new bot's updates unread)."""
        return f"telegram:{self.name}:{self.config.bot_id}:offset"

    def sender(self, channel: str) -> Party:
        """Replies come from the bot (its user id is the token's first part)."""
        return Party("telegram", self.config.bot_id, None)

    def routes(self) -> Sequence[web.RouteDef]:
        """``POST /hooks/telegram/{account}``: updates in webhook mode."""
        return [web.post("", self.handle_webhook)]

    def health(self) -> AdapterHealth:
        """State, counters (``last_update_at``: unix seconds of the latest update) and the
        update loop; ``last_error`` is the loop's latest failure when the bot has one."""
        health = super().health()
        if health.last_error is None:
            health.last_error = next((loop.last_error for loop in health.loops
                                      if loop.last_error), None)
        return health

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Build the bot (no I/O yet), register the file source, start the update loop."""
        base = self.config.api_base_url
        app = ApplicationBuilder().bot(self._new_bot()).updater(None).build()
        app.add_handler(TypeHandler(Update, self._on_update))
        self._app = app
        self.ctx.media.register(self.media_source, MediaSource.of(
            [base], resolve=self._resolve_file))
        body = self._poll if self.config.mode == "polling" else self._webhook
        self.ctx.supervise(f"telegram:{self.name}:{self.config.mode}", body)

    def _new_bot(self) -> _Bot:
        """The account's bot on ``api_base_url`` (no I/O until it is initialized)."""
        # httpx logs every request URL at INFO, and a Bot API URL holds the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        base = self.config.api_base_url
        requests = HTTPXRequest(connection_pool_size=self.limits.concurrency + 4,
                                read_timeout=self.config.timeout,
                                write_timeout=self.config.timeout,
                                connect_timeout=min(self.config.timeout, 10.0))
        polls = HTTPXRequest(read_timeout=self.config.poll_timeout + 10.0,
                             connect_timeout=min(self.config.timeout, 10.0))
        return _Bot(self._token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot",
                    request=requests, get_updates_request=polls)

    @property
    def webhook_url(self) -> str:
        """Where Telegram is told to post updates in webhook mode."""
        return self.config.webhook_url or (
            f"{self.ctx.public_url.rstrip('/')}/hooks/telegram/{self.name}")

    async def probe(self) -> str | None:
        """``getMe`` (the token works: "bot @name"), then ``getWebhookInfo``: the webhook
        Telegram has must be this account's own URL in webhook mode, and none in polling
        mode (unless it is this account's own, left from its webhook mode). A webhook
        elsewhere means another installation takes this bot's updates; starting this
        account would take them over (``setWebhook`` / ``deleteWebhook``)."""
        bot = self._new_bot()
        try:
            try:
                await bot.initialize()  # getMe
                me = bot.bot
                info = await bot.get_webhook_info()
            except tg_error.InvalidToken:
                # from None: PTB's own message quotes the token.
                raise AdapterAuthError("Telegram refused the bot token (getMe): copy it "
                                       "again from @BotFather", channel_type=self.type,
                                       account=self.name) from None
            except tg_error.TelegramError as exc:
                raise AdapterNotReady(redact(f"Telegram Bot API at {self.config.api_base_url} "
                                             f"failed: {type(exc).__name__}: {exc}",
                                             self._token)[:300],
                                      channel_type=self.type, account=self.name) from None
        finally:
            with contextlib.suppress(Exception):  # closing must not hide the answer
                await bot.shutdown()
        summary = f"bot @{me.username}"
        hook = redact(info.url or "", self._token)  # some set the token in a hook's path
        if self.config.mode == "webhook":
            if hook and hook != self.webhook_url:
                raise AdapterConfigError(
                    f"Telegram posts this bot's updates to {hook}, not to this account's "
                    f"{self.webhook_url}: another installation may be using the bot (starting "
                    "this account moves the webhook here), or set webhook_url / public_url",
                    channel_type=self.type, account=self.name)
            summary += (f", webhook {hook}" if hook else
                        ", no webhook set yet (starting the account sets it)")
            if info.last_error_message:
                summary += f"; Telegram's last delivery error: {info.last_error_message}"
            return summary
        if hook == self.webhook_url:  # left by this account's own webhook mode
            return summary + (f", polling; its old webhook {hook} is still set (starting "
                              "the account deletes it)")
        if hook:
            raise AdapterConfigError(
                f"Telegram has a webhook for this bot ({hook}) but this account polls: "
                "another installation may be taking its updates by webhook (starting this "
                'account deletes that webhook); use mode = "webhook" or remove it '
                "(deleteWebhook)", channel_type=self.type, account=self.name)
        return summary + ", polling (no webhook set)"

    async def on_stop(self) -> None:
        """Fetches wait until the account runs again; the bot's connections close."""
        self.ctx.media.unregister(self.media_source)
        self._ready.clear()
        if self._app is not None:
            with contextlib.suppress(Exception):  # closing must not fail the stop
                await self._app.shutdown()

    @property
    def bot(self) -> _Bot:
        """The account's bot (after start)."""
        if self._app is None:
            raise RuntimeError(f"telegram account {self.name!r} is not started")
        bot = self._app.bot
        assert isinstance(bot, _Bot)
        return bot

    async def _initialize(self) -> None:
        """``getMe``: the token works. A refused token is an auth error (slow retries)."""
        assert self._app is not None
        if self._app._initialized:  # PTB has no public flag
            return
        try:
            await self._app.initialize()
        except tg_error.InvalidToken as exc:
            raise AdapterAuthError("Telegram refused the bot token (getMe)",
                                   channel_type=self.type, account=self.name) from exc
        except tg_error.TelegramError as exc:
            raise RuntimeError(redact(f"getMe failed: {type(exc).__name__}: {exc}",
                                      self._token)) from None
        self._ready.set()

    # ------------------------------------------------------------------ polling

    async def _poll(self, loop: SupervisedLoop) -> None:
        """Long-poll ``getUpdates`` from the stored offset; store each update, then move
        the offset past it. Ends when the daemon starts draining."""
        await self._initialize()
        try:
            await self.bot.delete_webhook(drop_pending_updates=False)
        except tg_error.TelegramError as exc:
            raise RuntimeError(redact(f"deleteWebhook failed: {exc}", self._token)) from None
        offset = int(await self.ctx.store.get_checkpoint(self.checkpoint_key) or 0)
        loop.ok()
        while not self.ctx.stopping.is_set():
            try:
                updates = await self._until_stopping(
                    self.bot.raw_updates(offset, self.config.poll_timeout))
            except tg_error.RetryAfter as exc:  # flood control: wait as told, then go on
                await self._until_stopping(asyncio.sleep(retry_after_of(exc)))
                continue
            except tg_error.InvalidToken as exc:
                raise AdapterAuthError("Telegram refused the bot token (getUpdates)",
                                       channel_type=self.type, account=self.name) from exc
            except tg_error.Conflict as exc:
                raise AdapterConfigError(
                    redact(f"another client polls this bot or a webhook is set: {exc}",
                           self._token), channel_type=self.type, account=self.name) from None
            except tg_error.TelegramError as exc:
                raise RuntimeError(redact(f"getUpdates failed: {type(exc).__name__}: {exc}",
                                          self._token)) from None
            if updates is None:  # draining
                return
            for raw in updates:
                update_id = raw.get("update_id")
                if not isinstance(update_id, int) or update_id < offset:
                    continue  # a repeat of an update already stored
                await self.process(raw, orjson.dumps(raw))
                offset = update_id + 1
                await self.ctx.store.set_checkpoint(self.checkpoint_key, str(offset))
            loop.ok()

    async def _until_stopping(self, call: Coroutine[Any, Any, T]) -> T | None:
        """``call``'s result, or None (the call cancelled) once the daemon starts draining:
        a long poll must not hold shutdown. Updates it had fetched are not confirmed, so
        Telegram sends them again after the restart."""
        task = asyncio.ensure_future(call)
        stopping = asyncio.ensure_future(self.ctx.stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, tg_error.TelegramError):
                    await task
        return task.result() if task.done() and not task.cancelled() else None

    # ------------------------------------------------------------------ webhook

    async def _webhook(self, loop: SupervisedLoop) -> None:
        """``setWebhook`` with the secret token, then stay up (the hook does the work)."""
        await self._initialize()
        assert self.config.webhook_secret is not None  # the config requires it
        try:
            await self.bot.set_webhook(self.webhook_url,
                                       secret_token=self.config.webhook_secret.reveal(),
                                       allowed_updates=ALLOWED_UPDATES)
        except tg_error.InvalidToken as exc:
            raise AdapterAuthError("Telegram refused the bot token (setWebhook)",
                                   channel_type=self.type, account=self.name) from exc
        except tg_error.TelegramError as exc:
            raise RuntimeError(redact(f"setWebhook failed: {exc}", self._token)) from None
        loop.ok()
        await self.ctx.stopping.wait()

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """One update from Telegram: secret checked first, stored, then 200."""
        secret = self.config.webhook_secret
        if self.config.mode != "webhook" or secret is None:
            raise Forbidden(f"telegram account {self.name!r} polls for updates; "
                            "its webhook is off")
        header = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(header.encode(), secret.reveal().encode()):
            raise Forbidden(f"{SECRET_HEADER} is missing or wrong")
        body = await read_body(request)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise MalformedPayload("an update must be a JSON object")
        if not self._ready.is_set():  # Telegram retries: nothing is lost
            return json_response({"error": {"code": "adapter_not_ready",
                                            "message": "the bot is starting"}},
                                 status=503, headers={"Retry-After": "5"})
        await self.process(payload, body)
        return json_response({"ok": True})

    # ------------------------------------------------------------------ one update

    async def process(self, raw: dict[str, Any], body: bytes) -> None:
        """Hand one update to the Application and return once it is stored (raises when it
        could not be, so the offset stays and the update comes again)."""
        assert self._app is not None
        update_id = raw.get("update_id")
        if not isinstance(update_id, int):
            raise MalformedPayload("update_id must be an integer")
        self._pending[update_id] = (raw, body)
        try:
            try:
                update = Update.de_json(raw, self._app.bot)
            except Exception as exc:  # a shape PTB cannot read: the normalizer judges it
                self.log.info("telegram.update_not_for_ptb", update_id=update_id,
                              error=f"{type(exc).__name__}: {exc}"[:200])
            else:
                await self._app.process_update(update)
            if update_id not in self._handled:  # PTB skipped it: never pass it unstored
                await self._store(raw, body)
        finally:
            self._pending.pop(update_id, None)
            self._handled.discard(update_id)
        failure = self._failures.pop(update_id, None)
        if failure is not None:
            raise failure

    async def _on_update(self, update: Update,
                         context: CallbackContext[Any, Any, Any, Any]) -> None:
        """The Application's handler: normalize, store, then answer a callback query.
        A failure is kept for :meth:`process` (the Application would only log it)."""
        self._handled.add(update.update_id)
        raw, body = self._pending[update.update_id]
        try:
            await self._store(raw, body)
        except Exception as exc:
            self._failures[update.update_id] = exc

    async def _store(self, raw: dict[str, Any], body: bytes) -> None:
        self.counters["updates"] += 1
        self.counters["last_update_at"] = int(time.time())
        try:
            parsed = parse_update(raw, self.name, api_base_url=self.config.api_base_url,
                                  media_source=self.media_source)
        except InvalidInput as exc:
            # Not a shape Telegram sends: refusing it would stop the stream behind it for
            # good, so it is counted and logged (by update id, not content) and passed.
            self.counters["updates_unreadable"] += 1
            self.log.warning("telegram.update_unreadable", update_id=raw.get("update_id"),
                             error=str(exc))
            return
        if parsed.ignored is not None:
            self.counters["updates_ignored"] += 1
            return
        if parsed.edit is not None:
            await self._apply_edit(parsed, body)
        elif parsed.message is not None:
            parsed.message.raw = body
            parsed.message.raw_content_type = "application/json"
            await self.ingest(parsed.message)
        if parsed.callback_query_id is not None:
            self.counters["callback_queries"] += 1
            await self._answer(parsed.callback_query_id)

    async def _apply_edit(self, parsed: ParsedUpdate, body: bytes) -> None:
        """An edit changes the stored message; one never seen is stored as it is now."""
        edit = parsed.edit
        assert edit is not None
        if edit.message.group is not None and not self.ctx.groups:
            self.counters["group_posts_ignored"] += 1
            return
        try:
            await self.ctx.store.change_message(self.type, self.name,
                                                edit.provider_message_id, edit.change)
            self.counters["edits"] += 1
        except NotFound:
            edit.message.raw = body
            edit.message.raw_content_type = "application/json"
            await self.ingest(edit.message)

    async def _answer(self, query_id: str) -> None:
        """Stop the button's spinner. Already answered or too old: nothing to do."""
        try:
            await self.bot.answer_callback_query(query_id)
        except tg_error.TelegramError as exc:
            self.log.info("telegram.callback_answer_failed",
                          error=redact(str(exc), self._token)[:200])

    # ------------------------------------------------------------------ files

    async def _resolve_file(self, reference: str) -> str:
        """``getFile`` for a stored file reference → its download URL on ``api_base_url``
        (the token is in its path: it goes nowhere else, and is never stored)."""
        file_id = file_id_of(reference)
        if file_id is None:
            raise ResolveFailed("not a Telegram file reference", retry=False)
        try:
            await self._initialize()
            file = await self.bot.get_file(file_id)
        except tg_error.RetryAfter as exc:
            raise ResolveFailed("getFile: flood control", retry=True,
                                retry_after=retry_after_of(exc)) from None
        except tg_error.BadRequest as exc:  # e.g. "file is too big" (over 20 MB)
            raise ResolveFailed(redact(f"getFile refused: {exc}", self._token),
                                retry=False) from None
        except (tg_error.TelegramError, AdapterAuthError, RuntimeError) as exc:
            raise ResolveFailed(redact(f"getFile failed: {type(exc).__name__}: {exc}",
                                       self._token), retry=True) from None
        if not file.file_path:
            raise ResolveFailed("getFile gave no file_path", retry=True)
        path: str = file.file_path
        if path.startswith(("http://", "https://")):  # PTB prefixes base_file_url
            return path
        return f"{self.config.api_base_url}/file/bot{self._token}/{path.lstrip('/')}"

    # ------------------------------------------------------------------ outbound

    async def send(self, message: OutboundMessage) -> SendResult:
        """Text (split past 4,096 characters), then photos and documents; a single file
        with a short text goes as one captioned message. A retry skips the parts that
        already went out."""
        chat_id = message.group.id if message.group is not None else message.to.address
        parts = self._parts(chat_id, message)
        if not parts:
            raise PermanentSendError("nothing to send: no text and no attachments",
                                     error_code="empty_message")
        sent = self._sent_parts.setdefault(message.id, [])
        while len(self._sent_parts) > MAX_PARTIAL_SENDS:  # the outbox gave up on the oldest
            del self._sent_parts[next(iter(self._sent_parts))]
        try:
            for part in parts[len(sent):]:
                result = await part()
                sent.append(f"{result.chat_id}:{result.message_id}")
        except tg_error.TelegramError as exc:
            error = send_error(exc, self._token)
            if not isinstance(error, RetryableSendError):
                self._sent_parts.pop(message.id, None)
            raise error from None
        except (OSError, RuntimeError) as exc:
            raise RetryableSendError(f"cannot send: {type(exc).__name__}: "
                                     f"{redact(str(exc), self._token)[:200]}") from None
        self._sent_parts.pop(message.id, None)
        return SendResult(sent[0], "sent")

    def _parts(self, chat_id: str, message: OutboundMessage) -> list[Part]:
        """The Bot API calls one outbound message takes, in order."""
        text = message.text or ""
        attachments = list(message.attachments)
        reply_to = _reply_target(chat_id, message.reply_to_provider_id)
        parts: list[Part] = []
        caption: str | None = None
        if len(attachments) == 1 and text and utf16_units(text) <= MAX_CAPTION_UNITS:
            caption, text = text, ""
        for chunk in split_text(text) if text else []:
            body, mode = formatted(chunk, self.config.parse_mode)
            parts.append(self._call(self.bot.send_message, chat_id=chat_id, text=body,
                                    parse_mode=mode, reply_parameters=_replying(reply_to)))
            reply_to = None
        for attachment in attachments:
            parts.append(self._file_part(chat_id, attachment, caption, reply_to))
            caption = None
        return parts

    def _file_part(self, chat_id: str, attachment: StoredAttachment, caption: str | None,
                   reply_to: int | None) -> Part:
        """A photo (JPEG, PNG or WebP up to 10 MB) or else a document."""
        async def send_file() -> Message:
            path = await self.ctx.store.blob_file(attachment.sha256)
            data = await asyncio.to_thread(path.read_bytes)
            body, mode = formatted(caption, self.config.parse_mode) if caption else (None,
                                                                                     None)
            common: dict[str, Any] = {"chat_id": chat_id, "caption": body, "parse_mode": mode,
                                      "filename": attachment.filename,
                                      "reply_parameters": _replying(reply_to)}
            if attachment.content_type in PHOTO_TYPES and attachment.size <= MAX_PHOTO_BYTES:
                return await self.bot.send_photo(photo=data, **common)
            return await self.bot.send_document(document=data, **common)
        return send_file

    @staticmethod
    def _call(method: Callable[..., Coroutine[Any, Any, Message]], **kwargs: Any) -> Part:
        async def call() -> Message:
            return await method(**kwargs)
        return call


def _replying(message_id: int | None) -> ReplyParameters | None:
    """Quote the answered message; sent anyway when it was deleted meanwhile."""
    if message_id is None:
        return None
    return ReplyParameters(message_id, allow_sending_without_reply=True)


def _reply_target(chat_id: str, provider_id: str | None) -> int | None:
    """The message id to reply to when the answered message is in the same chat."""
    if not provider_id:
        return None
    chat, _, message_id = provider_id.partition(":")
    return int(message_id) if chat == chat_id and message_id.isdigit() else None
