"""Meta adapter: Messenger, Instagram DMs and the WhatsApp Cloud API behind one app webhook.

Inbound: ``GET /hooks/meta/{account}`` answers Meta's verification handshake; ``POST``
checks ``X-Hub-Signature-256`` before anything else, then stores every message of the batch
(each once, by its message id), applies edits, reactions and deletions, and hands
receipts to the receipt sink, acknowledging only after all of it is committed.

Outbound: the Graph API's Send API (``/{page-id}/messages`` for Messenger and Instagram,
``/{phone-number-id}/messages`` for WhatsApp), with Meta's messaging windows applied before
anything is sent, attachments uploaded first, and Graph errors mapped in ``graph.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from adapters.base import (
    AdapterConfig,
    AdapterContext,
    ChannelAdapter,
    OutboundMessage,
    SendLimits,
    SendResult,
)
from adapters.meta.config import WHATSAPP_MEDIA_HOSTS, MetaConfig
from adapters.meta.graph import (
    AUTH_CODES,
    RATE_LIMIT_CODES,
    TEMPORARY_CODES,
    GraphClient,
    graph_error,
)
from gateway.errors import (
    AdapterAuthError,
    AdapterConfigError,
    AdapterNotReady,
    Forbidden,
    InboundRejected,
    MalformedPayload,
    NotFound,
    PermanentSendError,
    RetryableSendError,
    ValidationFailed,
    from_invalid_input,
)
from gateway.http import json_response, read_body, retry_after_seconds, unreachable_reason
from gateway.media import MediaSource, ResolveFailed, source_name
from gateway.receipts import DeliveryError, Receipt
from gateway.store.base import StoredAttachment
from normalizer.errors import InvalidInput
from normalizer.meta import (
    INSTAGRAM,
    MESSENGER,
    WHATSAPP,
    MetaAccount,
    MetaChange,
    MetaEvent,
    MetaReadWatermark,
    MetaReceipt,
    MetaSkipped,
    parse_meta_webhook,
)
from normalizer.model import InboundMessage, Party
from normalizer.urls import origin_of

if TYPE_CHECKING:
    from gateway.receipts import Receipts

Part = Callable[[], Awaitable[str]]  # sends one part of a message, returns its message id

STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
ECHO_MATCH_WINDOW = 300.0  # seconds: an echo racing our own send's commit still matches it
OWN_MIDS_KEPT = 10_000  # message ids of our recent sends, so their echoes add nothing
# Longest text one Graph message may carry; a longer reply goes out as several messages.
TEXT_LIMITS = {MESSENGER: 2000, INSTAGRAM: 1000, WHATSAPP: 4096}  # UTF-8 bytes for Instagram
_MESSENGER_FILE_TYPES = (("image/", "image"), ("video/", "video"), ("audio/", "audio"))
_WHATSAPP_FILE_TYPES = (("image/jpeg", "image"), ("image/png", "image"),
                        ("video/", "video"), ("audio/", "audio"))


class MetaSignatureInvalid(Forbidden):
    """``X-Hub-Signature-256`` is missing or does not match the body (403, as Meta expects
    of a receiver that refuses a request)."""

    code = "invalid_signature"


class MetaAdapter(ChannelAdapter):
    """``GET|POST /hooks/meta/{account}`` in; the Graph Send API out."""

    type = "meta"
    channels = frozenset({MESSENGER, INSTAGRAM, WHATSAPP})
    identity_kinds = frozenset({"messenger", "instagram", "phone", "whatsapp"})
    # A WhatsApp reply goes to the customer's number, or to their business-scoped user id
    # when WhatsApp withholds the number.
    channel_identity_kinds = {MESSENGER: ("messenger",), INSTAGRAM: ("instagram",),
                              WHATSAPP: ("phone", "whatsapp")}
    config_class = MetaConfig
    config: MetaConfig

    def __init__(self, name: str, config: AdapterConfig, ctx: AdapterContext, *,
                 limits: SendLimits | None = None) -> None:
        super().__init__(name, config, ctx, limits=limits)
        # An account serves only the networks it configures: the daemon routes replies
        # and lists accounts by ``adapter.channels``.
        self.__dict__["channels"] = self.config.networks
        self.graph = GraphClient(self.ctx.http, self.config.graph_url, self.config.timeout)
        self.account = MetaAccount(
            self.name, self.config.page_id, self.config.instagram_account_id,
            self.config.whatsapp_phone_number_id, self.config.graph_url,
            cdn_source=source_name(self.type, self.name),
            graph_source=source_name(self.type, self.name) + "/whatsapp")
        self._own_mids: OrderedDict[str, None] = OrderedDict()
        # Parts already sent of a message whose later part failed (text sent, attachment
        # rate limited): the outbox's retry sends only the rest, never the text twice.
        self._sent_parts: OrderedDict[str, list[str]] = OrderedDict()
        self.counters.update({"changes": 0, "receipts": 0, "skipped": 0})

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Register the media sources: the CDN hosts of Messenger/Instagram links (no
        credentials) and, for WhatsApp, the Graph API and its media host (with the token)."""
        self.ctx.media.register(self.account.cdn_source, MediaSource.of(self.config.media_hosts))
        if self.config.whatsapp_access_token is not None:
            token = self.config.whatsapp_access_token

            async def credentials() -> Mapping[str, str]:
                return {"Authorization": f"Bearer {token.reveal()}"}

            self.ctx.media.register(self.account.graph_source, MediaSource.of(
                [origin_of(self.config.graph_url) or self.config.graph_url,
                 *WHATSAPP_MEDIA_HOSTS],
                credentials=credentials, resolve=self._media_url))

    async def probe(self) -> str | None:
        """Read who each configured network is, with its own token: the Page (``GET
        /me?fields=id,name``; its id must be ``page_id``; with Instagram also the Page's
        ``instagram_business_account``, which must be ``instagram_account_id``) and the
        WhatsApp number (``GET /{phone-number-id}?fields=display_phone_number,
        verified_name,quality_rating``)."""
        parts = []
        page_token, page_id = self.config.page_access_token, self.config.page_id
        if page_token is not None and page_id:
            fields = "id,name,instagram_business_account" \
                if self.config.instagram_account_id else "id,name"
            page = await self._probe_read(f"me?fields={fields}", page_token.reveal(), "Page")
            if str(page.get("id")) != page_id:
                raise AdapterConfigError(
                    f"page_access_token belongs to {page.get('name')!r} ({page.get('id')}), "
                    f"not to page_id {page_id}: use a Page access token of that Page (a user "
                    "token names the user)", channel_type=self.type, account=self.name)
            parts.append(f"Page {page.get('name')} ({page_id})")
            instagram = self.config.instagram_account_id
            if instagram:
                linked = page.get("instagram_business_account")
                linked_id = str(linked.get("id")) if isinstance(linked, dict) else None
                if linked_id != instagram:
                    raise AdapterConfigError(
                        f"instagram_account_id {instagram} is not the Instagram account "
                        f"linked to Page {page_id} ({linked_id or 'none linked'}): link it "
                        "in the Page's settings or fix the id", channel_type=self.type,
                        account=self.name)
                parts.append(f"Instagram {instagram}")
        wa_token, phone_id = self.config.whatsapp_access_token, \
            self.config.whatsapp_phone_number_id
        if wa_token is not None and phone_id:
            phone = await self._probe_read(
                f"{phone_id}?fields=display_phone_number,verified_name,quality_rating",
                wa_token.reveal(), "WhatsApp phone number")
            parts.append(f"WhatsApp {phone.get('display_phone_number')} "
                         f"({phone.get('verified_name')}, quality "
                         f"{phone.get('quality_rating', 'unknown')})")
        return ", ".join(parts) or None

    async def _probe_read(self, path: str, token: str, what: str) -> dict[str, object]:
        """One Graph GET of :meth:`probe`; its errors as adapter errors, without the token."""
        try:
            status, answer, _ = await self.graph.get_json(path, token)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AdapterNotReady(f"Graph API at {self.config.graph_url} did not answer: "
                                  f"{unreachable_reason(exc)}", channel_type=self.type,
                                  account=self.name) from None
        if 200 <= status < 300 and "error" not in answer:
            return answer
        error = graph_error(status, answer, {})
        said = error.message.replace(token, "<token>")
        codes = f"{error.status}, code {error.code}" if error.code else str(error.status)
        if error.codes & AUTH_CODES:
            raise AdapterAuthError(f"Meta refused the {what}'s access token ({codes}): "
                                   f"{said}; make a new one", channel_type=self.type,
                                   account=self.name)
        if error.status >= 500 or error.status == 429 or error.transient or \
                error.codes & (TEMPORARY_CODES | RATE_LIMIT_CODES):
            raise AdapterNotReady(f"Graph API failed reading the {what} ({codes}): {said}",
                                  channel_type=self.type, account=self.name)
        raise AdapterConfigError(f"Graph API refused reading the {what} ({codes}): {said}",
                                 channel_type=self.type, account=self.name)

    async def on_stop(self) -> None:
        """Pending fetches wait until the account runs again."""
        self.ctx.media.unregister(self.account.cdn_source)
        self.ctx.media.unregister(self.account.graph_source)

    def routes(self) -> Sequence[web.RouteDef]:
        """One URL for the verification handshake (GET) and the events (POST)."""
        return [web.get("", self.handle_verification), web.post("", self.handle_events)]

    def sender(self, channel: str) -> Party:
        """Replies come from the Page, the Instagram account or the WhatsApp number."""
        if channel == INSTAGRAM:
            return Party(INSTAGRAM, self.config.instagram_account_id or "")
        if channel == WHATSAPP:
            return Party(WHATSAPP, self.config.whatsapp_phone_number_id or "")
        return Party(MESSENGER, self.config.page_id or "")

    # ------------------------------------------------------------------ inbound

    async def handle_verification(self, request: web.Request) -> web.Response:
        """Meta's subscription check: exactly ``hub.challenge`` as text/plain, or 403."""
        query = request.query
        token = query.get("hub.verify_token", "")
        expected = self.config.verify_token.reveal()
        if query.get("hub.mode") != "subscribe" or not expected or not hmac.compare_digest(
                token.encode(), expected.encode()):
            raise Forbidden("hub.mode must be subscribe and hub.verify_token this "
                            "account's verify_token")
        return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")

    def _check_signature(self, header: str, body: bytes) -> None:
        secret = self.config.app_secret.reveal().encode()
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not secret or not hmac.compare_digest(header.strip().lower().encode(),
                                                 expected.encode()):
            raise MetaSignatureInvalid("X-Hub-Signature-256 does not match the body "
                                       "(HMAC-SHA256 with the app secret)")

    async def handle_events(self, request: web.Request) -> web.Response:
        """Verify, store every event of the batch, then acknowledge (200)."""
        header = request.headers.get("X-Hub-Signature-256")
        if not header:  # refused before the body is read
            raise MetaSignatureInvalid("X-Hub-Signature-256 is missing")
        body = await read_body(request)
        self._check_signature(header, body)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc
        try:
            events = parse_meta_webhook(payload, self.account)
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
        outcome = {"stored": 0, "duplicates": 0, "changes": 0, "receipts": 0, "skipped": 0}
        for event in events:
            await self._apply(event, outcome)
        return json_response(outcome)

    async def _apply(self, event: MetaEvent, outcome: dict[str, int]) -> None:
        """Store or apply one event; returns after its commit."""
        if isinstance(event, InboundMessage):
            if event.direction == "outbound":
                if event.provider_message_id in self._own_mids:  # our own send: nothing
                    outcome["duplicates"] += 1
                    return
                event.match_window = ECHO_MATCH_WINDOW
            try:
                result = await self.ingest(event)
            except (ValidationFailed, InboundRejected) as exc:
                # Signed by Meta but unusable (an identity that cannot be one): refusing
                # the POST would make Meta redeliver the whole batch for days, so it is
                # logged and skipped, and the rest of the batch is stored.
                self.log.warning("meta.event_refused", network=event.channel,
                                 provider_message_id=event.provider_message_id,
                                 error=exc.message)
                self._skip(outcome, "refused", event.channel)
                return
            outcome["stored" if result.created else "duplicates"] += 1
        elif isinstance(event, MetaChange):
            try:
                await self.ctx.store.change_message(event.channel, self.name,
                                                    event.provider_message_id, event.change)
            except NotFound:  # a message from before omnirelay, or one it never stored
                self._skip(outcome, "change_of_unknown_message", event.channel)
                return
            self.counters["changes"] += 1
            outcome["changes"] += 1
        elif isinstance(event, MetaReceipt):
            receipts = self._receipts()
            error = None if event.error is None else DeliveryError(*event.error)
            await receipts(Receipt(event.channel, self.name, event.provider_message_id,
                                   event.status, error, event.at))
            self.counters["receipts"] += 1
            outcome["receipts"] += 1
        elif isinstance(event, MetaReadWatermark):
            await self._receipts().read_up_to(event.channel, self.name, event.reader,
                                              event.watermark)
            self.counters["receipts"] += 1
            outcome["receipts"] += 1
        elif isinstance(event, MetaSkipped):
            self._skip(outcome, event.reason, event.detail.get("channel", ""))

    def _skip(self, outcome: dict[str, int], reason: str, channel: str) -> None:
        self.counters["skipped"] += 1
        outcome["skipped"] += 1
        self.log.debug("meta.event_skipped", reason=reason, network=channel)

    def _receipts(self) -> Receipts:
        if self.ctx.receipts is None:
            raise RuntimeError("the daemon gave this adapter no receipt sink")
        return self.ctx.receipts

    async def _media_url(self, url: str) -> str:
        """A WhatsApp media id's download URL (``GET /{media-id}`` answers ``{"url": …}``)."""
        token = self.config.whatsapp_access_token
        assert token is not None
        status, answer, retry_after = await self.graph.get_json(url, token.reveal())
        if status == 200 and isinstance(answer.get("url"), str):
            return str(answer["url"])
        error = answer.get("error")
        said = error.get("message") if isinstance(error, dict) else None
        message = str(said or f"answered {status}")
        raise ResolveFailed(f"WhatsApp media lookup: {message}"[:300],
                            retry=status in (408, 429) or status >= 500,
                            retry_after=retry_after_seconds(retry_after),
                            code="media_lookup_failed")

    # ------------------------------------------------------------------ outbound

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send on Messenger, Instagram or WhatsApp within Meta's messaging windows."""
        if message.channel not in self.config.networks:
            raise PermanentSendError(f"account {self.name!r} is not configured for "
                                     f"{message.channel}", error_code="channel_not_configured")
        pause = self.graph.pause_left()
        if pause > 0:  # rate limited a moment ago: wait instead of hitting the limit again
            raise RetryableSendError("rate limited by Meta; pacing sends",
                                     retry_after=pause, error_code="rate_limited")
        age = await self._window_age(message)
        if message.channel == WHATSAPP:
            parts = self._whatsapp_parts(message, age)
        else:
            parts = self._messenger_parts(message, age)
        ids = self._sent_parts.setdefault(message.id, [])
        while len(self._sent_parts) > OWN_MIDS_KEPT:  # messages the outbox gave up on
            self._sent_parts.popitem(last=False)
        try:
            for part in parts[len(ids):]:
                mid = await part()
                self._remember(mid)
                ids.append(mid)
        except PermanentSendError:
            self._sent_parts.pop(message.id, None)
            raise
        self._sent_parts.pop(message.id, None)
        return SendResult(ids[0] if ids else None, "sent")

    def _remember(self, mid: str) -> None:
        self._own_mids[mid] = None
        while len(self._own_mids) > OWN_MIDS_KEPT:
            self._own_mids.popitem(last=False)

    async def _window_age(self, message: OutboundMessage) -> timedelta | None:
        """How long ago the customer last wrote on this channel, as far as the reply
        shows (the message it answers); None when unknown (a proactive message)."""
        if message.in_reply_to is None:
            return None
        try:
            answered = await self.ctx.store.get_message(message.in_reply_to)
        except NotFound:
            return None
        if answered.get("channel") != message.channel or \
                answered.get("direction") != "inbound":
            return None
        when = answered.get("sent_at") or answered.get("received_at")
        if not isinstance(when, str):
            return None
        sent = datetime.fromisoformat(when.replace("Z", "+00:00"))
        return datetime.now(UTC) - sent

    def _messenger_parts(self, message: OutboundMessage, age: timedelta | None) -> list[Part]:
        """Messenger and Instagram: RESPONSE inside 24 hours, the HUMAN_AGENT tag up to
        7 days where the Page may use it, else ``window_closed`` (nothing is sent)."""
        if age is not None and age <= STANDARD_WINDOW:
            kind: dict[str, object] = {"messaging_type": "RESPONSE"}
        elif age is not None and age <= HUMAN_AGENT_WINDOW and self.config.human_agent:
            kind = {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
        else:
            allowed = "7 days (HUMAN_AGENT)" if self.config.human_agent else "24 hours"
            raise PermanentSendError(
                f"the customer last wrote on {message.channel} "
                f"{_ago(age)}; replies are allowed within {allowed}",
                error_code="window_closed")
        token = self._page_token()
        path = f"{self.config.page_id}/messages"
        recipient = {"id": message.to.address}
        parts: list[Part] = []

        def text(chunk: str) -> Part:
            async def send_text() -> str:
                return _message_id(await self.graph.post_json(path, token, {
                    "recipient": recipient, **kind, "message": {"text": chunk}}))
            return send_text

        def file(attachment: StoredAttachment) -> Part:
            async def send_file() -> str:
                kind_name = _file_type(attachment.content_type, _MESSENGER_FILE_TYPES, "file")
                attachment_id = await self._upload_messenger(attachment, kind_name, token)
                return _message_id(await self.graph.post_json(path, token, {
                    "recipient": recipient, **kind, "message": {"attachment": {
                        "type": kind_name, "payload": {"attachment_id": attachment_id}}}}))
            return send_file

        parts.extend(text(chunk) for chunk in split_text(message.text, message.channel))
        parts.extend(file(attachment) for attachment in message.attachments)
        return parts

    async def _upload_messenger(self, attachment: StoredAttachment, kind: str,
                                token: str) -> str:
        """The Attachment Upload API: the file's bytes in, an ``attachment_id`` out."""
        form = aiohttp.FormData()
        form.add_field("message", orjson.dumps({"attachment": {
            "type": kind, "payload": {"is_reusable": False}}}).decode())
        form.add_field("filedata", await self._read(attachment), filename=attachment.filename,
                       content_type=attachment.content_type)
        answer = await self.graph.post_form(f"{self.config.page_id}/message_attachments",
                                            token, form)
        value = answer.get("attachment_id")
        if not isinstance(value, str | int):
            raise RetryableSendError("the attachment upload answered no attachment_id",
                                     error_code="provider_unavailable")
        return str(value)

    def _whatsapp_parts(self, message: OutboundMessage, age: timedelta | None) -> list[Part]:
        """A session message inside 24 hours; outside, the template the request names,
        else ``window_closed`` (nothing is sent)."""
        token = self._whatsapp_token()
        path = f"{self.config.whatsapp_phone_number_id}/messages"
        base: dict[str, object] = {"messaging_product": "whatsapp", "recipient_type":
                                   "individual", **_whatsapp_to(message.to)}
        if age is None or age > STANDARD_WINDOW:
            if not message.template:
                raise PermanentSendError(
                    f"the customer last wrote on WhatsApp {_ago(age)}; outside 24 hours only "
                    "an approved template may be sent: name one in \"template\"",
                    error_code="window_closed")

            async def template() -> str:
                return _whatsapp_id(await self.graph.post_json(path, token, {
                    **base, "type": "template", "template": self._template(message)}))
            return [template]

        def text(chunk: str) -> Part:
            async def send_text() -> str:
                return _whatsapp_id(await self.graph.post_json(path, token, {
                    **base, "type": "text", "text": {"body": chunk, "preview_url": False}}))
            return send_text

        def file(attachment: StoredAttachment) -> Part:
            async def send_file() -> str:
                kind = _file_type(attachment.content_type, _WHATSAPP_FILE_TYPES, "document")
                media: dict[str, object] = {"id": await self._upload_whatsapp(attachment,
                                                                               token)}
                if kind == "document":
                    media["filename"] = attachment.filename
                return _whatsapp_id(await self.graph.post_json(path, token, {
                    **base, "type": kind, kind: media}))
            return send_file

        parts = [text(chunk) for chunk in split_text(message.text, WHATSAPP)]
        parts.extend(file(attachment) for attachment in message.attachments)
        return parts

    def _template(self, message: OutboundMessage) -> dict[str, object]:
        """The template named in the request, its ``variables`` as body parameters:
        ``{"1": …, "2": …}`` positional, other names as named parameters."""
        template: dict[str, object] = {
            "name": message.template,
            "language": {"code": self.config.whatsapp_template_language}}
        variables = dict(message.variables)
        if variables:
            if all(key.isdigit() for key in variables):
                parameters = [{"type": "text", "text": str(variables[key])}
                              for key in sorted(variables, key=int)]
            else:
                parameters = [{"type": "text", "parameter_name": key, "text": str(value)}
                              for key, value in variables.items()]
            template["components"] = [{"type": "body", "parameters": parameters}]
        return template

    async def _upload_whatsapp(self, attachment: StoredAttachment, token: str) -> str:
        """``POST /{phone-number-id}/media``: the bytes in, a media id out."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", attachment.content_type)
        form.add_field("file", await self._read(attachment), filename=attachment.filename,
                       content_type=attachment.content_type)
        answer = await self.graph.post_form(f"{self.config.whatsapp_phone_number_id}/media",
                                            token, form)
        value = answer.get("id")
        if not isinstance(value, str):
            raise RetryableSendError("the media upload answered no id",
                                     error_code="provider_unavailable")
        return value

    async def _read(self, attachment: StoredAttachment) -> bytes:
        path = await self.ctx.store.blob_file(attachment.sha256)
        return await asyncio.to_thread(path.read_bytes)

    def _page_token(self) -> str:
        token = self.config.page_access_token
        assert token is not None  # required with page_id, which every Page send needs
        return token.reveal()

    def _whatsapp_token(self) -> str:
        token = self.config.whatsapp_access_token
        assert token is not None  # required with whatsapp_phone_number_id
        return token.reveal()


def split_text(text: str, channel: str) -> list[str]:
    """``text`` in pieces each within the channel's limit (Instagram counts UTF-8 bytes),
    cut at a line break (else a space) where there is one in the piece's second half."""
    limit = TEXT_LIMITS[channel]
    measure = (lambda piece: len(piece.encode())) if channel == INSTAGRAM else len
    pieces: list[str] = []
    rest = text
    while rest and measure(rest) > limit:
        end = min(len(rest), limit)
        while measure(rest[:end]) > limit:
            end -= 1
        cut = rest.rfind("\n", 0, end)  # a line break first, else a space, else hard
        if cut <= end // 2:
            cut = rest.rfind(" ", 0, end)
        if cut <= end // 2:
            cut = end
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest.strip():
        pieces.append(rest)
    return [piece for piece in pieces if piece]


def _whatsapp_to(party: Party) -> dict[str, str]:
    """A phone number goes in ``to`` (digits), a business-scoped user id in ``recipient``."""
    if party.kind == "phone":
        return {"to": party.address.lstrip("+")}
    return {"recipient": party.address}


def _file_type(content_type: str, table: tuple[tuple[str, str], ...], default: str) -> str:
    for prefix, kind in table:
        if content_type.lower().startswith(prefix):
            return kind
    return default


def _message_id(answer: Mapping[str, object]) -> str:
    value = answer.get("message_id")
    if not isinstance(value, str) or not value:
        raise RetryableSendError("the Send API answered no message_id",
                                 error_code="provider_unavailable")
    return value


def _whatsapp_id(answer: Mapping[str, object]) -> str:
    messages = answer.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and \
            isinstance(messages[0].get("id"), str):
        return str(messages[0]["id"])
    raise RetryableSendError("the WhatsApp API answered no message id",
                             error_code="provider_unavailable")


def _ago(age: timedelta | None) -> str:
    if age is None:
        return "at an unknown time (no message of theirs is answered)"
    hours = age.total_seconds() / 3600
    return f"{hours:.0f} hours ago" if hours < 72 else f"{hours / 24:.0f} days ago"
