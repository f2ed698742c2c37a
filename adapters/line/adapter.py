"""LINE Official Account adapter: signed webhooks in, the push API out (line-bot-sdk v3).

Inbound ``POST /hooks/line/{account}``: ``X-Line-Signature`` is checked on the raw body
with the SDK's validator before anything is parsed; the body's messages (messages,
postbacks, follows) are committed in one transaction, all or none, and changes (unsend,
edit) applied in order; only then does LINE get its 200. A failure answers 500 and
stores nothing of those messages; LINE's redelivery (same ``webhookEventId``, same message
ids) stores them, never a second copy. Media is not
downloaded in the hook: it is a pending fetch of the data API's content endpoint, done
after the commit by the daemon's fetcher with the channel access token.

Outbound: agents answer hours after the customer wrote, long after the one-minute reply
token expired, so every reply is a push. Text is split at 5,000 UTF-16 units a bubble,
at most five bubbles a request, each request with its own ``X-Line-Retry-Key`` derived
from the outbox message id: a retry after a crash or a timeout that LINE had accepted
gets 409 and is not sent again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters.base import ChannelAdapter, OutboundMessage, SendResult
from adapters.line.config import LineConfig
from gateway.errors import (
    AdapterAuthError,
    AdapterConfigError,
    AdapterNotReady,
    MalformedPayload,
    NotFound,
    PermanentSendError,
    RetryableSendError,
    SendError,
    SignatureInvalid,
    from_invalid_input,
)
from gateway.http import (
    read_body,
    remote_error_excerpt,
    retry_after_seconds,
    unreachable_reason,
)
from gateway.media import MediaSource
from gateway.media_links import MediaLinks
from normalizer.errors import InvalidInput
from normalizer.line import (
    Ignored,
    LineChange,
    event_user_id,
    parse_body,
    parse_event,
)
from normalizer.model import InboundMessage, Party
from normalizer.textsplit import split_text, utf16_units

TEXT_LIMIT = 5000  # characters (UTF-16 units) in one text bubble
MESSAGES_PER_REQUEST = 5
PROFILE_CACHE_MAX = 50_000
RETRY_KEY_NAMESPACE = uuid.UUID("5d0f8e3c-8a57-4a3e-9a55-6c1f5b0e2a11")
STICKER_TEMPLATE = "line_sticker"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})
# How long a reply's image link stays valid. LINE downloads the image when the message
# is sent, but its clients may ask for it again later (the full-size image when a customer
# opens a message read from the preview, a device synced afterwards), when no send is in
# progress to hand out a new link: a week covers that, while a leaked link stops opening
# the file. (A retried send builds fresh links, so it never hands out an expired one.)
MEDIA_LINK_TTL = 7 * 86400.0


class LineAdapter(ChannelAdapter):
    """``POST /hooks/line/{account}`` in; the Messaging API push endpoint out."""

    type = "line"
    channels = frozenset({"line"})
    identity_kinds = frozenset({"line"})
    channel_identity_kinds = {"line": ("line",)}
    config_class = LineConfig
    config: LineConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters.update({"ignored_events": 0, "invalid_events": 0, "redeliveries": 0,
                              "changes": 0, "profile_lookups": 0})
        self._sdk: Any = None  # adapters.line.sdk, imported in on_start (a slow import)
        self._client: Any = None  # AsyncApiClient, made in on_start (it opens a session)
        self._api: Any = None  # AsyncMessagingApi
        self._validator: Any = None  # the SDK's SignatureValidator
        self._names: dict[str, tuple[str | None, float]] = {}
        self.media = MediaLinks(self.ctx.store, secret=self.config.channel_secret.reveal(),
                                purpose=f"line images {self.name}",
                                base_url=f"{self.ctx.public_url}/hooks/line/{self.name}",
                                ttl=MEDIA_LINK_TTL)

    # ------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """The SDK's async client pointed at ``api_base_url``; the data API as a media
        source whose fetches carry the channel access token (and only there)."""
        from adapters.line import sdk  # seconds of import: only where LINE is configured

        self._sdk = sdk
        self._validator = sdk.SignatureValidator(self.config.channel_secret.reveal())
        configuration = sdk.Configuration(host=self.config.api_base_url,
                                          access_token=self.config.channel_access_token.reveal())
        self._client = sdk.AsyncApiClient(configuration)
        self._client.user_agent = "omnirelay"
        self._api = sdk.AsyncMessagingApi(self._client)

        async def credentials() -> dict[str, str]:
            return {"Authorization": f"Bearer {self.config.channel_access_token.reveal()}"}

        self.ctx.media.register(self.media_source, MediaSource.of(
            [self.config.data_api_base_url], credentials=credentials))

    async def probe(self) -> str | None:
        """``GET /v2/bot/info`` with the channel access token: the account's basic id and
        display name (a read; nothing is sent)."""
        from adapters.line import sdk

        token = self.config.channel_access_token.reveal()
        client = sdk.AsyncApiClient(sdk.Configuration(host=self.config.api_base_url,
                                                      access_token=token))
        client.user_agent = "omnirelay"
        try:
            async with asyncio.timeout(self.config.timeout):
                info = await sdk.AsyncMessagingApi(client).get_bot_info(
                    _request_timeout=self.config.timeout)
        except sdk.ApiException as exc:
            status = int(exc.status or 0)
            text = _body_message(exc).replace(token, "<token>")
            if status == 401:
                raise AdapterAuthError(f"LINE refused the channel access token (401: {text}):"
                                       " issue a new one in the LINE Developers Console "
                                       "(Messaging API tab)", channel_type=self.type,
                                       account=self.name) from None
            error = AdapterNotReady if status >= 500 or status in (0, 408, 429) \
                else AdapterConfigError
            raise error(f"LINE answered {status} to GET /v2/bot/info: {text}",
                        channel_type=self.type, account=self.name) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AdapterNotReady(f"LINE at {self.config.api_base_url} did not answer: "
                                  f"{unreachable_reason(exc)}", channel_type=self.type,
                                  account=self.name) from None
        finally:
            await client.close()
        return f"LINE account {info.display_name} ({info.basic_id})"

    async def on_stop(self) -> None:
        """Close the SDK's session; pending media fetches wait for the next start."""
        self.ctx.media.unregister(self.media_source)
        if self._client is not None:
            await self._client.close()
            self._client = self._api = None

    def routes(self) -> Sequence[web.RouteDef]:
        """The webhook, and the signed URLs LINE fetches a reply's images from."""
        return [web.post("", self.handle_webhook),
                self.media.route()]

    def sender(self, channel: str) -> Party:
        """Replies come from the official account."""
        return Party("line", f"account:{self.name}", None)

    # ------------------------------------------------------------ inbound

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """Verify, store every event (all committed before the 200), acknowledge."""
        signature = request.headers.get("X-Line-Signature")
        if not signature:
            raise SignatureInvalid("X-Line-Signature is missing")
        body = await read_body(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureInvalid("X-Line-Signature does not match the body") from None
        if self._validator is None or not self._validator.validate(text, signature):
            raise SignatureInvalid("X-Line-Signature does not match the body")
        try:
            events = parse_body(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
        names = await self._display_names(events)
        # Messages are committed together (all or none); a change to a message (unsend,
        # edit) first commits the messages before it, which it may name.
        batch: list[InboundMessage] = []
        for event in events:
            outcome = self._outcome(event, names)
            if isinstance(outcome, InboundMessage):
                batch.append(outcome)
            elif isinstance(outcome, LineChange):
                await self._flush(batch)
                await self._change(outcome)
        await self._flush(batch)
        return web.Response(status=200)

    async def _flush(self, batch: list[InboundMessage]) -> None:
        if batch:
            await self.ingest_all(list(batch))
            batch.clear()

    def _outcome(self, event: dict[str, Any], names: dict[str, str | None]
                 ) -> InboundMessage | LineChange | None:
        """What one event means; None for one ignored or unreadable (logged, counted)."""
        if (event.get("deliveryContext") or {}).get("isRedelivery") is True:
            self.counters["redeliveries"] += 1
        try:
            outcome = parse_event(event, self.name, names=names,
                                  data_api_base_url=self.config.data_api_base_url,
                                  media_source=self.media_source,
                                  keep_unsent_text=self.config.keep_unsent_text)
        except InvalidInput as exc:
            # One broken event must not cost the others (LINE would redeliver them all).
            self.counters["invalid_events"] += 1
            self.log.warning("line.event_invalid", reason=str(exc),
                             event_id=event.get("webhookEventId"))
            return None
        if isinstance(outcome, Ignored):
            self.counters["ignored_events"] += 1
            self.log.debug("line.event_ignored", event_type=outcome.event_type,
                           reason=outcome.reason)
            return None
        if isinstance(outcome, InboundMessage):
            outcome.raw = orjson.dumps(event)
            outcome.raw_content_type = "application/json"
        return outcome

    async def _change(self, change: LineChange) -> None:
        """An unsend or an edit of a stored message (``message.updated``)."""
        try:
            result = await self.ctx.store.change_message("line", self.name, change.message_id,
                                                         change.change)
        except NotFound:
            self.log.info("line.change_unknown_message", message_id=change.message_id)
            return
        if result.changed:
            self.counters["changes"] += 1

    async def _display_names(self, events: list[dict[str, Any]]) -> dict[str, str | None]:
        """Display names of the events' senders, from the cache or the profile endpoint.

        Looked up concurrently and bounded by ``profile_timeout``: a slow profile never
        holds the acknowledgement long, a blocked user (404) is cached as nameless, and a
        failed lookup leaves the name out this time (the next message tries again).
        """
        now = time.monotonic()
        names: dict[str, str | None] = {}
        wanted: dict[str, dict[str, Any]] = {}
        for event in events:
            user = event_user_id(event)
            if user is None or event.get("type") in ("unsend", "messageEdited"):
                continue
            cached = self._names.get(user)
            if cached is not None and cached[1] > now:
                names[user] = cached[0]
            else:
                wanted.setdefault(user, event.get("source") or {})
        if wanted and self._api is not None:
            results = await asyncio.gather(*(self._profile(user, source)
                                             for user, source in wanted.items()))
            for user, (known, name) in zip(wanted, results, strict=True):
                names[user] = name
                if known:
                    self._remember(user, name, now)
        return names

    async def _profile(self, user: str, source: dict[str, Any]) -> tuple[bool, str | None]:
        """(whether the answer is worth caching, the display name)."""
        self.counters["profile_lookups"] += 1
        timeout = aiohttp.ClientTimeout(total=self.config.profile_timeout)
        try:
            if source.get("type") == "group" and isinstance(source.get("groupId"), str):
                profile = await self._api.get_group_member_profile(
                    source["groupId"], user, _request_timeout=timeout)
            elif source.get("type") == "room" and isinstance(source.get("roomId"), str):
                profile = await self._api.get_room_member_profile(
                    source["roomId"], user, _request_timeout=timeout)
            else:
                profile = await self._api.get_profile(user, _request_timeout=timeout)
        except self._sdk.ApiException as exc:
            if exc.status == 404:  # blocked the account, or left: still a customer
                return True, None
            self.log.info("line.profile_failed", status=exc.status)
            return False, None
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self.log.info("line.profile_failed", error=type(exc).__name__)
            return False, None
        name = getattr(profile, "display_name", None)
        return True, name if isinstance(name, str) and name.strip() else None

    def _remember(self, user: str, name: str | None, now: float) -> None:
        if len(self._names) >= PROFILE_CACHE_MAX:  # drop the oldest tenth
            for key in list(self._names)[: PROFILE_CACHE_MAX // 10]:
                del self._names[key]
        self._names[user] = (name, now + self.config.profile_cache_seconds)

    # ------------------------------------------------------------ outbound

    def _messages(self, message: OutboundMessage) -> list[Any]:
        """The reply as LINE message objects: text bubbles, images, a sticker."""
        items: list[Any] = []
        if message.template == STICKER_TEMPLATE:
            package = message.variables.get("package_id")
            sticker = message.variables.get("sticker_id")
            if not package or not sticker:
                raise PermanentSendError(
                    "the line_sticker template needs variables package_id and sticker_id",
                    error_code="invalid_template")
            items.append(self._sdk.StickerMessage(packageId=str(package),
                                                  stickerId=str(sticker)))
        elif message.template:
            raise PermanentSendError(f"LINE has no template {message.template!r}; use "
                                     f"{STICKER_TEMPLATE!r} or send text",
                                     error_code="invalid_template")
        if message.text:
            items += [self._sdk.TextMessage(text=piece)
                      for piece in split_text(message.text, TEXT_LIMIT, utf16_units)]
        for attachment in message.attachments:
            if attachment.content_type not in IMAGE_TYPES:
                raise PermanentSendError(
                    f"LINE cannot send {attachment.content_type} ({attachment.filename!r}): "
                    "only JPEG and PNG images", error_code="attachment_not_supported")
            url = self.media.link(attachment.sha256, attachment.content_type)
            items.append(self._sdk.ImageMessage(originalContentUrl=url, previewImageUrl=url))
        if not items:
            raise PermanentSendError("nothing to send", error_code="empty_message")
        return items

    async def send(self, message: OutboundMessage) -> SendResult:
        """Push the reply in requests of at most five messages, each with its retry key."""
        if self._api is None:
            raise RetryableSendError("the LINE adapter is not running",
                                     error_code="adapter_not_running")
        to = message.group.id if message.group is not None else message.to.address
        items = self._messages(message)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        first_id: str | None = None
        for index in range(0, len(items), MESSAGES_PER_REQUEST):
            retry_key = str(uuid.uuid5(RETRY_KEY_NAMESPACE, f"{message.id}:{index}"))
            request = self._sdk.PushMessageRequest(
                to=to, messages=items[index:index + MESSAGES_PER_REQUEST])
            try:
                response = await self._api.push_message(request, x_line_retry_key=retry_key,
                                                        _request_timeout=timeout)
            except self._sdk.ApiException as exc:
                accepted = _accepted_before(exc)
                if accepted is None:
                    raise _send_error(exc) from None
                first_id = first_id or f"request:{accepted}"
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise RetryableSendError(f"LINE unreachable: {type(exc).__name__}",
                                         error_code="line_unreachable") from exc
            sent = getattr(response, "sent_messages", None) or []
            if sent and first_id is None:
                first_id = str(sent[0].id)
        return SendResult(first_id or message.id, "sent")


def _accepted_before(exc: Any) -> str | None:
    """The request id LINE accepted earlier with the same retry key (409), if that is it."""
    if exc.status != 409 or not exc.headers:
        return None
    accepted = exc.headers.get("X-Line-Accepted-Request-Id")
    return str(accepted) if accepted else None


def _body_message(exc: Any) -> str:
    try:
        data = orjson.loads(exc.body or b"{}")
    except orjson.JSONDecodeError:
        return remote_error_excerpt(exc.status or 0, exc.body)
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        details = data.get("details")
        extra = ""
        if isinstance(details, list) and details and isinstance(details[0], dict):
            extra = f" ({details[0].get('property')}: {details[0].get('message')})"
        return str(data["message"] + extra)[:300]
    return remote_error_excerpt(exc.status or 0, exc.body)


def _send_error(exc: Any) -> SendError:
    """LINE's answer → a retryable or permanent error with a code that says what to do."""
    status = int(exc.status or 0)
    text = _body_message(exc)
    retry_after = retry_after_seconds(exc.headers.get("Retry-After")) if exc.headers else None
    if status == 429:
        if "monthly limit" in text.lower():
            return PermanentSendError(
                f"LINE: the account's monthly message quota is used up: {text}",
                provider_code="429", provider_message=text, error_code="quota_exhausted")
        return RetryableSendError(f"LINE rate limit: {text}", retry_after=retry_after,
                                  provider_code="429", provider_message=text,
                                  error_code="rate_limited")
    if status >= 500 or status in (408, 0):
        return RetryableSendError(f"LINE answered {status}: {text}", retry_after=retry_after,
                                  provider_code=str(status), provider_message=text,
                                  error_code="line_unavailable")
    codes = {400: "invalid_request", 401: "line_auth_failed", 403: "line_forbidden",
             404: "recipient_not_found", 409: "duplicate_request", 413: "too_large"}
    return PermanentSendError(f"LINE refused the message ({status}): {text}",
                              provider_code=str(status), provider_message=text,
                              error_code=codes.get(status, "line_rejected"))
